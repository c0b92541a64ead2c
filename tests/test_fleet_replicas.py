"""Two origin replicas on PostgreSQL and three edges on NATS JetStream.

Every service is a separate process. The replicas share one PostgreSQL
database (127.0.0.1:5432, a database of its own) and one sandbox provider
state file. The edges consume the replicas' events as durable JetStream
consumers (127.0.0.1:4222, a stream of its own). The test is skipped, saying
why, when either server is unreachable.

Purchases and refunds run on both replicas. Replica A's sandbox blocks its
first two captures, and A is killed with SIGKILL while both purchases wait
there, holding their leases; replica B must finish them once the leases
expire. Edge 3 is killed with SIGKILL too, and started again. The edges
read keys and the feed from replica B, as they would through a load
balancer once A is gone. At the end: every captured, unrefunded payment has
its entitlement and nothing else has one, no payment was captured or
refunded twice, JetStream holds each event once, and every edge serves
exactly the entitled viewers.
"""

from __future__ import annotations

import asyncio
import base64
import json
import secrets
import signal
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography.fernet import Fernet
from sqlalchemy import func, select, text
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.ext.asyncio import create_async_engine

from origin import purchase_records as records
from origin.invariants import check_invariants
from origin.store import create_engine, entitlements, outbox, purchases, viewers
from segmentgate.stack import seed_catalog
from tests.harness import MEDIA_ROOT, free_port
from tests.jetstream import NATS_URL, run_nats, temporary_stream
from tests.test_fleet import Process, segment_path

SERVER = "postgresql+asyncpg://postgres@127.0.0.1:5432"
ADMIN_TOKEN = "fleet-admin"
EDGE_TOKEN = "fleet-edge-token"
LEASE_SECONDS = 3
# Seconds within which every running edge must deny a refunded viewer.
REVOCATION_BOUND = 2.0


def run_async(work: Callable[[], Any]) -> Any:
    return asyncio.run(work())


@pytest.fixture
def database_url() -> Iterator[str]:
    name = f"segmentgate_fleet_{uuid.uuid4().hex[:12]}"

    async def admin(statement: str) -> None:
        engine = create_async_engine(f"{SERVER}/test", isolation_level="AUTOCOMMIT")
        try:
            async with engine.connect() as connection:
                await connection.execute(text(statement))
        finally:
            await engine.dispose()

    try:
        asyncio.run(admin(f'CREATE DATABASE "{name}"'))
    except (OSError, OperationalError, DBAPIError) as exc:
        pytest.skip(f"PostgreSQL at 127.0.0.1:5432 is unreachable: {exc}")
    yield f"{SERVER}/{name}"
    asyncio.run(admin(f'DROP DATABASE "{name}" WITH (FORCE)'))


@pytest.fixture
def stream() -> Iterator[tuple[str, str]]:
    """Create a stream and subject prefix for one test, deleted after it."""
    with temporary_stream("sgfleet") as names:
        yield names


