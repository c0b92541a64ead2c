"""Run a real origin and edge under hypercorn for tests, and talk to them."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import threading
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from starlette.applications import Starlette
from starlette.routing import Mount
from starlette.staticfiles import StaticFiles
from starlette.types import Receive, Scope, Send

from edge import create_app as create_edge
from origin.risk import RiskPolicy
from segmentgate.serving import start_server, wait_until_healthy
from segmentgate.stack import Stack

REPO = Path(__file__).resolve().parent.parent
MEDIA_ROOT = REPO / "media"
PROBLEM_PREFIX = "urn:segmentgate:problem:"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass(frozen=True)
class AccessRecord:
    method: str
    path: str
    status: int
    reason: str
    at: float


class AccessLog(logging.Handler):
    """Collects the edge's access records: what players asked and got."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.records: list[AccessRecord] = []
        self._lock = threading.Lock()

    def emit(self, record: logging.LogRecord) -> None:
        entry = AccessRecord(
            record.method,  # type: ignore[attr-defined]
            record.path,  # type: ignore[attr-defined]
            record.status,  # type: ignore[attr-defined]
            record.reason,  # type: ignore[attr-defined]
            time.monotonic(),
        )
        with self._lock:
            self.records.append(entry)

    def mark(self) -> int:
        with self._lock:
            return len(self.records)

    def settle(self, quiet: float = 0.2, limit: float = 5.0) -> None:
        """Wait until no record arrived for ``quiet`` seconds.

        A record is written after the response was sent, so a client can
        finish before the edge logged its last request.
        """
        deadline = time.monotonic() + limit
        count = self.mark()
        while time.monotonic() < deadline:
            time.sleep(quiet)
            if self.mark() == count:
                return
            count = self.mark()

    def since(self, mark: int, prefix: str = "") -> list[AccessRecord]:
        with self._lock:
            return [r for r in self.records[mark:] if r.path.startswith(prefix)]


class BackgroundLoop:
    """Run ``main(shutdown, ready)`` on an event loop of its own thread."""

    def __init__(
        self,
        main: Callable[[asyncio.Event, asyncio.Event], Awaitable[None]],
    ) -> None:
        self._main = main
        self._loop = asyncio.new_event_loop()
        self._shutdown: asyncio.Event | None = None
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._started = threading.Event()
        self._error: BaseException | None = None

    def _serve(self) -> None:
        asyncio.set_event_loop(self._loop)

        async def run() -> None:
            self._shutdown = asyncio.Event()
            ready = asyncio.Event()
            runner = asyncio.create_task(self._main(self._shutdown, ready))
            waiter = asyncio.create_task(ready.wait())
            await asyncio.wait({runner, waiter}, return_when=asyncio.FIRST_COMPLETED)
            waiter.cancel()
            self._started.set()
            await runner

        try:
            self._loop.run_until_complete(run())
        except BaseException as exc:  # noqa: BLE001 - reported to the test thread
            self._error = exc
            self._started.set()
        finally:
            self._loop.close()

    def start(self) -> None:
        self._thread.start()
        self._started.wait(60)
        if self._error is not None:
            raise RuntimeError("the background server did not start") from self._error

    def stop(self) -> None:
        if self._shutdown is not None and self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._shutdown.set)
        self._thread.join(15)


class RunningStack:
    """A :class:`Stack` served from a background thread."""

    def __init__(self, stack: Stack) -> None:
        self.stack = stack

        async def main(shutdown: asyncio.Event, ready: asyncio.Event) -> None:
            runner = asyncio.create_task(stack.run(shutdown))
            await asyncio.wait(
                {runner, asyncio.create_task(stack.ready.wait())},
                return_when=asyncio.FIRST_COMPLETED,
            )
            ready.set()
            await runner

        self._loop = BackgroundLoop(main)

    def start(self) -> RunningStack:
        self._loop.start()
        return self

    def stop(self) -> None:
        self._loop.stop()


class ServedApp:
    """An ASGI app under hypercorn on 127.0.0.1, in a background thread."""

    def __init__(self, app: Any, port: int, health_path: str) -> None:
        self.port = port
        self.app = app

        async def main(shutdown: asyncio.Event, ready: asyncio.Event) -> None:
            task = start_server(app, f"127.0.0.1:{port}", shutdown.wait)
            await wait_until_healthy(self.url + health_path)
            ready.set()
            await task

        self._loop = BackgroundLoop(main)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> ServedApp:
        self._loop.start()
        return self

    def stop(self) -> None:
        self._loop.stop()


class MediaServer(ServedApp):
    """A plain static HTTP server for media, recording every request path.

    It stands for a CDN or packager behind the edge, so tests can check that
    a rejected request never reached the upstream.
    """

    def __init__(self, root: Path = MEDIA_ROOT) -> None:
        self.requests: list[str] = []
        static = Starlette(routes=[Mount("/", StaticFiles(directory=root))])

        async def app(scope: Scope, receive: Receive, send: Send) -> None:
            if scope["type"] == "http":
                query = scope.get("query_string", b"").decode("latin-1")
                self.requests.append(scope["path"] + (f"?{query}" if query else ""))
            await static(scope, receive, send)

        super().__init__(app, free_port(), "/trailer/index.m3u8")

    def start(self) -> MediaServer:
        super().start()
        self.requests.clear()
        return self


