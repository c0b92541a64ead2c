"""Invalidation events that the origin sends to edges.

Events travel in batches signed as a JWT by the origin's current key, so an
edge trusts a batch exactly as far as it trusts playback tokens, with no
shared secret. Each event has a sequence number from the origin's outbox: an
edge that sees a gap fetches the missing events from the origin's feed.

Event types and the fields they use:

* ``entitlement.granted`` and ``entitlement.revoked``: ``viewer_ref``,
  ``content_id`` and the entitlement's ``version``;
* ``policy.changed`` and ``content.withdrawn``: ``content_id``;
* ``key.rotated`` and ``key.revoked``: ``kid``, the key concerned.

Every event may carry ``traceparent``, the W3C trace context of the request
that committed it, so an edge applies it inside that request's trace.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

import jwt

from shared.tokens import ISSUER

if TYPE_CHECKING:
    # shared.keys imports cryptography, which edges on Workers do not have.
    from shared.keys import SigningKey

EVENTS_AUDIENCE = "segmentgate-edge-events"
EVENTS_MEDIA_TYPE = "application/jwt"

ENTITLEMENT_GRANTED = "entitlement.granted"
ENTITLEMENT_REVOKED = "entitlement.revoked"
POLICY_CHANGED = "policy.changed"
CONTENT_WITHDRAWN = "content.withdrawn"
KEY_ROTATED = "key.rotated"
KEY_REVOKED = "key.revoked"
ENTITLEMENT_TYPES = (ENTITLEMENT_GRANTED, ENTITLEMENT_REVOKED)
CONTENT_TYPES = (POLICY_CHANGED, CONTENT_WITHDRAWN)
KEY_TYPES = (KEY_ROTATED, KEY_REVOKED)
EVENT_TYPES = ENTITLEMENT_TYPES + CONTENT_TYPES + KEY_TYPES


@dataclass(frozen=True)
class EntitlementEvent:
    """A change that edges must apply: an entitlement, a policy or a key.

    ``version`` grows with every change of one entitlement; an edge applies
    an entitlement event only when its version is newer than what it holds.
    Fields that an event type does not use are empty.
    """

    seq: int
    id: str
    type: str
    viewer_ref: str
    content_id: str
    version: int
    occurred_at: float
    kid: str = ""
    traceparent: str = ""

    @property
    def granted(self) -> bool:
        return self.type == ENTITLEMENT_GRANTED

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> EntitlementEvent:
        """Build an event from its JSON form; raise ``ValueError`` if malformed."""
        try:
            event = cls(
                seq=int(data["seq"]),
                id=str(data["id"]),
                type=str(data["type"]),
                viewer_ref=str(data["viewer_ref"]),
                content_id=str(data["content_id"]),
                version=int(data["version"]),
                occurred_at=float(data["occurred_at"]),
                kid=str(data.get("kid", "")),
                traceparent=str(data.get("traceparent", ""))[:128],
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"event is malformed: {exc}") from None
        if event.type not in EVENT_TYPES:
            raise ValueError(f"unknown event type {event.type!r}")
        return event

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class EventBatch:
    """Events in sequence order and the origin's newest sequence number."""

    events: list[EntitlementEvent]
    last_seq: int


def encode_event_batch(batch: EventBatch, key: SigningKey, ttl: int = 300) -> str:
    """Sign ``batch`` for edges; it verifies for ``ttl`` seconds."""
    now = int(time.time())
    payload = {
        "iss": ISSUER,
        "aud": EVENTS_AUDIENCE,
        "iat": now,
        "exp": now + ttl,
        "events": [event.to_dict() for event in batch.events],
        "last_seq": batch.last_seq,
    }
    return jwt.encode(
        payload, key.private_key, algorithm=key.algorithm, headers={"kid": key.kid}
    )


def event_batch_from_claims(claims: dict[str, Any]) -> EventBatch:
    """Read a verified batch payload; raise ``ValueError`` if malformed."""
    raw_events = claims.get("events")
    if not isinstance(raw_events, list):
        raise ValueError("event batch has no 'events' list")
    events = [EntitlementEvent.from_dict(item) for item in raw_events]
    try:
        last_seq = int(claims["last_seq"])
    except (KeyError, TypeError, ValueError):
        raise ValueError("event batch has no valid 'last_seq'") from None
    return EventBatch(sorted(events, key=lambda event: event.seq), last_seq)
