"""Origin replicas sharing one PostgreSQL store: saga and relay claims.

Each test gets a database of its own on the server at 127.0.0.1:5432 (user
postgres) and is skipped, saying why, when the server is unreachable.
Replicas are separate engines, sagas and relays in this process; the fleet
test runs them as separate processes. Edges are faked with httpx's mock
transport, as in the outbox tests.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import httpx
import pytest
from cryptography.fernet import Fernet
from sqlalchemy import select, text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncEngine

from origin import purchase_records as records
from origin.invariants import check_invariants
from origin.keyring import KeyRing
from origin.outbox import OutboxRelay, append_event
from origin.providers import SandboxProvider
from origin.saga import PurchaseSaga
from origin.store import create_engine, create_tables, purchases, viewers
from tests.postgres import temporary_database
from tests.saga_harness import FAST_SAGA, FakeClock, publish, running_origin
from tests.test_outbox import EDGE_A, RETENTION, Clock, FakeEdges

# Signing keys are encrypted at rest; every replica needs the same master key.
MASTER_KEY = Fernet.generate_key().decode("ascii")


@pytest.fixture
async def database_url() -> AsyncIterator[str]:
    async with temporary_database("segmentgate_replicas") as url:
        yield url


@contextlib.asynccontextmanager
async def replicas(database_url: str, count: int) -> AsyncIterator[list[AsyncEngine]]:
    engines = [create_engine(database_url) for _ in range(count)]
    try:
        await create_tables(engines[0])
        yield engines
    finally:
        for engine in engines:
            await engine.dispose()


# Saga claims -----------------------------------------------------------------


class CountingProvider:
    """The sandbox, counting calls per purchase and yielding on each call.

    The yield lets the other replica's pass run between two provider calls,
    as a network round trip would.
    """

    def __init__(self, sandbox: SandboxProvider) -> None:
        self.sandbox = sandbox
        self.name = sandbox.name
        self.calls: list[tuple[str, str]] = []

    def __getattr__(self, operation: str) -> Callable[..., Awaitable[Any]]:
        call = getattr(self.sandbox, operation)

        async def counted(*args: Any, **kwargs: Any) -> Any:
            self.calls.append((operation, str(args[0])))
            await asyncio.sleep(0)
            return await call(*args, **kwargs)

        return counted


async def abandoned_purchases(
    database_url: str, clock: FakeClock, count: int
) -> list[str]:
    """Create ``count`` pending purchases whose runner died with its lease."""
    sandbox = SandboxProvider(clock=clock)
    async with running_origin(
        database_url, sandbox, clock, master_key=MASTER_KEY
    ) as origin:
        await publish(origin.client)
        created = []
        async with origin.engine.begin() as connection:
            for index in range(count):
                viewer_id = f"vw_{index}"
                await connection.execute(
                    viewers.insert().values(
                        viewer_id=viewer_id,
                        viewer_ref=f"ref_{index}",
                        token_hash=f"hash_{index}",
                        created_at=clock(),
                    )
                )
                purchase_id = f"pur_{index:03d}"
                await connection.execute(
                    purchases.insert().values(
                        purchase_id=purchase_id,
                        viewer_id=viewer_id,
                        content_id="film",
                        amount="4.99",
                        currency="EUR",
                        payment_method="pm_card_visa",
                        provider=sandbox.name,
                        status=records.PENDING,
                        idempotency_key=purchase_id,
                        lease_owner="replica-that-died",
                        lease_expires_at=clock() + FAST_SAGA.lease_seconds,
                        attempts=0,
                        created_at=clock(),
                        updated_at=clock(),
                    )
                )
                created.append(purchase_id)
    return created


def saga_for(
    engine: AsyncEngine, provider: CountingProvider, clock: FakeClock
) -> PurchaseSaga:
    return PurchaseSaga(
        engine,
        provider,  # type: ignore[arg-type]
        lambda: None,
        policy=FAST_SAGA,
        clock=clock,
    )


async def test_held_lease_waits_for_expiry(database_url: str) -> None:
    clock = FakeClock()
    (purchase_id,) = await abandoned_purchases(database_url, clock, 1)
    async with replicas(database_url, 1) as (engine,):
        provider = CountingProvider(SandboxProvider(clock=clock))
        saga = saga_for(engine, provider, clock)

        assert await saga.recover() == []
        clock.advance(FAST_SAGA.lease_seconds)
        assert await saga.recover() == [purchase_id]

        async with engine.connect() as connection:
            purchase = await records.fetch_purchase(connection, purchase_id)
    assert purchase is not None
    assert purchase.status == records.GRANTED
    assert purchase.lease_owner is None


async def test_claim_skips_locked_purchase(database_url: str) -> None:
    clock = FakeClock()
    first_id, second_id = await abandoned_purchases(database_url, clock, 2)
    clock.advance(FAST_SAGA.lease_seconds)
    async with replicas(database_url, 2) as (one, other):
        async with one.begin() as holding:
            held = await records.claim_due_purchase(
                holding, "replica-1", clock(), FAST_SAGA.lease_seconds
            )
            # The first claim is not committed: its row stays locked, so
            # the second replica takes the other purchase instead of waiting.
            async with other.begin() as connection:
                taken = await asyncio.wait_for(
                    records.claim_due_purchase(
                        connection, "replica-2", clock(), FAST_SAGA.lease_seconds
                    ),
                    timeout=30,
                )
                nothing = await asyncio.wait_for(
                    records.claim_due_purchase(
                        connection,
                        "replica-2",
                        clock(),
                        FAST_SAGA.lease_seconds,
                        passed=[taken or ""],
                    ),
                    timeout=30,
                )
    assert held == first_id
    assert taken == second_id
    assert nothing is None


async def test_replicas_recover_each_purchase_once(database_url: str) -> None:
    clock = FakeClock()
    created = await abandoned_purchases(database_url, clock, 24)
    clock.advance(FAST_SAGA.lease_seconds)
    sandbox = SandboxProvider(clock=clock)
    async with replicas(database_url, 2) as engines:
        providers = [CountingProvider(sandbox) for _ in engines]
        sagas = [
            saga_for(engine, provider, clock)
            for engine, provider in zip(engines, providers, strict=True)
        ]

        first, second = await asyncio.gather(*(saga.recover() for saga in sagas))

        async with engines[0].connect() as connection:
            problems = await check_invariants(connection)
            statuses = dict(
                (
                    await connection.execute(
                        select(purchases.c.purchase_id, purchases.c.status)
                    )
                ).all()
            )
    assert set(first).isdisjoint(second)
    assert sorted(first + second) == created
    assert set(statuses.values()) == {records.GRANTED}
    assert problems == []
    intents = [
        purpose
        for provider in providers
        for operation, purpose in provider.calls
        if operation == "create_intent"
    ]
    assert len(intents) == len(created)
    for purchase_id in created:
        captures = sum(i["captures"] for i in sandbox.intents_for(purchase_id))
        assert captures == 1, purchase_id


# Relay claims ----------------------------------------------------------------


async def make_relay(
    engine: AsyncEngine, edges: FakeEdges, clock: Clock
) -> OutboxRelay:
    keys = KeyRing(
        engine,
        "EdDSA",
        master_key=MASTER_KEY.encode("ascii"),
        publish_seconds=60.0,
        token_lifetime=1800,
    )
    await keys.load()
    return OutboxRelay(
        engine,
        keys,
        [EDGE_A],
        retention_seconds=RETENTION,
        transport=httpx.MockTransport(edges.handle),
        monotonic=clock,
    )


async def add_events(engine: AsyncEngine, count: int) -> None:
    for index in range(count):
        async with engine.begin() as connection:
            await append_event(connection, "entitlement.granted", f"v{index}", "c", 1)


async def test_relays_push_each_event_once(database_url: str) -> None:
    edges, clock = FakeEdges(), Clock()
    async with replicas(database_url, 2) as engines:
        relays = [await make_relay(engine, edges, clock) for engine in engines]
        try:
            for _ in range(5):
                await add_events(engines[0], 20)
                await asyncio.gather(*(relay.deliver(EDGE_A) for relay in relays))
            await asyncio.gather(*(relay.deliver(EDGE_A) for relay in relays))
        finally:
            for relay in relays:
                await relay.stop()
    assert edges.received[EDGE_A] == list(range(1, 101))


async def claim_holder_pid(engine: AsyncEngine) -> int | None:
    """Return the backend that sits inside a claim's transaction, if any."""
    async with engine.connect() as connection:
        return (
            await connection.execute(
                text(
                    "SELECT pid FROM pg_stat_activity "
                    "WHERE datname = current_database() "
                    "AND state = 'idle in transaction'"
                )
            )
        ).scalar()


