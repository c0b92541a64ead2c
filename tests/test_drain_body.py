"""A request rejected before its body is read keeps its connection usable.

hypercorn closes an HTTP/1.1 connection when a response ends before the
request body has arrived. The first test speaks HTTP over a raw socket to
the session's origin under hypercorn and sends the body only after the
headers, so the origin could reject the request before the body arrives.
"""

from __future__ import annotations

import asyncio
import json
import socket
from urllib.parse import urlsplit

from starlette.types import Message, Receive, Scope, Send

from shared.bodies import DrainBodyMiddleware
from tests.harness import RunningStack


def _read_response(sock: socket.socket) -> bytes:
    """Return one response's head and body, read by its Content-Length."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            return data
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    while len(body) < length:
        chunk = sock.recv(65536)
        if not chunk:
            break
        body += chunk
    return head + b"\r\n\r\n" + body


def test_rejected_post_keeps_its_connection(stack: RunningStack) -> None:
    origin = urlsplit(stack.stack.origin_url)
    body = json.dumps({"content_id": "sample"}).encode()
    head = (
        f"POST /v1/playback-sessions HTTP/1.1\r\nHost: {origin.netloc}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode()
    with socket.create_connection((origin.hostname, origin.port), timeout=5) as sock:
        sock.sendall(head)
        # No viewer token, so the origin can reject the request from its
        # headers alone.
        sock.settimeout(0.3)
        try:
            early = sock.recv(65536)
        except TimeoutError:
            early = b""
        assert early == b"", "the response started before the body was read"
        sock.settimeout(5)
        sock.sendall(body)
        first = _read_response(sock)
        sock.sendall(f"GET /healthz HTTP/1.1\r\nHost: {origin.netloc}\r\n\r\n".encode())
        second = _read_response(sock)

    assert first.startswith(b"HTTP/1.1 401")
    assert second.startswith(b"HTTP/1.1 200"), second[:200]


async def _respond_early(limit: int, chunks: list[bytes]) -> tuple[list[Message], int]:
    """Run an app that responds at once; return what it sent and chunks left."""
    pending = [
        {"type": "http.request", "body": chunk, "more_body": index < len(chunks) - 1}
        for index, chunk in enumerate(chunks)
    ]
    sent: list[Message] = []

    async def receive() -> Message:
        await asyncio.sleep(0)
        return pending.pop(0)

    async def send(message: Message) -> None:
        sent.append(message)

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": 401, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    total = sum(len(chunk) for chunk in chunks)
    scope = {"type": "http", "headers": [(b"content-length", str(total).encode())]}
    await DrainBodyMiddleware(app, limit=limit)(scope, receive, send)
    return sent, len(pending)


async def test_small_body_is_read_before_the_response() -> None:
    sent, left = await _respond_early(limit=100, chunks=[b"a" * 10, b"b" * 10])

    assert left == 0
    assert (b"connection", b"close") not in sent[0]["headers"]


async def test_body_past_the_limit_closes_the_connection() -> None:
    sent, left = await _respond_early(limit=15, chunks=[b"a" * 10] * 5)

    # Reading stops once more than the limit was dropped.
    assert left == 3
    assert (b"connection", b"close") in sent[0]["headers"]
