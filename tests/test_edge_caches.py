"""The edge's policy cache, circuit breaker and event follower, in process."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import jwt
import pytest

from edge.circuit import CircuitBreaker, CircuitOpen
from edge.entitlements import EntitlementCache
from edge.events import EventFollower, InvalidEventBatch
from edge.keyset import KeySet
from edge.policies import ContentUnavailable, PolicyCache
from shared.events import (
    ENTITLEMENT_GRANTED,
    ENTITLEMENT_REVOKED,
    EVENTS_AUDIENCE,
    KEY_REVOKED,
    POLICY_CHANGED,
    EntitlementEvent,
    EventBatch,
    encode_event_batch,
)
from shared.keys import SigningKey
from shared.tokens import ISSUER, PlaybackClaims

ITEM = {"content_id": "c", "policy": {"kind": "purchase", "preview_seconds": 10}}


class CountingFetch:
    def __init__(self, result: Any = ITEM, delay: float = 0.01) -> None:
        self.result = result
        self.delay = delay
        self.calls = 0

    async def __call__(self, content_id: str) -> dict[str, Any]:
        self.calls += 1
        await asyncio.sleep(self.delay)
        if isinstance(self.result, BaseException):
            raise self.result
        return dict(self.result)


# Policy cache.


async def test_concurrent_misses_share_one_request() -> None:
    fetch = CountingFetch()
    cache = PolicyCache(fetch)
    policies = await asyncio.gather(*(cache.get("c") for _ in range(500)))
    assert fetch.calls == 1
    assert {policy.preview_seconds for policy in policies if policy} == {10.0}


async def test_stale_entry_is_served_while_one_request_revalidates() -> None:
    fetch = CountingFetch()
    cache = PolicyCache(fetch, ttl=0.05, stale_ttl=60)
    await cache.get("c")
    await asyncio.sleep(0.06)
    fetch.result = {"content_id": "c", "policy": {"kind": "free"}}
    fetch.delay = 0.2
    started = time.monotonic()
    stale = await asyncio.gather(*(cache.get("c") for _ in range(50)))
    assert time.monotonic() - started < 0.1  # nobody waited for the origin
    assert {policy.kind for policy in stale if policy} == {"purchase"}
    await asyncio.sleep(0.25)
    assert fetch.calls == 2
    assert (await cache.get("c")).kind == "free"  # type: ignore[union-attr]


async def test_unknown_content_is_cached_briefly() -> None:
    fetch = CountingFetch(ContentUnavailable("c"))
    cache = PolicyCache(fetch, negative_ttl=0.05, stale_ttl=0)
    assert (await cache.get("c")).withdrawn  # type: ignore[union-attr]
    assert (await cache.get("c")).withdrawn  # type: ignore[union-attr]
    assert fetch.calls == 1
    await asyncio.sleep(0.06)
    await cache.get("c")
    assert fetch.calls == 2


async def test_origin_failure_keeps_the_last_policy() -> None:
    fetch = CountingFetch()
    cache = PolicyCache(fetch, ttl=0.01, stale_ttl=0)
    await cache.get("c")
    fetch.result = ConnectionError("origin down")
    await asyncio.sleep(0.02)
    assert (await cache.get("c")).preview_seconds == 10.0  # type: ignore[union-attr]
    assert await PolicyCache(fetch).get("other") is None


async def test_invalidate_and_withdraw_act_at_once() -> None:
    fetch = CountingFetch()
    cache = PolicyCache(fetch, ttl=3600)
    await cache.get("c")
    cache.withdraw("c")
    assert (await cache.get("c")).withdrawn  # type: ignore[union-attr]
    fetch.result = {"content_id": "c", "policy": {"kind": "free"}}
    cache.invalidate("c")
    await asyncio.sleep(0.05)
    assert (await cache.get("c")).free  # type: ignore[union-attr]


# Circuit breaker.


async def test_circuit_opens_after_failures_and_recovers() -> None:
    breaker = CircuitBreaker("t", failure_threshold=3, reset_timeout=0.05)
    calls = 0

    async def failing() -> None:
        nonlocal calls
        calls += 1
        raise ConnectionError

    for _ in range(3):
        with pytest.raises(ConnectionError):
            await breaker.call(failing)
    assert breaker.state == "open"
    for _ in range(100):
        with pytest.raises(CircuitOpen):
            await breaker.call(failing)
    assert calls == 3

    await asyncio.sleep(0.06)
    assert breaker.state == "half-open"
    with pytest.raises(ConnectionError):
        await breaker.call(failing)
    assert breaker.state == "open"
    assert calls == 4

    async def working() -> str:
        return "ok"

    await asyncio.sleep(0.06)
    assert await breaker.call(working) == "ok"
    assert breaker.state == "closed"


# Event follower.


def event(
    seq: int, version: int, granted: bool = True, **fields: Any
) -> EntitlementEvent:
    values: dict[str, Any] = {
        "seq": seq,
        "id": f"e{seq}",
        "type": ENTITLEMENT_GRANTED if granted else ENTITLEMENT_REVOKED,
        "viewer_ref": "vr",
        "content_id": "c",
        "version": version,
        "occurred_at": time.time(),
    }
    values.update(fields)
    return EntitlementEvent(**values)


class Origin:
    """The origin's feed and keys, signing with a real key."""

    def __init__(self) -> None:
        self.key = SigningKey.generate("EdDSA")
        self.events: list[EntitlementEvent] = []
        self.feed_reads = 0

    async def jwks(self) -> dict[str, Any]:
        return {"keys": [self.key.jwk]}

    async def feed(self, after: int) -> str:
        self.feed_reads += 1
        pending = [e for e in self.events if e.seq > after]
        last = self.events[-1].seq if self.events else 0
        return encode_event_batch(EventBatch(pending, last), self.key)

    def batch(self, *events: EntitlementEvent, ttl: int = 300) -> str:
        return encode_event_batch(
            EventBatch(list(events), events[-1].seq), self.key, ttl
        )