@contextlib.contextmanager
def running_stack(data_dir: Path, **options: Any) -> Iterator[RunningStack]:
    """Run an origin and an edge on free ports; ``options`` go to :class:`Stack`."""
    # Tests buy with the same test card from one address again and again,
    # which the risk engine would rightly block; it still assesses each one.
    origin_options = {"risk": RiskPolicy(mode="observe")}
    origin_options.update(options.pop("origin_options", {}))
    settings: dict[str, Any] = {
        "media_root": MEDIA_ROOT,
        "origin_port": free_port(),
        "edge_port": free_port(),
        "admin_token": "test-admin-token",
        "origin_options": origin_options,
        **options,
    }
    stack = Stack(data_dir=data_dir, **settings)
    running = RunningStack(stack).start()
    try:
        yield running
    finally:
        running.stop()


class Viewer:
    """A sandbox viewer using the origin's public API."""

    def __init__(self, origin_url: str) -> None:
        self.client = httpx.Client(base_url=origin_url, timeout=10)
        response = self.client.post("/v1/viewers")
        response.raise_for_status()
        body = response.json()
        self.viewer_id: str = body["viewer_id"]
        self.client.headers["Authorization"] = f"Bearer {body['viewer_token']}"

    def session(self, content_id: str = "sample") -> dict[str, object]:
        response = self.client.post(
            "/v1/playback-sessions", json={"content_id": content_id}
        )
        assert response.status_code == 201, response.text
        return dict(response.json())

    def purchase(
        self, content_id: str = "sample", payment_method: str = "pm_card_visa"
    ) -> dict[str, object]:
        response = self.client.post(
            "/v1/purchases",
            json={"content_id": content_id, "payment_method": payment_method},
            headers={"Idempotency-Key": str(uuid.uuid4())},
        )
        assert response.status_code in (201, 202), response.text
        return dict(response.json())

    def refund(self, purchase_id: str) -> dict[str, object]:
        response = self.client.post(
            f"/v1/purchases/{purchase_id}/refund",
            headers={"Idempotency-Key": str(uuid.uuid4())},
        )
        assert response.status_code in (200, 202), response.text
        return dict(response.json())

    def close(self) -> None:
        self.client.close()


def assert_problem(response: httpx.Response, status: int, slug: str) -> None:
    """Check that ``response`` is an RFC 9457 problem of type ``slug``."""
    assert response.status_code == status, response.content[:300]
    assert response.headers["content-type"] == "application/problem+json"
    body = response.json()
    assert body["type"] == PROBLEM_PREFIX + slug
    assert body["status"] == status


def raw_get(base_url: str, target: bytes, headers: bytes = b"") -> tuple[int, bytes]:
    """Send ``GET target`` exactly as given, with no client normalising it.

    HTTP client libraries remove dot segments and re-encode paths, which
    hides the very requests that path checks exist for.
    """
    url = httpx.URL(base_url)
    with socket.create_connection((url.host, url.port), timeout=5) as sock:
        sock.sendall(
            b"GET " + target + b" HTTP/1.1\r\nHost: " + url.host.encode()
            + b"\r\nConnection: close\r\n" + headers + b"\r\n"
        )  # fmt: skip
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), body


class FaultProxy:
    """A TCP proxy in front of the origin that can fail on demand.

    Modes: ``pass`` forwards bytes; ``refuse`` closes every new connection
    at once (the origin is down); ``hang`` accepts and never answers (the
    origin is overloaded); ``error`` answers every request with 503. A mode
    change also closes the connections already open, as a restart would.
    """

    def __init__(self, target_port: int) -> None:
        self.port = free_port()
        self.target_port = target_port
        self.mode = "pass"
        self._writers: set[asyncio.StreamWriter] = set()
        self._loop_ref: asyncio.AbstractEventLoop | None = None

        async def main(shutdown: asyncio.Event, ready: asyncio.Event) -> None:
            self._loop_ref = asyncio.get_running_loop()
            server = await asyncio.start_server(self._handle, "127.0.0.1", self.port)
            ready.set()
            async with server:
                await shutdown.wait()
            self._close_all()

        self._loop = BackgroundLoop(main)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> FaultProxy:
        self._loop.start()
        return self

    def stop(self) -> None:
        self._loop.stop()

    def set_mode(self, mode: str) -> None:
        assert mode in ("pass", "refuse", "hang", "error")
        self.mode = mode
        if self._loop_ref is not None:
            self._loop_ref.call_soon_threadsafe(self._close_all)

    def _close_all(self) -> None:
        for writer in list(self._writers):
            writer.close()
        self._writers.clear()

    async def _handle(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        mode = self.mode
        self._writers.add(writer)
        try:
            if mode == "refuse":
                return
            if mode == "hang":
                await reader.read()  # until the client gives up
                return
            if mode == "error":
                await reader.readuntil(b"\r\n\r\n")
                body = b'{"status": 503}'
                writer.write(
                    b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: "
                    b"application/json\r\nConnection: close\r\nContent-Length: "
                    + str(len(body)).encode() + b"\r\n\r\n" + body
                )  # fmt: skip
                await writer.drain()
                return
            upstream_reader, upstream_writer = await asyncio.open_connection(
                "127.0.0.1", self.target_port
            )
            self._writers.add(upstream_writer)

            async def pipe(
                source: asyncio.StreamReader, sink: asyncio.StreamWriter
            ) -> None:
                with contextlib.suppress(ConnectionError, OSError):
                    while data := await source.read(65536):
                        sink.write(data)
                        await sink.drain()
                sink.close()

            await asyncio.gather(
                pipe(reader, upstream_writer), pipe(upstream_reader, writer)
            )
        except (ConnectionError, OSError, asyncio.IncompleteReadError):
            pass
        finally:
            self._writers.discard(writer)
            writer.close()


class ExtraEdge(ServedApp):
    """One more edge for a running stack, sharing its URI secret."""

    def __init__(self, stack: Stack, port: int) -> None:
        super().__init__(create_edge(stack.edge_settings()), port, "/_edge/healthz")