async def test_relay_takes_over_from_dead_replica(database_url: str) -> None:
    edges, clock = FakeEdges(), Clock()
    async with replicas(database_url, 2) as (stuck_engine, engine):
        stuck = await make_relay(stuck_engine, edges, clock)
        stuck._fault = "block_before_push"
        relay = await make_relay(engine, edges, clock)
        await add_events(engine, 10)
        blocked = asyncio.create_task(stuck.deliver(EDGE_A))
        try:
            for _ in range(1500):
                if (pid := await claim_holder_pid(engine)) is not None:
                    break
                assert not blocked.done()
                await asyncio.sleep(0.02)
            assert pid is not None, "the blocked relay never held a claim"

            held_back = await relay.deliver(EDGE_A)
            # The replica dies: PostgreSQL ends its session and its lock.
            async with engine.connect() as connection:
                await connection.execute(
                    text("SELECT pg_terminate_backend(:pid)"), {"pid": pid}
                )
            taken_over = await relay.deliver(EDGE_A)
        finally:
            blocked.cancel()
            with contextlib.suppress(asyncio.CancelledError, DBAPIError):
                await blocked
            await stuck.stop()
            await relay.stop()
    assert held_back == 0
    assert taken_over == 10
    assert edges.received[EDGE_A] == list(range(1, 11))


