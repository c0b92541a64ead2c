"""Transactional outbox of entitlement events, and the relay that pushes them.

An event is inserted in the same transaction as the change it announces.
The relay pushes new events to every configured edge as a signed batch and
remembers, per edge, the last sequence number delivered. Edges also read the
feed (``GET /v1/events``) themselves after a gap or a restart.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import Sequence
from typing import TYPE_CHECKING

import httpx
from sqlalchemy import func, select, text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from origin.store import outbox, relay_cursors
from shared.events import (
    EVENTS_MEDIA_TYPE,
    EntitlementEvent,
    EventBatch,
    encode_event_batch,
)

if TYPE_CHECKING:
    from origin.keyring import KeyRing

logger = logging.getLogger("segmentgate.origin.outbox")

BATCH_LIMIT = 500
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
    """Insert an event inside the caller's transaction."""
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
            },
            created_at=time.time(),
        )
    )


async def read_events(
    connection: AsyncConnection, after: int, retention_seconds: float
) -> EventBatch:
    """Return events after ``after`` that are younger than the retention window.

    Older events cannot matter to an edge: every token issued before them
    has expired, and tokens issued since carry their outcome.
    """
    since = time.time() - retention_seconds
    rows = (
        await connection.execute(
            select(outbox)
            .where(outbox.c.seq > after, outbox.c.created_at >= since)
            .order_by(outbox.c.seq)
            .limit(BATCH_LIMIT)
        )
    ).all()
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
        )
        for row in rows
    ]
    return EventBatch(events, int(last_seq or 0))


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
    ) -> None:
        self._engine = engine
        self._keys = keys
        self._targets = [target.rstrip("/") for target in targets]
        self._retention = retention_seconds
        self._poll_interval = poll_interval
        self._client = httpx.AsyncClient(timeout=timeout)
        self._wake = asyncio.Event()
        self._cursors: dict[str, int] = {}
        self._task: asyncio.Task[None] | None = None

    def notify(self) -> None:
        """Wake the relay after a transaction that added events committed."""
        self._wake.set()

    async def start(self) -> None:
        if self._targets:
            await self._load_cursors()
            self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self._client.aclose()

    async def _load_cursors(self) -> None:
        async with self._engine.connect() as connection:
            rows = (await connection.execute(select(relay_cursors))).all()
        self._cursors = {row.target: row.seq for row in rows}
        for target in self._targets:
            self._cursors.setdefault(target, 0)

    async def _run(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self._poll_interval)
            self._wake.clear()
            await asyncio.gather(*(self.deliver(t) for t in self._targets))

    async def deliver(self, target: str) -> int:
        """Push every pending event to ``target``; return how many were sent."""
        sent = 0
        while True:
            async with self._engine.connect() as connection:
                batch = await read_events(
                    connection, self._cursors[target], self._retention
                )
            if not batch.events:
                return sent
            if not await self._push(target, batch):
                return sent
            sent += len(batch.events)
            await self._save_cursor(target, batch.events[-1].seq)

    async def _push(self, target: str, batch: EventBatch) -> bool:
        body = encode_event_batch(batch, self._keys.current)
        try:
            response = await self._client.post(
                f"{target}/_edge/events",
                content=body,
                headers={"Content-Type": EVENTS_MEDIA_TYPE},
            )
        except httpx.HTTPError as exc:
            logger.warning("pushing events to %s failed: %s", target, exc)
            return False
        if response.status_code >= 300:
            logger.warning(
                "edge %s rejected events with %d: %s",
                target,
                response.status_code,
                response.text[:200],
            )
            return False
        return True

    async def _save_cursor(self, target: str, seq: int) -> None:
        self._cursors[target] = seq
        async with self._engine.begin() as connection:
            updated = await connection.execute(
                relay_cursors.update()
                .where(relay_cursors.c.target == target)
                .values(seq=seq)
            )
            if updated.rowcount == 0:
                await connection.execute(
                    relay_cursors.insert().values(target=target, seq=seq)
                )
