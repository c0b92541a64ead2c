"""Media requests sent past Starlette's router get the routed response.

``EdgeMiddleware`` sends GET and HEAD media requests straight to the media
endpoint. Each request below is sent twice to one edge app, once that way
and once through the router, and both must give the same status, headers,
body, access log record and metric increments, denials included.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from prometheus_client import generate_latest
from starlette.applications import Starlette
from starlette.datastructures import MutableHeaders
from starlette.middleware.cors import CORSMiddleware
from starlette.types import Message, Receive, Scope, Send

from edge import create_app
from edge.middleware import EdgeMiddleware, _vary_on_origin
from tests.harness import RunningStack, Viewer

SEGMENT = "/sample/v180/seg_010.ts"
PREVIEW_SEGMENT = "/sample/v180/seg_000.ts"
PLAYLIST = "/sample/v180/index.m3u8"
TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


@dataclass(frozen=True)
class Outcome:
    status: int
    headers: list[tuple[bytes, bytes]]
    body: bytes
    log: list[tuple[str, str, int, str]]
    counted: dict[str, float]


class Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.records: list[tuple[str, str, int, str]] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(
            (record.method, record.path, record.status, record.reason)  # type: ignore[attr-defined]
        )


@pytest.fixture
def records() -> Iterator[Records]:
    logger = logging.getLogger("segmentgate.edge.access")
    handler = Records()
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    yield handler
    logger.removeHandler(handler)
    logger.setLevel(level)


@pytest.fixture
async def edge(stack: RunningStack) -> AsyncIterator[Starlette]:
    app = create_app(stack.stack.edge_settings())
    async with app.router.lifespan_context(app):
        yield app


def _counters(app: Starlette) -> dict[str, float]:
    text = generate_latest(app.state.edge.metrics.registry).decode()
    return {
        name: float(value)
        for name, _, value in (line.rpartition(" ") for line in text.splitlines())
        if name.startswith("segmentgate_edge_") and "_total" in name
    }


async def _send(
    app: Starlette, method: str, target: str, headers: dict[str, str], raw: bytes
) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
    path, _, query = target.partition("?")
    scope = {
        "type": "http",
        # ASGI 2.4 servers report disconnects on send, so FileResponse does
        # not wait on receive() for one.
        "asgi": {"version": "3.0", "spec_version": "2.4"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": path,
        "raw_path": raw or path.encode(),
        "query_string": query.encode(),
        "root_path": "",
        "headers": [(b"host", b"edge.test")]
        + [(name.lower().encode(), value.encode()) for name, value in headers.items()],
        "client": ("127.0.0.1", 50000),
        "server": ("127.0.0.1", 80),
    }
    messages: list[Message] = []

    async def receive() -> Message:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: Message) -> None:
        messages.append(message)

    await app(scope, receive, send)
    start = messages[0]
    body = b"".join(m.get("body", b"") for m in messages[1:])
    return start["status"], list(start.get("headers", [])), body


async def _outcome(
    app: Starlette,
    records: Records,
    request: tuple[str, str, dict[str, str], bytes],
) -> Outcome:
    mark = len(records.records)
    before = _counters(app)
    status, headers, body = await _send(app, *request)
    after = _counters(app)
    counted = {
        name: value - before.get(name, 0.0)
        for name, value in after.items()
        if value != before.get(name, 0.0)
    }
    return Outcome(status, headers, body, records.records[mark:], counted)


def _middleware(app: Starlette) -> EdgeMiddleware:
    layer: Any = app.middleware_stack
    while not isinstance(layer, EdgeMiddleware):
        layer = layer.app
    return layer


def _query(url: str) -> str:
    return url.split("?", 1)[1]


async def _uri_query(app: Starlette, session: dict[str, Any], name: str) -> str:
    playlist = f"{PLAYLIST}?{_query(str(session['playlist_url']))}"
    _, _, body = await _send(app, "GET", playlist, {}, b"")
    line = next(x for x in body.decode().splitlines() if x.startswith(name))
    return line.split("?", 1)[1]


async def test_media_route_matches_router(
    stack: RunningStack,
    edge: Starlette,
    records: Records,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    buyer, watcher = Viewer(stack.stack.origin_url), Viewer(stack.stack.origin_url)
    try:
        assert buyer.purchase()["status"] == "granted"
        bought, preview = buyer.session(), watcher.session()
    finally:
        buyer.close()
        watcher.close()
    await edge.state.edge.sync()

    session_query = _query(str(bought["playlist_url"]))
    token = await _uri_query(edge, bought, "seg_010.ts")
    preview_late = await _uri_query(edge, preview, "seg_010.ts")
    preview_early = await _uri_query(edge, preview, "seg_000.ts")
    forged = token[:-2] + ("AA" if not token.endswith("AA") else "BB")
    jwt = session_query.split("=", 1)[1]

    requests: list[tuple[str, str, dict[str, str], bytes]] = [
        ("GET", f"{SEGMENT}?{token}", {}, b""),
        ("HEAD", f"{SEGMENT}?{token}", {}, b""),
        ("GET", f"{SEGMENT}?{token}", {"Range": "bytes=0-99"}, b""),
        ("GET", f"{SEGMENT}?{token}", {"Range": "bytes=abc"}, b""),
        ("GET", f"{SEGMENT}?{token}", {"Range": "bytes=999999999-"}, b""),
        ("GET", f"{SEGMENT}?{token}", {"Range": "bytes=0-9", "If-Range": '"x"'}, b""),
        ("GET", f"{SEGMENT}?{token}", {"Origin": "https://player.test"}, b""),
        ("GET", f"{SEGMENT}?{token}", {"Traceparent": TRACEPARENT}, b""),
        ("GET", f"{PLAYLIST}?{session_query}", {}, b""),
        ("GET", f"/_sg/{jwt}{PLAYLIST}", {}, b""),
        ("GET", f"/_sg/{jwt}{SEGMENT}", {}, b""),
        ("GET", f"{PREVIEW_SEGMENT}?{preview_early}", {}, b""),
        ("GET", f"{SEGMENT}?{preview_late}", {}, b""),
        ("GET", SEGMENT, {}, b""),
        ("GET", f"{SEGMENT}?{forged}", {}, b""),
        ("GET", f"{PREVIEW_SEGMENT}?{token}", {}, b""),
        ("GET", f"{SEGMENT}?{token}&sg=x", {}, b""),
        ("GET", f"{SEGMENT}?{token}", {}, b"/sample/v180/../v180/seg_010.ts"),
        ("GET", "/sample/v180/missing.ts?sg=1.a.s0.b", {}, b""),
        ("GET", "/_edge/events", {}, b""),
        ("HEAD", f"{SEGMENT}?sg=not-a-token", {"Origin": "https://a.test"}, b""),
        (
            "OPTIONS",
            SEGMENT,
            {"Origin": "https://a.test", "Access-Control-Request-Method": "GET"},
            b"",
        ),
    ]
    # The first request builds the middleware stack.
    await _send(edge, "GET", "/_edge/healthz", {}, b"")
    layer = _middleware(edge)

    for request in requests:
        direct = await _outcome(edge, records, request)
        with monkeypatch.context() as patch:
            patch.setattr(layer, "_is_media", lambda scope: False)
            routed = await _outcome(edge, records, request)
        assert direct.status == routed.status, request
        assert direct.headers == routed.headers, request
        assert direct.body == routed.body, request
        assert direct.log == routed.log, request
        assert direct.counted == routed.counted, request

    # The table covers served requests, ranges and denials.
    statuses = [(await _outcome(edge, records, r)).status for r in requests]
    assert statuses[:3] == [200, 200, 206]
    assert 402 in statuses
    assert 403 in statuses


async def _with_cors(message: Message) -> Message:
    sent: list[Message] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await send(dict(message))

    async def receive() -> Message:
        return {"type": "http.request"}

    async def send(reply: Message) -> None:
        sent.append(reply)

    scope = {"type": "http", "method": "GET", "headers": []}
    await CORSMiddleware(app, allow_origins=["*"])(scope, receive, send)
    return sent[0]


@pytest.mark.parametrize(
    "vary",
    [[], [b"Accept"], [b"Accept", b"Range"]],
    ids=["none", "one", "two"],
)
async def test_vary_on_origin_as_cors(vary: list[bytes]) -> None:
    headers = [(b"content-type", b"video/mp2t")] + [(b"vary", v) for v in vary]
    expected = await _with_cors({"type": "http.response.start", "headers": headers})
    message: Message = {"type": "http.response.start", "headers": list(headers)}
    _vary_on_origin(message)
    assert message["headers"] == expected["headers"]
    assert MutableHeaders(scope=message).getlist("vary")[-1].endswith("Origin")