def relay_status_cursor(status: dict[str, Any]) -> int:
    (destination,) = [d for d in status["destinations"] if d["target"] == EDGE_A]
    return int(destination["delivered_seq"])


async def test_status_shows_other_replicas_cursor(database_url: str) -> None:
    edges, clock = FakeEdges(), Clock()
    async with replicas(database_url, 2) as engines:
        pushing, watching = [
            await make_relay(engine, edges, clock) for engine in engines
        ]
        try:
            await add_events(engines[0], 3)
            assert await pushing.deliver(EDGE_A) == 3
            status = await watching.status()
        finally:
            await pushing.stop()
            await watching.stop()
    assert relay_status_cursor(status) == 3


async def test_relay_limits_concurrent_claims(database_url: str) -> None:
    # Each claim keeps a database connection during its push, so a relay
    # pushes to at most CONCURRENT_CLAIMS destinations at once.
    from origin.outbox import CONCURRENT_CLAIMS

    targets = [f"http://edge-{index}.test" for index in range(CONCURRENT_CLAIMS + 2)]
    gate = asyncio.Event()
    in_flight: list[str] = []
    most = 0

    async def handle(request: httpx.Request) -> httpx.Response:
        nonlocal most
        in_flight.append(request.url.host)
        most = max(most, len(in_flight))
        await gate.wait()
        in_flight.remove(request.url.host)
        return httpx.Response(204)

    async with replicas(database_url, 1) as (engine,):
        keys = KeyRing(
            engine,
            "EdDSA",
            master_key=MASTER_KEY.encode("ascii"),
            publish_seconds=60.0,
            token_lifetime=1800,
        )
        await keys.load()
        relay = OutboxRelay(
            engine,
            keys,
            targets,
            retention_seconds=RETENTION,
            transport=httpx.MockTransport(handle),
        )
        try:
            await add_events(engine, 1)
            pushes = asyncio.gather(*(relay.deliver(target) for target in targets))
            for _ in range(1500):
                if len(in_flight) == CONCURRENT_CLAIMS:
                    break
                await asyncio.sleep(0.02)
            # Give a fifth push every chance to start before the gate opens.
            await asyncio.sleep(0.2)
            blocked = len(in_flight)
            gate.set()
            sent = await pushes
        finally:
            await relay.stop()
    assert blocked == CONCURRENT_CLAIMS
    assert most == CONCURRENT_CLAIMS
    assert sent == [1] * len(targets)