CLAIMS = PlaybackClaims("ps", "c", "vr", int(time.time()) + 600, False, 0, 0.0)


async def follower_for(
    origin: Origin,
) -> tuple[EventFollower, EntitlementCache, KeySet]:
    keys = KeySet(origin.jwks)
    await keys.refresh()
    cache = EntitlementCache(ttl=3600, capacity=100)
    follower = EventFollower(cache, keys, origin.feed)
    await follower.catch_up()
    return follower, cache, keys


async def test_duplicates_and_replays_change_nothing() -> None:
    origin = Origin()
    follower, cache, _ = await follower_for(origin)
    grant, revoke = event(1, 1), event(2, 2, granted=False)
    origin.events = [grant, revoke]
    assert await follower.receive(origin.batch(grant)) == 1
    assert await follower.receive(origin.batch(revoke)) == 1
    assert not cache.is_entitled(CLAIMS)
    # The grant again, alone, in a new batch or under a new seq: no effect.
    assert await follower.receive(origin.batch(grant)) == 0
    assert await follower.receive(origin.batch(grant, revoke)) == 0
    assert not cache.is_entitled(CLAIMS)


async def test_reordered_events_end_in_the_newest_state() -> None:
    origin = Origin()
    follower, cache, _ = await follower_for(origin)
    grant, revoke = event(1, 1), event(2, 2, granted=False)
    origin.events = [grant, revoke]
    # The revoke arrives first: a gap, so the follower reads the feed.
    await follower.receive(origin.batch(revoke))
    assert follower.last_seq == 2
    assert not cache.is_entitled(CLAIMS)
    await follower.receive(origin.batch(grant))
    assert not cache.is_entitled(CLAIMS)


async def test_gap_is_filled_from_the_feed() -> None:
    origin = Origin()
    follower, cache, _ = await follower_for(origin)
    origin.events = [event(1, 1), event(2, 2, granted=False), event(3, 3)]
    reads = origin.feed_reads
    await follower.receive(origin.batch(origin.events[2]))
    assert origin.feed_reads == reads + 1
    assert follower.last_seq == 3
    assert cache.is_entitled(CLAIMS)


async def test_unsigned_tampered_and_stale_batches_are_rejected() -> None:
    origin = Origin()
    follower, cache, _ = await follower_for(origin)
    grant = event(1, 1)
    genuine = origin.batch(grant)
    header, payload, signature = genuine.split(".")
    forged = jwt.encode(
        {"iss": ISSUER, "aud": EVENTS_AUDIENCE, "iat": int(time.time()),
         "exp": int(time.time()) + 60, "events": [grant.to_dict()], "last_seq": 1},
        SigningKey.generate("EdDSA").private_key,
        algorithm="EdDSA",
        headers={"kid": origin.key.kid},
    )  # fmt: skip
    unsigned = jwt.encode({"events": [], "last_seq": 0}, None, algorithm="none")
    flipped = signature[:-2] + ("AA" if signature[-2:] != "AA" else "BB")
    stale = origin.batch(grant, ttl=-10)
    for bad in (forged, unsigned, f"{header}.{payload}.{flipped}", stale, "junk"):
        with pytest.raises(InvalidEventBatch):
            await follower.receive(bad)
    assert follower.last_seq == 0
    assert not cache.is_entitled(CLAIMS)


async def test_key_revoked_event_drops_the_key() -> None:
    origin = Origin()
    follower, _, keys = await follower_for(origin)
    other = SigningKey.generate("EdDSA")
    keys.load({"keys": [origin.key.jwk, other.jwk]})
    revoke = event(1, 0, type=KEY_REVOKED, viewer_ref="", content_id="", kid=other.kid)
    origin.events = [revoke]
    await follower.receive(origin.batch(revoke))
    await asyncio.sleep(0.05)
    assert await keys.get(origin.key.kid) is not None
    assert other.kid not in {kid for kid in [other.kid] if keys._keys.get(kid)}


async def test_policy_event_invalidates_the_policy() -> None:
    origin = Origin()
    fetch = CountingFetch()
    policies = PolicyCache(fetch, ttl=3600)
    keys = KeySet(origin.jwks)
    await keys.refresh()
    follower = EventFollower(EntitlementCache(3600, 10), keys, origin.feed, policies)
    await follower.catch_up()
    await policies.get("c")
    change = event(1, 0, type=POLICY_CHANGED, viewer_ref="")
    origin.events = [change]
    fetch.result = {"content_id": "c", "policy": {"kind": "free"}}
    await follower.receive(origin.batch(change))
    await asyncio.sleep(0.05)
    assert (await policies.get("c")).free  # type: ignore[union-attr]
    assert fetch.calls == 2
