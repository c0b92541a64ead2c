"""Access log of the edge: one record per request, with the denial reason.

Records go to the ``segmentgate.edge.access`` logger with the request's
method, path (never its query, which holds tokens), status and reason as
attributes, so operators and tests can read decisions without parsing text.
"""

from __future__ import annotations

import logging
import time

from starlette.types import ASGIApp, Message, Receive, Scope, Send

REASON_HEADER = b"segmentgate-reason"
logger = logging.getLogger("segmentgate.edge.access")


class AccessLogMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

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
