"""Transactional outbox of entitlement events, and the relay that pushes them.

An event is inserted in the same transaction as the change it announces.
The relay pushes new events to every configured edge as a signed batch, and
optionally publishes them to NATS JetStream (:mod:`origin.outbox_nats`), and
remembers, per destination, the last sequence number delivered. Edges also read the
feed (``GET /v1/events``) themselves after a gap or a restart, and drop
events whose id they have applied, so delivery is at least once and the
effect exactly once.

Origin replicas that share a PostgreSQL store each run a relay; a relay
pushes to a destination only while it has locked that destination's cursor
row
(:mod:`origin.outbox_claims`), so a batch goes out from one replica.

Each edge is a destination with its own cursor and retry schedule:

* a transport error, a 5xx, 401, 403, 408 or 429 answer is a failure: the destination
  waits ``retry_base`` seconds, doubling per failure up to ``retry_max``,
  and the failure is logged once and then at most every ``LOG_INTERVAL``
  seconds with a count;
* any other 4xx answer rejects the batch for good. The relay then pushes
  the batch's events one at a time, and an event rejected on its own is
  parked: recorded in ``relay_parked`` for that edge and passed over, so
  the events after it keep flowing. A parked event stays in the outbox and
  in the feed; ``segmentgate outbox resend`` pushes it again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import httpx
from opentelemetry import trace
from opentelemetry.trace import SpanKind
from sqlalchemy import func, select, text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from origin.outbox_claims import (
    CursorClaimed,
    claim_cursor,
    create_cursors,
    save_cursor,
)
from origin.outbox_nats import (
    STREAM,
    SUBJECT_PREFIX,
    JetStreamPublisher,
    NatsPublishError,
    is_nats_target,
)
from origin.store import outbox, relay_cursors, relay_parked
from shared.events import (
    EVENTS_MEDIA_TYPE,
    EntitlementEvent,
    EventBatch,
    encode_event_batch,
)
from shared.tracing import current_traceparent, inject_traceparent, links_to

if TYPE_CHECKING:
    from origin.keyring import KeyRing

logger = logging.getLogger("segmentgate.origin.outbox")
tracer = trace.get_tracer("segmentgate.origin")

BATCH_LIMIT = 500
# Seconds between two logs of the same destination's failure streak.
LOG_INTERVAL = 60.0
# Seconds between two tries at a destination that another replica held.
CONTENDED_RETRY = 0.05
# Destinations pushed to at once. Each push keeps a database connection for
# its claim, and the engine's pool (5 connections and 10 more on demand, the
# SQLAlchemy defaults) also serves the API and the saga.
CONCURRENT_CLAIMS = 4
# Any fixed number: the PostgreSQL advisory lock that orders outbox writers.
OUTBOX_LOCK_ID = 0x5E6_0B0C


async def append_event(
    connection: AsyncConnection,
    event_type: str,
    viewer_ref: str,
    content_id: str,
    version: int,
    *,
    kid: str = "",
) -> None:
    """Insert an event inside the caller's transaction.

    The event records the current trace context, so the edge that applies
    it continues the trace of the request that caused it.
    """
    if connection.dialect.name == "postgresql":
        # Sequence numbers are drawn at insert but become visible at commit.
        # Holding this lock until commit makes commits follow sequence order,
        # so a reader never sees event n + 1 before event n and skips n.
        # SQLite has a single writer and needs no lock.
        await connection.execute(
            text("SELECT pg_advisory_xact_lock(:id)"), {"id": OUTBOX_LOCK_ID}
        )
    await connection.execute(
        outbox.insert().values(
            event_id=str(uuid.uuid4()),
            type=event_type,
            payload={
                "viewer_ref": viewer_ref,
                "content_id": content_id,
                "version": version,
                "kid": kid,
                "traceparent": current_traceparent(),
            },
            created_at=time.time(),
        )
    )


async def read_events(
    connection: AsyncConnection,
    after: int,
    retention_seconds: float,
    *,
    limit: int = BATCH_LIMIT,
    until: int | None = None,
) -> EventBatch:
    """Return events after ``after`` that are younger than the retention window.

    Older events cannot matter to an edge: every token issued before them
    has expired, and tokens issued since carry their outcome.
    """
    since = time.time() - retention_seconds
    query = select(outbox).where(outbox.c.seq > after, outbox.c.created_at >= since)
    if until is not None:
        query = query.where(outbox.c.seq <= until)
    rows = (await connection.execute(query.order_by(outbox.c.seq).limit(limit))).all()
    last_seq = (await connection.execute(select(func.max(outbox.c.seq)))).scalar()
    events = [
        EntitlementEvent(
            seq=row.seq,
            id=row.event_id,
            type=row.type,
            viewer_ref=row.payload["viewer_ref"],
            content_id=row.payload["content_id"],
            version=row.payload["version"],
            occurred_at=row.created_at,
            kid=row.payload.get("kid", ""),
            traceparent=row.payload.get("traceparent", ""),
        )
        for row in rows
    ]
    return EventBatch(events, int(last_seq or 0))


@dataclass
class Destination:
    """One edge's delivery state; times are ``time.monotonic`` seconds."""

    target: str
    cursor: int = 0
    failures: int = 0
    retry_at: float = 0.0
    # Events up to this seq go one per push, to find a batch's poison event.
    isolate_until: int = 0
    logged_at: float = float("-inf")
    unlogged_failures: int = 0
    # Another replica held the cursor at the last try.
    contended: bool = False
    has_cursor_row: bool = False
    # Wall-clock time of the last push the destination accepted.
    # NOTE: kept in memory only, so it is None after a restart until the
    # destination accepts its next push.
    acknowledged_at: float | None = None


