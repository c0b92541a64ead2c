"""An origin and three edges as separate processes, one edge restarted.

Purchases and refunds run while edge 3 is stopped and started again. After
every refund no running edge may serve the refunded viewer past one second,
and at the end every edge agrees with the origin on every viewer.
"""

from __future__ import annotations

import asyncio
import base64
import os
import secrets
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from segmentgate.stack import seed_catalog
from tests.harness import MEDIA_ROOT, REPO, free_port

ADMIN_TOKEN = "fleet-admin"


class Process:
    def __init__(self, command: str, port: int, env: dict[str, str], log: Path) -> None:
        self.command, self.port, self.env, self.log = command, port, env, log
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, health: str) -> None:
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "segmentgate", self.command,
                 "--bind", f"127.0.0.1:{self.port}"],
                cwd=REPO, env={**os.environ, **self.env}, stdout=log, stderr=log,
            )  # fmt: skip
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(self.url + health, timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            assert self.process.poll() is None, self.log.read_text()[-2000:]
            assert time.monotonic() < deadline, f"{self.command} did not start"
            time.sleep(0.05)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None


@pytest.fixture
def fleet(tmp_path: Path) -> Iterator[tuple[Process, list[Process]]]:
    edge_ports = [free_port() for _ in range(3)]
    origin_port = free_port()
    secret = base64.urlsafe_b64encode(secrets.token_bytes(32)).decode().rstrip("=")
    origin = Process(
        "origin",
        origin_port,
        {
            "SEGMENTGATE_DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path / 'origin.db'}",
            "SEGMENTGATE_ADMIN_TOKEN": ADMIN_TOKEN,
            "SEGMENTGATE_EDGE_TOKEN": "fleet-edge-token",
            # Viewers buy and refund with one test card again and again, which
            # the risk engine would rightly block; it still assesses each one.
            "SEGMENTGATE_RISK_MODE": "observe",
            "SEGMENTGATE_EDGE_PUBLIC_URL": f"http://127.0.0.1:{edge_ports[0]}",
            "SEGMENTGATE_EDGE_URLS": ",".join(
                f"http://127.0.0.1:{p}" for p in edge_ports
            ),
        },
        tmp_path / "origin.log",
    )
    edges = [
        Process(
            "edge",
            port,
            {
                "SEGMENTGATE_EDGE_ORIGIN_URL": origin.url,
                "SEGMENTGATE_EDGE_MEDIA_ROOT": str(MEDIA_ROOT),
                "SEGMENTGATE_EDGE_URI_SECRETS": secret,
                "SEGMENTGATE_EDGE_ORIGIN_TOKEN": "fleet-edge-token",
            },
            tmp_path / f"edge-{index}.log",
        )
        for index, port in enumerate(edge_ports, start=1)
    ]
    try:
        origin.start("/healthz")
        asyncio.run(seed_catalog(origin.url, ADMIN_TOKEN))
        for edge in edges:
            edge.start("/_edge/healthz")
        yield origin, edges
    finally:
        for process in [*edges, origin]:
            process.stop()


def segment_path(client: httpx.Client, playlist_url: str) -> str:
    """Follow one viewer's playlists to the signed URL of a late segment."""
    master = client.get(playlist_url)
    variant = next(line for line in master.text.splitlines() if line.startswith("v180"))
    media = client.get(str(master.url.join(variant)))
    segment = next(
        line for line in media.text.splitlines() if line.startswith("seg_010")
    )
    url = media.url.join(segment)
    return url.raw_path.decode()


def test_fleet_agrees_through_an_edge_restart(
    fleet: tuple[Process, list[Process]],
) -> None:
    origin, edges = fleet
    client = httpx.Client(timeout=10)
    viewers = []
    for _ in range(6):
        token = client.post(f"{origin.url}/v1/viewers").json()["viewer_token"]
        session = client.post(
            f"{origin.url}/v1/playback-sessions",
            json={"content_id": "sample"},
            headers={"Authorization": f"Bearer {token}"},
        ).json()
        viewers.append(
            {"token": token, "path": segment_path(client, session["playlist_url"])}
        )
    owned: dict[int, str] = {}

    def running() -> list[Process]:
        return [edge for edge in edges if edge.process is not None]

    def served(edge: Process, viewer: int) -> int:
        return client.get(edge.url + viewers[viewer]["path"]).status_code

    for step in range(36):
        if step == 12:
            edges[2].stop()
        if step == 24:
            edges[2].start("/_edge/healthz")
        viewer = step % len(viewers)
        headers = {
            "Authorization": f"Bearer {viewers[viewer]['token']}",
            "Idempotency-Key": str(uuid.uuid4()),
        }
        if viewer in owned:
            response = client.post(
                f"{origin.url}/v1/purchases/{owned.pop(viewer)}/refund", headers=headers
            )
            assert response.json()["status"] == "refunded"
            deadline = time.monotonic() + 1.0
            for edge in running():
                while served(edge, viewer) != 402:
                    assert time.monotonic() < deadline, f"{edge.url} serves a refund"
                    time.sleep(0.02)
        else:
            response = client.post(
                f"{origin.url}/v1/purchases",
                json={"content_id": "sample", "payment_method": "pm_card_visa"},
                headers=headers,
            )
            assert response.json()["status"] == "granted", response.text
            owned[viewer] = response.json()["purchase_id"]

    deadline = time.monotonic() + 3.0
    for edge in edges:
        for viewer in range(len(viewers)):
            expected = 200 if viewer in owned else 402
            while served(edge, viewer) != expected:
                assert time.monotonic() < deadline, (edge.url, viewer, expected)
                time.sleep(0.02)
    client.close()
