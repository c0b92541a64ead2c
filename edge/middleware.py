"""The edge's middleware as one ASGI layer, with a direct route to media.

Every HTTP request goes through these steps, outermost first:

1. a ``/_sg/<token>/`` path prefix moves into the scope (:mod:`edge.paths`);
2. a deprecated operation gets its headers (:mod:`shared.deprecation`);
3. a request with a ``traceparent`` header, or any request while spans are
   recorded, runs in a server span (:mod:`shared.tracing`);
4. the access log and the metrics record the outcome (:mod:`edge.access_log`);
5. responses get CORS headers, and ``Vary: Origin`` when the request had
   no ``Origin`` header (Starlette's ``CORSMiddleware``).

Steps 2, 3 and 5 run the named middleware, and every step is skipped when
it has nothing to do for a request. GET and HEAD requests outside the
control paths then go straight to the media endpoint, past Starlette's
router. The router and its request wrapper cost about 5 µs a request, a
tenth of a segment sent from memory (one measurement, docs/benchmarks.md).
"""

from __future__ import annotations

import time
from collections.abc import Collection
from typing import Any

from starlette.datastructures import MutableHeaders
from starlette.middleware.cors import CORSMiddleware
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from edge.access_log import record_request, response_reason
from edge.metrics import EdgeMetrics
from edge.paths import move_path_token
from shared.deprecation import DeprecatedOperation, DeprecationMiddleware
from shared.tracing import TraceMiddleware, spans_recording

_MEDIA_METHODS = ("GET", "HEAD")


def _has_header(scope: Scope, name: bytes) -> bool:
    for key, _ in scope.get("headers", ()):
        if key == name:
            return True
    return False


def _vary_on_origin(message: Message) -> None:
    """Add ``Origin`` to a response's ``Vary``, as ``CORSMiddleware`` does."""
    headers = message.setdefault("headers", [])
    if isinstance(headers, list) and all(key != b"vary" for key, _ in headers):
        headers.append((b"vary", b"Origin"))
        return
    mutable = MutableHeaders(scope=message)
    mutable["Vary"] = ", ".join([*mutable.getlist("Vary"), "Origin"])


class EdgeMiddleware:
    """Run the edge's middleware steps, then route media requests directly.

    ``app`` serves everything that is not a media request: the control
    routes and requests with other methods. ``media`` is the ASGI app of
    the media endpoint. ``cors`` contains ``CORSMiddleware``'s settings.
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        media: ASGIApp,
        control_paths: Collection[str],
        deprecated: list[DeprecatedOperation],
        metrics: EdgeMetrics | None,
        cors: dict[str, Any],
    ) -> None:
        self.app = app
        self.media = media
        self.control_paths = frozenset(control_paths)
        self.deprecated = deprecated
        self.metrics = metrics
        self._cors = CORSMiddleware(self._route, **cors)
        self._traced = TraceMiddleware(
            self._logged, tracer_name="segmentgate.edge", start_traces=False
        )
        self._deprecation = DeprecationMiddleware(self._trace, deprecated=deprecated)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        scope = move_path_token(scope)
        if self.deprecated:
            await self._deprecation(scope, receive, send)
        else:
            await self._trace(scope, receive, send)

    async def _trace(self, scope: Scope, receive: Receive, send: Send) -> None:
        traced = spans_recording()
        cross_origin = False
        for name, _ in scope.get("headers", ()):
            if name == b"traceparent":
                traced = True
            elif name == b"origin":
                cross_origin = True
        if traced:
            await self._traced(scope, receive, send)
        else:
            await self._serve(scope, receive, send, cross_origin)

    async def _logged(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self._serve(scope, receive, send, _has_header(scope, b"origin"))

    async def _serve(
        self, scope: Scope, receive: Receive, send: Send, cross_origin: bool
    ) -> None:
        """Route the request with CORS headers, then log and count the outcome.

        Without an Origin header, ``CORSMiddleware`` would only add ``Vary``.
        """
        started = time.perf_counter()
        status = 500
        reason = ""

        async def send_logged(message: Message) -> None:
            nonlocal status, reason
            if message["type"] == "http.response.start":
                if not cross_origin:
                    _vary_on_origin(message)
                status = message["status"]
                reason = response_reason(message)
            await send(message)

        try:
            if cross_origin:
                await self._cors(scope, receive, send_logged)
            elif self._is_media(scope):
                await self.media(scope, receive, send_logged)
            else:
                await self.app(scope, receive, send_logged)
        finally:
            elapsed = time.perf_counter() - started
            record_request(scope, status, reason, elapsed, self.metrics)

    def _is_media(self, scope: Scope) -> bool:
        # Starlette's routes match the path without root_path: a request
        # under one goes to the router, which strips it.
        return (
            scope["method"] in _MEDIA_METHODS
            and not scope.get("root_path")
            and scope["path"] not in self.control_paths
        )

    async def _route(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self._is_media(scope):
            await self.media(scope, receive, send)
        else:
            await self.app(scope, receive, send)
