"""Read the rest of a request body before the response starts.

hypercorn closes an HTTP/1.1 connection when a response ends before the
request body has fully arrived, and the response does not say so. An
application that rejects a request before reading its body (for example
for a missing credential) thus races the client. A client that sends its
next request on the same connection finds it closed, and httpx does not
send a POST again on its own.

:class:`DrainBodyMiddleware` reads what is left of the body, up to a
limit, before passing on the response's start. Past the limit it marks the
response ``Connection: close``, so the client opens a new connection.
"""

from __future__ import annotations

from starlette.types import ASGIApp, Message, Receive, Scope, Send

#: How much unread body is read and dropped before a response starts.
DRAIN_LIMIT = 1024 * 1024


def _has_body(scope: Scope) -> bool:
    for name, value in scope["headers"]:
        if name == b"transfer-encoding":
            return True
        if name == b"content-length":
            return value.strip() not in (b"", b"0")
    return False


class DrainBodyMiddleware:
    """ASGI middleware that reads a request's unread body before responding."""

    def __init__(self, app: ASGIApp, limit: int = DRAIN_LIMIT) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not _has_body(scope):
            await self.app(scope, receive, send)
            return
        received_all = False

        def note(message: Message) -> None:
            nonlocal received_all
            if message["type"] != "http.request" or not message.get("more_body"):
                received_all = True

        async def tracked_receive() -> Message:
            message = await receive()
            note(message)
            return message

        async def draining_send(message: Message) -> None:
            if message["type"] == "http.response.start" and not received_all:
                dropped = 0
                while not received_all and dropped <= self.limit:
                    unread = await receive()
                    note(unread)
                    dropped += len(unread.get("body", b""))
                if not received_all:
                    headers = [*message.get("headers", []), (b"connection", b"close")]
                    message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, tracked_receive, draining_send)
