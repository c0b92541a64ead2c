"""Run a real origin and edge under hypercorn for tests, and talk to them."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx

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


class RunningStack:
    """A :class:`Stack` served from a background thread with its own loop."""

    def __init__(self, stack: Stack) -> None:
        self.stack = stack
        self._loop = asyncio.new_event_loop()
        self._shutdown: asyncio.Event | None = None
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._started = threading.Event()
        self._error: BaseException | None = None

    def _serve(self) -> None:
        asyncio.set_event_loop(self._loop)

        async def main() -> None:
            self._shutdown = asyncio.Event()
            runner = asyncio.create_task(self.stack.run(self._shutdown))
            ready = asyncio.create_task(self.stack.ready.wait())
            await asyncio.wait({runner, ready}, return_when=asyncio.FIRST_COMPLETED)
            self._started.set()
            await runner

        try:
            self._loop.run_until_complete(main())
        except BaseException as exc:  # noqa: BLE001 - reported to the test thread
            self._error = exc
            self._started.set()
        finally:
            self._loop.close()

    def start(self) -> RunningStack:
        self._thread.start()
        self._started.wait(60)
        if self._error is not None:
            raise RuntimeError("the stack did not start") from self._error
        return self

    def stop(self) -> None:
        if self._shutdown is not None and self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._shutdown.set)
        self._thread.join(15)


@contextlib.contextmanager
def running_stack(data_dir: Path, **options: object) -> Iterator[RunningStack]:
    stack = Stack(
        media_root=MEDIA_ROOT,
        data_dir=data_dir,
        origin_port=free_port(),
        edge_port=free_port(),
        admin_token="test-admin-token",
        **options,  # type: ignore[arg-type]
    )
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
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json"
    body = response.json()
    assert body["type"] == PROBLEM_PREFIX + slug
    assert body["status"] == status
