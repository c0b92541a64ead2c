"""Cloudflare Python Worker entry: the edge's Starlette app behind a small bridge.

:class:`WorkerApp` is plain ASGI. It reads the Worker's bindings (variables,
secrets) from ``scope["env"]`` and builds the edge from them on the first
request of an isolate, so module memory (keys, entitlement cache, URI
session cache) is per isolate. An isolate runs no background task between
requests, so the feed poll that a server edge runs every few seconds
happens on requests instead: a request that finds the last read of the
origin's feed older than ``SEGMENTGATE_EDGE_WORKER_SYNC_SECONDS`` (default
1) reads it first. A refund or revocation therefore reaches every isolate
within that many seconds of its commit, for at most one feed request per
isolate per interval.

:func:`on_fetch` is the Workers entry point. :mod:`edge.worker_bridge`
turns the runtime's ``Request`` into an ASGI scope, with ``env``, and the
ASGI response into a ``Response``.

On Workers the edge reaches the origin and an HTTP upstream through the
runtime's ``fetch`` (:mod:`edge.fetch_transport`), because Pyodide has no
sockets for httpx's default transport. It verifies the origin's signatures
with the runtime's WebCrypto (:mod:`edge.webcrypto`), because Pyodide has
no ``cryptography`` package for PyJWT.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable
from typing import Any

from starlette.types import Receive, Scope, Send

from edge.fetch_transport import FetchTransport
from edge.settings import EdgeSettings
from edge.webcrypto import WebCryptoKey
from edge.worker_bridge import binding_values, serve_fetch

logger = logging.getLogger("segmentgate.edge.worker")

SYNC_SECONDS_BINDING = "SEGMENTGATE_EDGE_WORKER_SYNC_SECONDS"
DEFAULT_SYNC_SECONDS = 1.0


class WorkerApp:
    """Build the edge from the bindings in ``scope["env"]`` and serve it."""

    def __init__(
        self,
        build: Callable[[EdgeSettings], Any] | None = None,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._build = build or _create_app
        self._monotonic = monotonic
        self._app: Any = None
        self._started = contextlib.AsyncExitStack()
        self._sync_seconds = DEFAULT_SYNC_SECONDS
        self._synced_at = float("-inf")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
            return
        app = await self._app_for(scope.get("env"))
        if scope["type"] == "http":
            await self._sync_if_due(app)
        await app(scope, receive, send)

    async def _app_for(self, env: Any) -> Any:
        if self._app is not None:
            return self._app
        values = binding_values(env if env is not None else {})
        self._sync_seconds = float(
            values.get(SYNC_SECONDS_BINDING, DEFAULT_SYNC_SECONDS)
        )
        app = self._build(EdgeSettings.from_mapping(values))
        # The edge's start-up (keys, the first feed read) runs once per
        # isolate, on its first request.
        await self._started.enter_async_context(app.router.lifespan_context(app))
        self._synced_at = self._monotonic()
        self._app = app
        return app

    async def _sync_if_due(self, app: Any) -> None:
        now = self._monotonic()
        if now - self._synced_at < self._sync_seconds:
            return
        self._synced_at = now
        # Edge.sync logs its own failures. The request is then decided on
        # the state that the isolate has, within the offline grace period.
        await app.state.edge.sync()

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        # Workers send no lifespan events; ASGI servers used in tests do.
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await self._started.aclose()
                await send({"type": "lifespan.shutdown.complete"})
                return


def _create_app(settings: EdgeSettings) -> Any:
    # The app's modules are imported on the first request, not with this
    # module: OpenTelemetry draws random numbers at import, and Workers give
    # no entropy outside a request.
    from edge.app import create_app

    return create_app(settings)


def _build_for_workers(settings: EdgeSettings) -> Any:
    from edge.app import create_app

    return create_app(settings, transport=FetchTransport(), public_key=WebCryptoKey)


worker_app = WorkerApp(_build_for_workers)


async def on_fetch(request: Any, env: Any) -> Any:
    """Serve one Workers request with the edge."""
    return await serve_fetch(worker_app, request, env)
