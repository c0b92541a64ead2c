"""The background pass that resumes unfinished purchases.

It runs once when the origin starts, so purchases that a stopped process
left halfway are finished or compensated, and then every ``interval``
seconds, which also runs steps whose retry came due.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from origin.saga import PurchaseSaga

logger = logging.getLogger("segmentgate.origin.recovery")


class RecoveryLoop:
    def __init__(self, saga: PurchaseSaga, interval: float) -> None:
        self._saga = saga
        self._interval = interval
        self._task: asyncio.Task[None] | None = None
        self._first_pass = asyncio.Event()

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def wait_first_pass(self) -> None:
        """Wait until the pass at start-up has ended."""
        await self._first_pass.wait()

    async def _run(self) -> None:
        while True:
            try:
                await self._saga.recover()
            except Exception:
                logger.exception("recovery pass failed; the next pass retries")
            self._first_pass.set()
            if self._interval <= 0:
                return
            await asyncio.sleep(self._interval)
