"""The outbox relay: backoff per edge, parked poison events, lag, resend.

Edges are faked in process with httpx's mock transport, and the relay's
monotonic clock is a counter that the tests move, so no test sleeps.
The commit-order test runs on the PostgreSQL server at 127.0.0.1:5432 in a
database of its own, and is skipped, saying why, when it is unreachable.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
from cryptography.fernet import Fernet
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from origin.keyring import KeyRing
from origin.outbox import OutboxRelay, append_event, read_events
from origin.providers import SandboxProvider
from origin.store import create_engine, create_tables
from shared.events import event_batch_from_claims
from tests.contract import event_batch_validator
from tests.saga_harness import ADMIN_TOKEN, FakeClock, running_origin

EDGE_A = "http://edge-a.test"
EDGE_B = "http://edge-b.test"
RETENTION = 3600.0
SERVER = "postgresql+asyncpg://postgres@127.0.0.1:5432"


class FakeEdges:
    """Edges that record the event seqs they accept, or fail as the test sets."""

    def __init__(self) -> None:
        self.received: dict[str, list[int]] = {EDGE_A: [], EDGE_B: []}
        self.pushes: dict[str, int] = {EDGE_A: 0, EDGE_B: 0}
        self.down: set[str] = set()
        # Seqs that an edge rejects with 413, alone or in any batch.
        self.poison: dict[str, set[int]] = {EDGE_A: set(), EDGE_B: set()}

    def handle(self, request: httpx.Request) -> httpx.Response:
        edge = f"{request.url.scheme}://{request.url.host}"
        self.pushes[edge] += 1
        if edge in self.down:
            raise httpx.ConnectError("connection refused", request=request)
        claims = jwt.decode(request.content, options={"verify_signature": False})
        seqs = [event.seq for event in event_batch_from_claims(claims).events]
        if self.poison[edge] & set(seqs):
            return httpx.Response(413, text="batch too large")
        self.received[edge].extend(seqs)
        return httpx.Response(204)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


@pytest.fixture
async def engine(tmp_path: Path) -> AsyncIterator[AsyncEngine]:
    engine = create_engine(f"sqlite+aiosqlite:///{tmp_path / 'outbox.db'}")
    await create_tables(engine)
    yield engine
    await engine.dispose()


async def make_relay(
    engine: AsyncEngine, edges: FakeEdges, clock: Clock
) -> OutboxRelay:
    keys = KeyRing(
        engine,
        "EdDSA",
        master_key=Fernet.generate_key(),
        publish_seconds=60.0,
        token_lifetime=1800,
    )
    await keys.load()
    return OutboxRelay(
        engine,
        keys,
        [EDGE_A, EDGE_B],
        retention_seconds=RETENTION,
        retry_base=1.0,
        retry_max=8.0,
        transport=httpx.MockTransport(edges.handle),
        monotonic=clock,
    )


async def add_events(engine: AsyncEngine, count: int) -> None:
    for index in range(count):
        async with engine.begin() as connection:
            await append_event(connection, "entitlement.granted", f"v{index}", "c", 1)


async def test_down_edge_backs_off_alone(engine: AsyncEngine) -> None:
    edges, clock = FakeEdges(), Clock()
    relay = await make_relay(engine, edges, clock)
    records = Records()
    logger = logging.getLogger("segmentgate.origin.outbox")
    logger.addHandler(records)
    try:
        edges.down.add(EDGE_A)
        await add_events(engine, 3)
        assert await relay.deliver(EDGE_A) == 0
        assert await relay.deliver(EDGE_B) == 3
        pushes = edges.pushes[EDGE_A]
        # Within the backoff the relay does not call the edge at all.
        assert await relay.deliver(EDGE_A) == 0
        assert edges.pushes[EDGE_A] == pushes
        for delay in (1.0, 2.0, 4.0, 8.0, 8.0):
            clock.now += delay - 0.01
            await relay.deliver(EDGE_A)
            assert edges.pushes[EDGE_A] == pushes
            clock.now += 0.01
            await relay.deliver(EDGE_A)
            pushes += 1
            assert edges.pushes[EDGE_A] == pushes
        failures = [m for m in records.messages if "failed" in m]
        # Six failures within 60 s of the first: one warning.
        assert len(failures) == 1
        edges.down.clear()
        clock.now += 8.0
        assert await relay.deliver(EDGE_A) == 3
    finally:
        logger.removeHandler(records)
        await relay.stop()
    assert edges.received[EDGE_A] == [1, 2, 3]
    assert edges.received[EDGE_B] == [1, 2, 3]


async def test_poison_event_is_parked(engine: AsyncEngine) -> None:
    edges, clock = FakeEdges(), Clock()
    relay = await make_relay(engine, edges, clock)
    try:
        edges.poison[EDGE_A].add(3)
        await add_events(engine, 5)
        sent_a = await relay.deliver(EDGE_A)
        sent_b = await relay.deliver(EDGE_B)
        status = await relay.status()
        await add_events(engine, 2)
        later = await relay.deliver(EDGE_A)
        edges.poison[EDGE_A].clear()
        resent = await relay.resend(3, 3)
        after_resend = await relay.status()
    finally:
        await relay.stop()
    assert sent_a == 4
    assert sent_b == 5
    assert edges.received[EDGE_B][:5] == [1, 2, 3, 4, 5]
    # Events after the poison one keep flowing, in order.
    assert edges.received[EDGE_A][:4] == [1, 2, 4, 5]
    assert later == 2
    destination_a = status["destinations"][0]
    assert destination_a["target"] == EDGE_A
    assert destination_a["parked"] == 1
    assert destination_a["lag_events"] == 0
    assert destination_a["failures"] == 0
    assert resent == {EDGE_A: 1, EDGE_B: 1}
    assert after_resend["destinations"][0]["parked"] == 0


async def test_status_reports_lag(engine: AsyncEngine) -> None:
    edges, clock = FakeEdges(), Clock()
    relay = await make_relay(engine, edges, clock)
    try:
        edges.down.add(EDGE_A)
        await add_events(engine, 3)
        await relay.deliver(EDGE_A)
        await relay.deliver(EDGE_B)
        status = await relay.status()
    finally:
        await relay.stop()
    lagging, current = status["destinations"]
    assert status["last_seq"] == 3
    assert lagging["lag_events"] == 3
    assert lagging["oldest_undelivered_seq"] == 1
    assert lagging["oldest_undelivered_age_seconds"] >= 0
    assert lagging["failures"] == 1
    assert lagging["next_attempt_in_seconds"] == 1.0
    assert current["lag_events"] == 0
    assert current["oldest_undelivered_seq"] is None


async def test_outbox_admin_endpoints(tmp_path: Path) -> None:
    clock = FakeClock()
    database_url = f"sqlite+aiosqlite:///{tmp_path / 'origin.db'}"
    admin = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    async with running_origin(
        database_url,
        SandboxProvider(clock=clock),
        clock,
        edge_urls=("http://127.0.0.1:9",),
    ) as running:
        status = await running.client.get("/v1/admin/outbox", headers=admin)
        resend = await running.client.post(
            "/v1/admin/outbox/resend", json={"from_seq": 1, "to_seq": 5}, headers=admin
        )
        reversed_range = await running.client.post(
            "/v1/admin/outbox/resend", json={"from_seq": 5, "to_seq": 1}, headers=admin
        )
        not_numbers = await running.client.post(
            "/v1/admin/outbox/resend", json={"from_seq": "1"}, headers=admin
        )
        anonymous = await running.client.get("/v1/admin/outbox")
    assert status.status_code == 200, status.text
    assert status.json()["destinations"][0]["target"] == "http://127.0.0.1:9"
    assert resend.status_code == 200, resend.text
    assert resend.json() == {"sent": {"http://127.0.0.1:9": 0}}
    assert reversed_range.status_code == 400
    assert reversed_range.headers["content-type"] == "application/problem+json"
    assert not_numbers.status_code == 400
    assert anonymous.status_code == 401


# PostgreSQL -----------------------------------------------------------------


@pytest.fixture
async def postgres_engine() -> AsyncIterator[AsyncEngine]:
    name = f"segmentgate_outbox_{uuid.uuid4().hex[:12]}"
    admin = create_async_engine(f"{SERVER}/test", isolation_level="AUTOCOMMIT")
    try:
        async with admin.connect() as connection:
            await connection.execute(text(f'CREATE DATABASE "{name}"'))
    except (OSError, OperationalError, DBAPIError) as exc:
        await admin.dispose()
        pytest.skip(f"PostgreSQL at 127.0.0.1:5432 is unreachable: {exc}")
    engine = create_engine(f"{SERVER}/{name}")
    try:
        await create_tables(engine)
        yield engine
    finally:
        await engine.dispose()
        async with admin.connect() as connection:
            await connection.execute(text(f'DROP DATABASE "{name}" WITH (FORCE)'))
        await admin.dispose()


async def waiting_for_lock(engine: AsyncEngine) -> bool:
    async with engine.connect() as connection:
        count = (
            await connection.execute(
                text(
                    "SELECT count(*) FROM pg_locks "
                    "WHERE locktype = 'advisory' AND NOT granted"
                )
            )
        ).scalar_one()
    return bool(count)


async def test_postgres_commits_follow_seq_order(
    postgres_engine: AsyncEngine,
) -> None:
    engine = postgres_engine
    first = await engine.connect()
    second = await engine.connect()
    try:
        await first.begin()
        await append_event(first, "entitlement.granted", "v1", "c", 1)
        await second.begin()
        # The second writer must wait for the first one's commit before it
        # draws a seq, or it could commit seq 2 while seq 1 is invisible.
        writer = asyncio.create_task(
            append_event(second, "entitlement.granted", "v2", "c", 1)
        )
        while not await waiting_for_lock(engine):
            assert not writer.done()
            await asyncio.sleep(0.01)
        async with engine.connect() as reader:
            before = await read_events(reader, 0, RETENTION)
        await first.commit()
        await writer
        await second.commit()
        async with engine.connect() as reader:
            after = await read_events(reader, 0, RETENTION)
    finally:
        await first.close()
        await second.close()
    assert before.events == []
    assert [event.seq for event in after.events] == [1, 2]
    assert [event.viewer_ref for event in after.events] == ["v1", "v2"]


async def test_postgres_relay_skips_nothing(postgres_engine: AsyncEngine) -> None:
    edges, clock = FakeEdges(), Clock()
    relay = await make_relay(postgres_engine, edges, clock)
    writers: list[Any] = []
    try:

        async def write(index: int) -> None:
            async with postgres_engine.begin() as connection:
                await append_event(
                    connection, "entitlement.granted", f"v{index}", "c", 1
                )

        for index in range(20):
            writers.append(asyncio.create_task(write(index)))
            await relay.deliver(EDGE_A)
        await asyncio.gather(*writers)
        await relay.deliver(EDGE_A)
    finally:
        await relay.stop()
    assert edges.received[EDGE_A] == list(range(1, 21))


# NATS JetStream ---------------------------------------------------------------

NATS_URL = "nats://127.0.0.1:4222"


@pytest.fixture
async def jetstream_names() -> AsyncIterator[tuple[str, str]]:
    import nats

    suffix = uuid.uuid4().hex[:12]
    names = (f"SGTEST_{suffix}", f"sgtest.{suffix}")
    try:
        connection = await nats.connect(
            NATS_URL, connect_timeout=2, allow_reconnect=False
        )
    except (OSError, TimeoutError, nats.errors.Error) as exc:
        pytest.skip(f"NATS at 127.0.0.1:4222 is unreachable: {exc}")
    yield names
    jetstream = connection.jetstream()
    with contextlib.suppress(nats.js.errors.NotFoundError):
        await jetstream.delete_stream(names[0])
    await connection.close()


async def test_jetstream_dedupes_by_event_id(
    engine: AsyncEngine, jetstream_names: tuple[str, str]
) -> None:
    import nats

    edges, clock = FakeEdges(), Clock()
    keys = KeyRing(
        engine,
        "EdDSA",
        master_key=Fernet.generate_key(),
        publish_seconds=60.0,
        token_lifetime=1800,
    )
    await keys.load()
    relay = OutboxRelay(
        engine,
        keys,
        [EDGE_A, NATS_URL],
        retention_seconds=RETENTION,
        transport=httpx.MockTransport(edges.handle),
        monotonic=clock,
        jetstream_names=jetstream_names,
    )
    try:
        await add_events(engine, 3)
        sent = await relay.deliver(NATS_URL)
        resent = await relay.resend(1, 3)
        status = await relay.status()
    finally:
        await relay.stop()
    connection = await nats.connect(NATS_URL, connect_timeout=2)
    try:
        jetstream = connection.jetstream()
        info = await jetstream.stream_info(jetstream_names[0])
        message = await jetstream.get_msg(jetstream_names[0], 1)
    finally:
        await connection.close()
    assert sent == 3
    assert resent == {EDGE_A: 3, NATS_URL: 3}
    # The resend reached JetStream, which dropped it by Nats-Msg-Id.
    assert info.state.messages == 3
    assert message.headers["Nats-Msg-Id"]
    assert message.subject == f"{jetstream_names[1]}.entitlement.granted"
    claims = jwt.decode(message.data, options={"verify_signature": False})
    assert list(event_batch_validator().iter_errors(claims)) == []
    nats_status = status["destinations"][1]
    assert nats_status["target"] == NATS_URL
    assert nats_status["lag_events"] == 0


async def test_jetstream_down_backs_off(engine: AsyncEngine) -> None:
    clock = Clock()
    keys = KeyRing(
        engine,
        "EdDSA",
        master_key=Fernet.generate_key(),
        publish_seconds=60.0,
        token_lifetime=1800,
    )
    await keys.load()
    # Nothing listens on port 9 of the loopback address.
    relay = OutboxRelay(
        engine,
        keys,
        ["nats://127.0.0.1:9"],
        retention_seconds=RETENTION,
        timeout=1.0,
        monotonic=clock,
    )
    try:
        await add_events(engine, 1)
        sent = await relay.deliver("nats://127.0.0.1:9")
        status = await relay.status()
    finally:
        await relay.stop()
    assert sent == 0
    assert status["destinations"][0]["failures"] == 1
    assert status["destinations"][0]["lag_events"] == 1
