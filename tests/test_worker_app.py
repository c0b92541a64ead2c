"""The Worker entry's ASGI app under hypercorn, with fake bindings.

Workers hand the bindings to the app as ``scope["env"]``; here a wrapper
puts a plain object there, as the runtime would. The edge streams media
from a local HTTP upstream, and the origin runs beside it. The Workers
runtime itself is exercised by tests/test_workerd_smoke.py.
"""

from __future__ import annotations

import base64
import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx
import pytest
from starlette.types import Receive, Scope, Send

from edge.worker import WorkerApp
from edge.worker_bridge import binding_values
from tests.harness import (
    MEDIA_ROOT,
    MediaServer,
    RunningStack,
    ServedApp,
    Viewer,
    free_port,
    running_stack,
)


class WithBindings:
    """Put ``env`` into every scope, as the Workers runtime does."""

    def __init__(self, app: WorkerApp, env: object) -> None:
        self.app = app
        self.env = env

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self.app({**scope, "env": self.env}, receive, send)


@pytest.fixture
def media() -> Iterator[MediaServer]:
    server = MediaServer().start()
    yield server
    server.stop()


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[RunningStack]:
    with running_stack(tmp_path) as running:
        yield running


@pytest.fixture
def worker(stack: RunningStack, media: MediaServer) -> Iterator[ServedApp]:
    secret = base64.urlsafe_b64encode(stack.stack.uri_secret).decode().rstrip("=")
    env = SimpleNamespace(
        SEGMENTGATE_EDGE_ORIGIN_URL=stack.stack.origin_url,
        SEGMENTGATE_EDGE_UPSTREAM_URL=media.url,
        SEGMENTGATE_EDGE_URI_SECRETS=secret,
        SEGMENTGATE_EDGE_ORIGIN_TOKEN=stack.stack.edge_token,
        SEGMENTGATE_EDGE_WORKER_SYNC_SECONDS="0.2",
        # Bindings of other kinds (KV namespaces, Durable Objects) are
        # objects, not text, and are not settings.
        REVOCATIONS=object(),
    )
    app = WithBindings(WorkerApp(), env)
    served = ServedApp(app, free_port(), "/_edge/healthz").start()
    yield served
    served.stop()


def segment_urls(client: httpx.Client, playlist_url: str) -> list[str]:
    """Follow a viewer's playlists to the signed URLs of the first rendition."""
    master = client.get(playlist_url)
    assert master.status_code == 200, master.text
    variant = next(line for line in master.text.splitlines() if line.startswith("v"))
    media = client.get(str(master.url.join(variant)))
    assert media.status_code == 200, media.text
    return [
        str(media.url.join(line))
        for line in media.text.splitlines()
        if line and not line.startswith("#")
    ]


def to_worker(url: str, worker: ServedApp) -> str:
    parsed = httpx.URL(url)
    return str(parsed.copy_with(scheme="http", host="127.0.0.1", port=worker.port))


def test_bindings_read_text_settings_only() -> None:
    env = SimpleNamespace(
        SEGMENTGATE_EDGE_ORIGIN_URL="https://origin.example",
        SEGMENTGATE_EDGE_GRACE_SECONDS="60",
        OTHER_VALUE="x",
        REVOCATIONS=object(),
    )
    assert binding_values(env) == {
        "SEGMENTGATE_EDGE_ORIGIN_URL": "https://origin.example",
        "SEGMENTGATE_EDGE_GRACE_SECONDS": "60",
    }
    assert binding_values({"SEGMENTGATE_EDGE_ID": "edge-1", "X": "y"}) == {
        "SEGMENTGATE_EDGE_ID": "edge-1"
    }


def test_worker_app_plays_and_revokes(
    stack: RunningStack, media: MediaServer, worker: ServedApp
) -> None:
    viewer = Viewer(stack.stack.origin_url)
    client = httpx.Client(timeout=10)
    try:
        session = viewer.session("sample")
        playlist = to_worker(str(session["playlist_url"]), worker)
        segments = segment_urls(client, playlist)
        preview = client.get(segments[0])
        late = segments[-1]
        assert client.get(late).status_code == 402

        purchase = viewer.purchase()
        assert purchase["status"] == "granted"
        # No push reaches the Worker app; a request reads the feed first.
        played = []
        deadline = time.monotonic() + 10
        while (response := client.get(late)).status_code != 200:
            assert time.monotonic() < deadline, response.text
            time.sleep(0.05)
        for url in segments[:4]:
            played.append(client.get(url))

        refund = viewer.refund(str(purchase["purchase_id"]))
        assert refund["status"] == "refunded"
        deadline = time.monotonic() + 10
        while (response := client.get(late)).status_code != 402:
            assert time.monotonic() < deadline, "the Worker app serves a refund"
            time.sleep(0.05)
        health: dict[str, Any] = client.get(f"{worker.url}/_edge/healthz").json()
    finally:
        viewer.close()
        client.close()
    assert preview.status_code == 200
    assert [r.status_code for r in played] == [200] * 4
    for response in played:
        path = response.url.path.lstrip("/")
        assert response.content == (MEDIA_ROOT / path).read_bytes(), path
    # The segments came from the HTTP upstream, not from a local file.
    assert any(path.endswith(".ts") for path in media.requests)
    assert health["last_event_seq"] >= 2
    assert health["status"] == "ok"
