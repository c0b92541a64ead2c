"""Run ASGI apps under hypercorn until asked to stop."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

import httpx
from hypercorn.asyncio import serve
from hypercorn.config import Config
from starlette.types import ASGIApp

logger = logging.getLogger("segmentgate")


def hypercorn_config(bind: str) -> Config:
    config = Config()
    config.bind = [bind]
    config.accesslog = None
    config.errorlog = logging.getLogger("hypercorn.error")
    config.graceful_timeout = 2.0
    return config


def start_server(
    app: ASGIApp, bind: str, shutdown: Callable[[], Awaitable[None]]
) -> asyncio.Task[None]:
    """Serve ``app`` on ``bind`` (``host:port``) in a task until ``shutdown``."""
    return asyncio.create_task(
        serve(app, hypercorn_config(bind), shutdown_trigger=shutdown)  # type: ignore[arg-type]
    )


async def wait_until_healthy(url: str, timeout: float = 15.0) -> None:
    """Poll ``url`` until it returns 200; raise ``TimeoutError`` after ``timeout``."""
    deadline = asyncio.get_running_loop().time() + timeout
    async with httpx.AsyncClient(timeout=1.0) as client:
        while True:
            try:
                if (await client.get(url)).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            if asyncio.get_running_loop().time() > deadline:
                raise TimeoutError(f"{url} did not become healthy in {timeout:g} s")
            await asyncio.sleep(0.05)