@dataclass(frozen=True)
class PushResult:
    """The outcome of one push: delivered, failed (retry later) or rejected."""

    outcome: str
    status_code: int = 0
    error: str = ""


DELIVERED = "delivered"
# Client errors that are not about the batch itself: a timeout, rate
# limiting, or credentials and keys that the edge does not accept yet.
RETRIED_CLIENT_ERRORS = frozenset({401, 403, 408, 429})
# Points where a relay with ``fault`` set blocks forever, for crash tests.
FAULT_POINTS = frozenset({"block_before_push", "block_after_push"})
FAILED = "failed"
REJECTED = "rejected"


class OutboxRelay:
    """Push outbox events to edges as soon as they commit."""

    def __init__(
        self,
        engine: AsyncEngine,
        keys: KeyRing,
        targets: Sequence[str],
        *,
        retention_seconds: float,
        poll_interval: float = 1.0,
        timeout: float = 5.0,
        retry_base: float = 1.0,
        retry_max: float = 60.0,
        transport: httpx.AsyncBaseTransport | None = None,
        monotonic: Callable[[], float] = time.monotonic,
        fault: str = "",
        jetstream_names: tuple[str, str] = (STREAM, SUBJECT_PREFIX),
    ) -> None:
        if fault and fault not in FAULT_POINTS:
            raise ValueError(f"relay fault must be one of {sorted(FAULT_POINTS)}")
        self._fault = fault
        self._engine = engine
        self._keys = keys
        self._destinations = {
            target.rstrip("/"): Destination(target.rstrip("/")) for target in targets
        }
        self._retention = retention_seconds
        self._poll_interval = poll_interval
        self._retry_base = retry_base
        self._retry_max = retry_max
        self._monotonic = monotonic
        self._client = httpx.AsyncClient(
            timeout=timeout,
            transport=transport,
            event_hooks={"request": [inject_traceparent]},
        )
        # JetStream destinations; jetstream_names is the stream and the
        # subject prefix.
        self._publishers = {
            target: JetStreamPublisher(
                target,
                timeout,
                stream=jetstream_names[0],
                subject_prefix=jetstream_names[1],
            )
            for target in self._destinations
            if is_nats_target(target)
        }
        self._wake = asyncio.Event()
        self._claims = asyncio.Semaphore(CONCURRENT_CLAIMS)
        self._task: asyncio.Task[None] | None = None

    @property
    def targets(self) -> list[str]:
        return list(self._destinations)

    def notify(self) -> None:
        """Wake the relay after a transaction that added events committed."""
        self._wake.set()

    async def start(self) -> None:
        if self._destinations:
            await self._load_cursors()
            self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self._client.aclose()
        for publisher in self._publishers.values():
            await publisher.aclose()

    async def _load_cursors(self) -> None:
        async with self._engine.connect() as connection:
            rows = (await connection.execute(select(relay_cursors))).all()
        for row in rows:
            if row.target in self._destinations:
                self._destinations[row.target].cursor = row.seq

    async def _run(self) -> None:
        while True:
            # A destination that another replica was delivering to may have
            # received events after that replica's last read: look again soon.
            contended = any(d.contended for d in self._destinations.values())
            wait = CONTENDED_RETRY if contended else self._poll_interval
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), wait)
            self._wake.clear()
            await asyncio.gather(*(self.deliver(t) for t in self._destinations))

    async def deliver(self, target: str) -> int:
        """Push every pending event to ``target``; return how many were sent.

        A destination that is waiting out its backoff is skipped, and so is
        one that another replica is delivering to at the moment.
        """
        destination = self._destinations[target]
        if self._monotonic() < destination.retry_at:
            return 0
        if not destination.has_cursor_row:
            await create_cursors(self._engine, [target])
            destination.has_cursor_row = True
        sent = 0
        while True:
            try:
                async with (
                    self._claims,
                    claim_cursor(self._engine, target) as (connection, cursor),
                ):
                    destination.contended = False
                    destination.cursor = cursor
                    delivered = await self._deliver_batch(destination, connection)
            except CursorClaimed:
                destination.contended = True
                return sent
            if delivered is None:
                return sent
            sent += delivered

    async def _deliver_batch(
        self, destination: Destination, connection: AsyncConnection
    ) -> int | None:
        """Push the next batch under the claim.

        Return how many events the destination accepted, or None when no
        more can go now: nothing is pending, or the push failed.
        """
        isolating = destination.cursor < destination.isolate_until
        batch = await read_events(
            connection,
            destination.cursor,
            self._retention,
            limit=1 if isolating else BATCH_LIMIT,
        )
        if not batch.events:
            return None
        await self._strike("block_before_push", batch)
        result = await self._push(destination.target, batch)
        if result.outcome == DELIVERED:
            await self._strike("block_after_push", batch)
        if result.outcome == FAILED:
            self._failed(destination, result.error)
            return None
        if result.outcome == REJECTED and len(batch.events) > 1:
            # Find the poison event: push this range one event at a time.
            destination.isolate_until = batch.events[-1].seq
            return 0
        delivered = 0
        if result.outcome == REJECTED:
            await self._park(connection, destination, batch.events[0].seq, result)
        else:
            delivered = len(batch.events)
            destination.acknowledged_at = time.time()
            self._recovered(destination)
        await save_cursor(connection, destination.target, batch.events[-1].seq)
        destination.cursor = batch.events[-1].seq
        return delivered

    async def _strike(self, point: str, batch: EventBatch) -> None:
        if self._fault != point:
            return
        logger.warning(
            "relay fault %s: blocking at events %d to %d until the process is killed",
            point,
            batch.events[0].seq,
            batch.events[-1].seq,
        )
        await asyncio.Event().wait()

    async def _push(self, target: str, batch: EventBatch) -> PushResult:
        """Push ``batch`` in a span linked to the trace of each of its events."""
        with tracer.start_as_current_span(
            "outbox push",
            kind=SpanKind.PRODUCER,
            links=links_to(event.traceparent for event in batch.events),
            attributes={
                "outbox.target": target,
                "outbox.first_seq": batch.events[0].seq,
                "outbox.last_seq": batch.events[-1].seq,
            },
        ):
            return await self._push_batch(target, batch)

    async def _push_batch(self, target: str, batch: EventBatch) -> PushResult:
        publisher = self._publishers.get(target)
        if publisher is not None:
            try:
                await publisher.publish(batch, self._keys.current)
            except NatsPublishError as exc:
                return PushResult(FAILED, error=str(exc))
            return PushResult(DELIVERED)
        body = encode_event_batch(batch, self._keys.current)
        try:
            response = await self._client.post(
                f"{target}/_edge/events",
                content=body,
                headers={"Content-Type": EVENTS_MEDIA_TYPE},
            )
        except httpx.HTTPError as exc:
            return PushResult(FAILED, error=f"{type(exc).__name__}: {exc}")
        status = response.status_code
        if status < 300:
            return PushResult(DELIVERED, status)
        error = f"edge answered {status}: {response.text[:200]}"
        if 400 <= status < 500 and status not in RETRIED_CLIENT_ERRORS:
            return PushResult(REJECTED, status, error)
        return PushResult(FAILED, status, error)

    def _failed(self, destination: Destination, error: str) -> None:
        destination.failures += 1
        now = self._monotonic()
        delay = min(self._retry_base * 2 ** (destination.failures - 1), self._retry_max)
        destination.retry_at = now + delay
        if now - destination.logged_at < LOG_INTERVAL:
            destination.unlogged_failures += 1
            return
        logger.warning(
            "pushing events to %s failed (%d failures in a row, %d not logged): "
            "%s; next try in %.0f s",
            destination.target,
            destination.failures,
            destination.unlogged_failures,
            error,
            delay,
        )
        destination.logged_at = now
        destination.unlogged_failures = 0

    def _recovered(self, destination: Destination) -> None:
        if destination.failures:
            logger.info(
                "pushing events to %s works again after %d failures",
                destination.target,
                destination.failures,
            )
        destination.failures = 0
        destination.retry_at = 0.0
        destination.logged_at = float("-inf")
        destination.unlogged_failures = 0

    async def _park(
        self,
        connection: AsyncConnection,
        destination: Destination,
        seq: int,
        result: PushResult,
    ) -> None:
        logger.error(
            "edge %s rejected event %d with %d; parked it and moved on: %s",
            destination.target,
            seq,
            result.status_code,
            result.error,
        )
        await connection.execute(
            relay_parked.insert().values(
                target=destination.target,
                first_seq=seq,
                last_seq=seq,
                status_code=result.status_code,
                error=result.error[:1000],
                parked_at=time.time(),
            )
        )

    async def resend(self, from_seq: int, to_seq: int) -> dict[str, int]:
        """Push events ``from_seq`` to ``to_seq`` to every edge again.

        Cursors do not move. Parked events in the range that an edge now
        accepts leave its parked list. Return the events sent per edge.
        """
        sent: dict[str, int] = {}
        for target in self._destinations:
            sent[target] = await self._resend_to(target, from_seq, to_seq)
        return sent

    async def _resend_to(self, target: str, from_seq: int, to_seq: int) -> int:
        sent = 0
        after = from_seq - 1
        while True:
            async with self._engine.connect() as connection:
                batch = await read_events(
                    connection, after, self._retention, until=to_seq
                )
            if not batch.events:
                return sent
            result = await self._push(target, batch)
            if result.outcome != DELIVERED:
                logger.warning(
                    "resending events to %s failed: %s", target, result.error
                )
                return sent
            first, after = batch.events[0].seq, batch.events[-1].seq
            sent += len(batch.events)
            async with self._engine.begin() as connection:
                await connection.execute(
                    relay_parked.delete().where(
                        relay_parked.c.target == target,
                        relay_parked.c.first_seq >= first,
                        relay_parked.c.last_seq <= after,
                    )
                )

    async def status(self) -> dict[str, object]:
        """Return the relay's lag per edge and the oldest undelivered event."""
        now = time.time()
        async with self._engine.connect() as connection:
            last_seq = int(
                (await connection.execute(select(func.max(outbox.c.seq)))).scalar() or 0
            )
            # Another replica may have moved a cursor since this one did.
            stored = dict((await connection.execute(select(relay_cursors))).all())
            destinations = [
                await self._destination_status(
                    connection,
                    destination,
                    stored.get(destination.target, destination.cursor),
                    now,
                )
                for destination in self._destinations.values()
            ]
        return {"last_seq": last_seq, "destinations": destinations}

    async def _destination_status(
        self,
        connection: AsyncConnection,
        destination: Destination,
        cursor: int,
        now: float,
    ) -> dict[str, object]:
        pending = outbox.c.seq > cursor
        lag = (
            await connection.execute(select(func.count()).where(pending))
        ).scalar_one()
        oldest = (
            await connection.execute(
                select(outbox.c.seq, outbox.c.created_at)
                .where(pending)
                .order_by(outbox.c.seq)
                .limit(1)
            )
        ).first()
        parked = (
            await connection.execute(
                select(func.count()).where(relay_parked.c.target == destination.target)
            )
        ).scalar_one()
        return {
            "target": destination.target,
            "delivered_seq": cursor,
            "lag_events": int(lag),
            "oldest_undelivered_seq": oldest.seq if oldest else None,
            "oldest_undelivered_age_seconds": (
                round(now - oldest.created_at, 3) if oldest else None
            ),
            "failures": destination.failures,
            "next_attempt_in_seconds": round(
                max(0.0, destination.retry_at - self._monotonic()), 3
            ),
            "parked": int(parked),
            "acknowledged_age_seconds": (
                round(now - destination.acknowledged_at, 3)
                if destination.acknowledged_at is not None
                else None
            ),
        }
