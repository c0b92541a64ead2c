"""Access log of the edge: one record per request, with the denial reason.

Records go to the ``segmentgate.edge.access`` logger with the request's
method, path (never its query, which holds tokens), status and reason as
attributes, so operators and tests can read decisions without parsing text.
The same outcome moves the edge's request counters (:mod:`edge.metrics`).
"""

from __future__ import annotations

import logging
import time

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from edge.metrics import MODE_SCOPE_KEY, EdgeMetrics
from edge.paths import PATH_TOKEN_SCOPE_KEY

REASON_HEADER = b"segmentgate-reason"
CONTROL_PREFIX = "/_edge/"
logger = logging.getLogger("segmentgate.edge.access")


def _has_playback_token(scope: Scope) -> bool:
    """Tell a playback token (a JWT) from a URI token without parsing the query."""
    if scope.get(PATH_TOKEN_SCOPE_KEY):
        return True
    if b"sg=eyJ" in scope.get("query_string", b""):
        return True
    return any(name == b"authorization" for name, _ in scope.get("headers", ()))


class AccessLogMiddleware:
    def __init__(self, app: ASGIApp, *, metrics: EdgeMetrics | None = None) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        started = time.perf_counter()
        status = 500
        reason = ""

        async def send_logged(message: Message) -> None:
            nonlocal status, reason
            if message["type"] == "http.response.start":
                status = message["status"]
                for name, value in message.get("headers", []):
                    if name.lower() == REASON_HEADER:
                        reason = value.decode("latin-1")
            await send(message)

        try:
            await self.app(scope, receive, send_logged)
        finally:
            elapsed_ms = (time.perf_counter() - started) * 1000
            logger.info(
                "%s %s %d %s %.1fms",
                scope["method"],
                scope["path"],
                status,
                reason or "-",
                elapsed_ms,
                extra={
                    "method": scope["method"],
                    "path": scope["path"],
                    "status": status,
                    "reason": reason,
                },
            )
            if self.metrics is not None and not scope["path"].startswith(
                CONTROL_PREFIX
            ):
                self.metrics.count_request(
                    scope["path"],
                    _has_playback_token(scope),
                    status,
                    reason,
                    scope.get(MODE_SCOPE_KEY, ""),
                )