class Fleet:
    def __init__(
        self, tmp_path: Path, database_url: str, stream: tuple[str, str]
    ) -> None:
        self.database_url = database_url
        self.sandbox_state = tmp_path / "sandbox.json"
        edge_ports = [free_port() for _ in range(3)]
        origin_env = {
            "SEGMENTGATE_DATABASE_URL": database_url,
            "SEGMENTGATE_MASTER_KEY": Fernet.generate_key().decode("ascii"),
            "SEGMENTGATE_ADMIN_TOKEN": ADMIN_TOKEN,
            "SEGMENTGATE_EDGE_TOKEN": EDGE_TOKEN,
            "SEGMENTGATE_EDGE_PUBLIC_URL": f"http://127.0.0.1:{edge_ports[0]}",
            "SEGMENTGATE_EDGE_URLS": "",
            "SEGMENTGATE_NATS_URL": NATS_URL,
            "SEGMENTGATE_NATS_STREAM": stream[0],
            "SEGMENTGATE_NATS_SUBJECT_PREFIX": stream[1],
            "SEGMENTGATE_SANDBOX_STATE": str(self.sandbox_state),
            "SEGMENTGATE_SAGA_LEASE_SECONDS": str(LEASE_SECONDS),
            "SEGMENTGATE_RECOVERY_INTERVAL": "1",
            # The test buys with one card from one address again and again.
            "SEGMENTGATE_RISK_MODE": "observe",
        }
        self.origin_a = Process(
            "origin",
            free_port(),
            {**origin_env, "SEGMENTGATE_SANDBOX_FAULTS": "capture:block_before:2"},
            tmp_path / "origin-a.log",
        )
        self.origin_b = Process(
            "origin", free_port(), origin_env, tmp_path / "origin-b.log"
        )
        secret = base64.urlsafe_b64encode(secrets.token_bytes(32)).decode()
        self.edges = [
            Process(
                "edge",
                port,
                {
                    "SEGMENTGATE_EDGE_ORIGIN_URL": self.origin_b.url,
                    "SEGMENTGATE_EDGE_MEDIA_ROOT": str(MEDIA_ROOT),
                    "SEGMENTGATE_EDGE_URI_SECRETS": secret.rstrip("="),
                    "SEGMENTGATE_EDGE_ORIGIN_TOKEN": EDGE_TOKEN,
                    "SEGMENTGATE_EDGE_NATS_URL": NATS_URL,
                    "SEGMENTGATE_EDGE_ID": f"edge-{index}",
                    "SEGMENTGATE_EDGE_NATS_STREAM": stream[0],
                    "SEGMENTGATE_EDGE_NATS_SUBJECT_PREFIX": stream[1],
                },
                tmp_path / f"edge-{index}.log",
            )
            for index, port in enumerate(edge_ports, start=1)
        ]

    def processes(self) -> list[Process]:
        return [*self.edges, self.origin_a, self.origin_b]

    def running_edges(self) -> list[Process]:
        return [edge for edge in self.edges if edge.process is not None]

    def kill(self, process: Process) -> None:
        assert process.process is not None
        process.process.send_signal(signal.SIGKILL)
        process.process.wait(10)
        process.process = None


@pytest.fixture
def fleet(
    tmp_path: Path, database_url: str, stream: tuple[str, str]
) -> Iterator[Fleet]:
    fleet = Fleet(tmp_path, database_url, stream)
    try:
        fleet.origin_a.start("/healthz")
        fleet.origin_b.start("/healthz")
        asyncio.run(seed_catalog(fleet.origin_b.url, ADMIN_TOKEN))
        for edge in fleet.edges:
            edge.start("/_edge/healthz")
        yield fleet
    finally:
        for process in fleet.processes():
            process.stop()


class FleetViewer:
    def __init__(self, client: httpx.Client, origin: Process) -> None:
        self.client = client
        self.token = client.post(f"{origin.url}/v1/viewers").json()["viewer_token"]
        session = client.post(
            f"{origin.url}/v1/playback-sessions",
            json={"content_id": "sample"},
            headers=self.headers(),
        ).json()
        self.path = segment_path(client, session["playlist_url"])
        self.purchase_id = ""

    def headers(self) -> dict[str, str]:
        return {
            "Authorization": f"Bearer {self.token}",
            "Idempotency-Key": str(uuid.uuid4()),
        }

    def buy(self, origin: Process) -> httpx.Response:
        return self.client.post(
            f"{origin.url}/v1/purchases",
            json={"content_id": "sample", "payment_method": "pm_card_visa"},
            headers=self.headers(),
            timeout=60,
        )

    def refund(self, origin: Process) -> httpx.Response:
        return self.client.post(
            f"{origin.url}/v1/purchases/{self.purchase_id}/refund",
            headers=self.headers(),
        )

    def served(self, edge: Process) -> int:
        return self.client.get(edge.url + self.path).status_code


def wait_for(condition: Callable[[], bool], what: str, limit: float = 30.0) -> None:
    deadline = time.monotonic() + limit
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"gave up waiting for {what}")
        time.sleep(0.05)


def blocked_captures(sandbox_state: Path) -> int:
    """Count intents authorized and not yet captured in the shared sandbox."""
    if not sandbox_state.exists():
        return 0
    intents = json.loads(sandbox_state.read_text())["intents"].values()
    return sum(1 for intent in intents if intent["status"] == "requires_capture")


def grant(viewer: FleetViewer, origin: Process) -> None:
    response = viewer.buy(origin)
    assert response.json()["status"] == "granted", response.text
    viewer.purchase_id = response.json()["purchase_id"]


def refund_everywhere(fleet: Fleet, viewer: FleetViewer, origin: Process) -> None:
    """Refund, then check that no running edge serves the viewer after it."""
    response = viewer.refund(origin)
    assert response.json()["status"] == "refunded", response.text
    deadline = time.monotonic() + REVOCATION_BOUND
    for edge in fleet.running_edges():
        while viewer.served(edge) != 402:
            assert time.monotonic() < deadline, f"{edge.url} serves a refund"
            time.sleep(0.02)


