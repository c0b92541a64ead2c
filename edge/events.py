"""Entitlement events: pushed by the origin, caught up from its feed.

Every batch is a JWT signed by the origin. Events carry consecutive sequence
numbers; the follower applies them in order and, on a gap or at start-up,
reads the missing ones from the origin's feed, so a lost push never becomes
a lost revocation.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

import jwt

from edge.entitlements import EntitlementCache
from edge.keyset import KeySet
from shared.events import EVENTS_AUDIENCE, EventBatch, event_batch_from_claims
from shared.tokens import ISSUER

logger = logging.getLogger("segmentgate.edge.events")

# Reads the origin's feed after a sequence number; returns a signed batch.
FetchFeed = Callable[[int], Awaitable[str]]


class InvalidEventBatch(ValueError):
    """Raised when a pushed batch is not a valid signed event batch."""


class EventFollower:
    """Apply entitlement events in sequence order, filling gaps from the feed."""

    def __init__(
        self, cache: EntitlementCache, keys: KeySet, fetch_feed: FetchFeed
    ) -> None:
        self._cache = cache
        self._keys = keys
        self._fetch_feed = fetch_feed
        self._lock = asyncio.Lock()
        self.last_seq: int | None = None

    async def verify(self, token: str) -> EventBatch:
        """Check a batch's signature and shape; raise :class:`InvalidEventBatch`."""
        try:
            kid = jwt.get_unverified_header(token).get("kid")
            key = await self._keys.get(kid) if isinstance(kid, str) else None
            if key is None:
                raise InvalidEventBatch("event batch is signed by an unknown key")
            claims = jwt.decode(
                token,
                key.key,
                algorithms=[key.algorithm_name],
                audience=EVENTS_AUDIENCE,
                issuer=ISSUER,
            )
            return event_batch_from_claims(claims)
        except (jwt.PyJWTError, ValueError) as exc:
            if isinstance(exc, InvalidEventBatch):
                raise
            raise InvalidEventBatch(str(exc)) from exc

    async def receive(self, token: str) -> int:
        """Apply a pushed batch; return how many events changed the cache."""
        batch = await self.verify(token)
        async with self._lock:
            return await self._apply(batch)

    async def catch_up(self) -> int:
        """Read every event after the last applied one from the origin's feed."""
        async with self._lock:
            return await self._catch_up()

    async def _apply(self, batch: EventBatch) -> int:
        changed = 0
        if self.last_seq is None:
            changed += await self._catch_up()
        for event in batch.events:
            last_seq = self.last_seq or 0
            if event.seq <= last_seq:
                continue
            if event.seq > last_seq + 1:
                logger.info(
                    "event gap after seq %d (received %d); catching up",
                    last_seq,
                    event.seq,
                )
                changed += await self._catch_up()
                continue
            changed += self._cache.apply(event)
            self.last_seq = event.seq
        return changed

    async def _catch_up(self) -> int:
        changed = 0
        after = self.last_seq or 0
        while True:
            batch = await self.verify(await self._fetch_feed(after))
            for event in batch.events:
                changed += self._cache.apply(event)
            if batch.events:
                after = max(after, batch.events[-1].seq)
            if not batch.events or after >= batch.last_seq:
                break
        self.last_seq = max(after, batch.last_seq)
        return changed
