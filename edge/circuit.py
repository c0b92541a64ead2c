"""A circuit breaker for the edge's calls to the origin.

After ``failure_threshold`` consecutive failures the circuit opens and calls
fail at once with :class:`CircuitOpen` for ``reset_timeout`` seconds, so an
origin that is down or overloaded is not hammered by every edge request.
Then one call is let through: success closes the circuit, failure opens it
again.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

logger = logging.getLogger("segmentgate.edge.circuit")

T = TypeVar("T")


class CircuitOpen(Exception):
    """Raised instead of calling while the circuit is open."""


class CircuitBreaker:
    """Count consecutive failures of one dependency and stop calling it."""

    def __init__(
        self,
        name: str,
        *,
        failure_threshold: int = 3,
        reset_timeout: float = 5.0,
        failures: tuple[type[BaseException], ...] = (Exception,),
    ) -> None:
        self.name = name
        self._threshold = failure_threshold
        self._reset_timeout = reset_timeout
        self._failures = failures
        self._consecutive = 0
        self._opened_at: float | None = None
        self._trial_running = False

    @property
    def state(self) -> str:
        """``closed``, ``open`` or ``half-open``."""
        if self._opened_at is None:
            return "closed"
        if time.monotonic() - self._opened_at < self._reset_timeout:
            return "open"
        return "half-open"

    async def call(self, function: Callable[[], Awaitable[T]]) -> T:
        """Run ``function`` unless the circuit is open; record the outcome."""
        state = self.state
        if state == "open" or (state == "half-open" and self._trial_running):
            raise CircuitOpen(f"circuit {self.name} is open")
        self._trial_running = state == "half-open"
        try:
            result = await function()
        except self._failures:
            self._record_failure()
            raise
        finally:
            self._trial_running = False
        self._record_success()
        return result

    def _record_failure(self) -> None:
        self._consecutive += 1
        if self._opened_at is not None or self._consecutive >= self._threshold:
            if self._opened_at is None:
                logger.warning(
                    "circuit %s opened after %d failures", self.name, self._consecutive
                )
            self._opened_at = time.monotonic()

    def _record_success(self) -> None:
        if self._opened_at is not None:
            logger.info("circuit %s closed", self.name)
        self._consecutive = 0
        self._opened_at = None