async def store_state(database_url: str) -> dict[str, Any]:
    engine = create_engine(database_url)
    try:
        async with engine.connect() as connection:
            running = (
                await connection.execute(
                    select(func.count()).where(
                        purchases.c.status.in_(records.RUNNING_STATUSES)
                    )
                )
            ).scalar_one()
            granted = (
                await connection.execute(
                    select(viewers.c.viewer_ref)
                    .join(entitlements, entitlements.c.viewer_id == viewers.c.viewer_id)
                    .where(entitlements.c.granted.is_(True))
                )
            ).all()
            rows = (await connection.execute(select(purchases))).all()
            events = (
                await connection.execute(select(func.count(outbox.c.seq)))
            ).scalar_one()
            problems = await check_invariants(connection)
    finally:
        await engine.dispose()
    return {
        "running": running,
        "granted_refs": {row.viewer_ref for row in granted},
        "purchases": rows,
        "events": events,
        "problems": problems,
    }


def test_fleet_survives_killed_replica_and_edge(fleet: Fleet) -> None:
    client = httpx.Client(timeout=10)
    origin_a, origin_b = fleet.origin_a, fleet.origin_b
    fleet_viewers = [
        FleetViewer(client, origin_a if index % 2 else origin_b) for index in range(7)
    ]

    grant(fleet_viewers[0], origin_b)
    grant(fleet_viewers[1], origin_b)
    grant(fleet_viewers[2], origin_b)
    refund_everywhere(fleet, fleet_viewers[0], origin_a)

    # Two purchases on replica A stop before their capture, leases held.
    lost: list[BaseException] = []

    def buy_on_a(viewer: FleetViewer) -> None:
        try:
            viewer.buy(origin_a)
        except httpx.HTTPError as exc:
            lost.append(exc)

    threads = [
        threading.Thread(target=buy_on_a, args=(viewer,))
        for viewer in fleet_viewers[4:6]
    ]
    for thread in threads:
        thread.start()
    wait_for(lambda: blocked_captures(fleet.sandbox_state) == 2, "blocked captures")

    fleet.kill(fleet.edges[2])
    grant(fleet_viewers[3], origin_b)
    refund_everywhere(fleet, fleet_viewers[1], origin_b)

    fleet.kill(origin_a)
    for thread in threads:
        thread.join(30)
    fleet.edges[2].start("/_edge/healthz")

    grant(fleet_viewers[6], origin_b)
    refund_everywhere(fleet, fleet_viewers[2], origin_b)

    wait_for(
        lambda: run_async(lambda: store_state(fleet.database_url))["running"] == 0,
        "replica B to finish replica A's purchases",
    )
    state = run_async(lambda: store_state(fleet.database_url))
    sandbox = json.loads(fleet.sandbox_state.read_text())["intents"].values()

    assert len(lost) == 2
    assert state["problems"] == []
    statuses = sorted(row.status for row in state["purchases"])
    assert statuses == ["granted"] * 4 + ["refunded"] * 3
    for intent in sandbox:
        assert intent["captures"] <= 1, intent
        assert intent["refunds"] <= 1, intent
    held = {
        intent["purchase_id"]
        for intent in sandbox
        if intent["captures"] == 1 and intent["refunds"] == 0
    }
    granted_purchases = {
        row.purchase_id for row in state["purchases"] if row.status == "granted"
    }
    assert held == granted_purchases

    async def stream_messages(jetstream: Any) -> Any:
        return await jetstream.stream_info(
            fleet.edges[0].env["SEGMENTGATE_EDGE_NATS_STREAM"]
        )

    info = run_nats(stream_messages)
    assert info.state.messages == state["events"]

    entitled = {3, 4, 5, 6}
    deadline = time.monotonic() + 10
    for edge in fleet.edges:
        for index, viewer in enumerate(fleet_viewers):
            expected = 200 if index in entitled else 402
            while viewer.served(edge) != expected:
                assert time.monotonic() < deadline, (edge.url, index, expected)
                time.sleep(0.05)
        health = client.get(f"{edge.url}/_edge/healthz").json()
        assert health["jetstream"]["connected"], edge.url
        assert health["jetstream"]["rejected"] == 0, edge.url
    client.close()
