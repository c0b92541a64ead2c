"""Origin events: pushed by the origin, caught up from its feed.

Every batch is a JWT signed by the origin, valid for a few minutes, so a
batch recorded and replayed later is rejected. Events carry consecutive
sequence numbers; the follower applies them in order and, on a gap or at
start-up, reads the missing ones from the origin's feed, so a lost push
never becomes a lost revocation. An event id seen before is skipped, so a
duplicate changes nothing even if sequence numbers were reset.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable

import jwt
from cachetools import LRUCache
from opentelemetry import trace

from edge.entitlements import EntitlementCache
from edge.keyset import KeySet
from edge.policies import PolicyCache
from shared.events import (
    CONTENT_WITHDRAWN,
    ENTITLEMENT_GRANTED,
    ENTITLEMENT_TYPES,
    EVENTS_AUDIENCE,
    KEY_REVOKED,
    KEY_ROTATED,
    POLICY_CHANGED,
    EntitlementEvent,
    EventBatch,
    event_batch_from_claims,
)
from shared.tokens import ISSUER
from shared.tracing import span_from

logger = logging.getLogger("segmentgate.edge.events")
tracer = trace.get_tracer("segmentgate.edge")

# Reads the origin's feed after a sequence number; returns a signed batch.
FetchFeed = Callable[[int], Awaitable[str]]


class InvalidEventBatch(ValueError):
    """Raised when a pushed batch is not a valid signed event batch."""


class EventFollower:
    """Apply entitlement events in sequence order, filling gaps from the feed."""

    def __init__(
        self,
        cache: EntitlementCache,
        keys: KeySet,
        fetch_feed: FetchFeed,
        policies: PolicyCache | None = None,
        on_contact: Callable[[], None] | None = None,
        on_applied: Callable[[EntitlementEvent, float], None] | None = None,
    ) -> None:
        self._cache = cache
        self._keys = keys
        self._fetch_feed = fetch_feed
        self._policies = policies
        self._on_contact = on_contact or (lambda: None)
        self._on_applied = on_applied or (lambda event, applied_at: None)
        self._lock = asyncio.Lock()
        self._seen: LRUCache[str, bool] = LRUCache(maxsize=100_000)
        self._background: set[asyncio.Task[None]] = set()
        self.last_seq: int | None = None
        # (seq, occurred_at, applied_at) of recent events, both wall-clock
        # times: how long changes take from the origin's commit to this edge.
        self.applied: deque[tuple[int, float, float]] = deque(maxlen=10_000)

    async def verify(self, token: str) -> EventBatch:
        """Check a batch's signature and shape; raise :class:`InvalidEventBatch`."""
        try:
            kid = jwt.get_unverified_header(token).get("kid")
            key = await self._keys.get_for_events(kid) if isinstance(kid, str) else None
            if key is None:
                raise InvalidEventBatch("event batch is signed by an unknown key")
            claims = await key.decode(
                token,
                audience=EVENTS_AUDIENCE,
                issuer=ISSUER,
                leeway=5,
                require=["iat", "exp", "iss", "aud"],
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
            changed = await self._apply(batch)
        self._on_contact()
        return changed

    async def catch_up(self) -> int:
        """Read every event after the last applied one from the origin's feed."""
        async with self._lock:
            changed = await self._catch_up()
        self._on_contact()
        return changed

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
            changed += self._apply_event(event)
            self.last_seq = event.seq
        return changed

    async def _catch_up(self) -> int:
        changed = 0
        after = self.last_seq or 0
        while True:
            batch = await self.verify(await self._fetch_feed(after))
            for event in batch.events:
                if event.seq > after:
                    changed += self._apply_event(event)
            if batch.events:
                after = max(after, batch.events[-1].seq)
            if not batch.events or after >= batch.last_seq:
                break
        self.last_seq = max(after, batch.last_seq)
        return changed

    def _apply_event(self, event: EntitlementEvent) -> int:
        """Apply one event unless its id was seen; return 1 if it changed state.

        The event is applied in a span of the trace that committed it.
        """
        if event.id in self._seen:
            return 0
        self._seen[event.id] = True
        applied_at = time.time()
        self.applied.append((event.seq, event.occurred_at, applied_at))
        self._on_applied(event, applied_at)
        with span_from(
            tracer, f"apply {event.type}", event.traceparent, {"event.seq": event.seq}
        ):
            return self._apply_in_span(event, applied_at)

    def _apply_in_span(self, event: EntitlementEvent, applied_at: float) -> int:
        if event.type in ENTITLEMENT_TYPES:
            changed = self._cache.apply(event)
            if changed and event.type == ENTITLEMENT_GRANTED:
                logger.info(
                    "entitlement granted: content %s unlocked %.3f s after "
                    "the origin committed event %d",
                    event.content_id,
                    applied_at - event.occurred_at,
                    event.seq,
                    extra={
                        "event_seq": event.seq,
                        "content_id": event.content_id,
                        "viewer_ref": event.viewer_ref,
                    },
                )
            return int(changed)
        if self._policies is not None and event.type == POLICY_CHANGED:
            self._policies.invalidate(event.content_id)
        elif self._policies is not None and event.type == CONTENT_WITHDRAWN:
            self._policies.withdraw(event.content_id)
        elif event.type == KEY_REVOKED:
            self._keys.remove(event.kid)
            self._refresh_keys()
        elif event.type == KEY_ROTATED:
            self._refresh_keys()
        return 1

    async def aclose(self) -> None:
        """Cancel key refreshes still running, so their connections close."""
        for task in list(self._background):
            task.cancel()
        await asyncio.gather(*self._background, return_exceptions=True)

    def _refresh_keys(self) -> None:
        async def refresh() -> None:
            try:
                await self._keys.refresh(force=True)
            except Exception as exc:  # noqa: BLE001 - the next event or poll retries
                logger.warning("refreshing keys after a key event failed: %s", exc)

        task = asyncio.create_task(refresh())
        self._background.add(task)
        task.add_done_callback(self._background.discard)
