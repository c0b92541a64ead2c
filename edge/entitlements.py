"""Entitlement state that the edge learned from the origin's events.

A playback token carries the entitlement as issued with its version. The
edge's own record wins when it is at least as new, so a grant unlocks and a
refund revokes tokens already in players' hands, with no request to the
origin on the media path.

Records expire after ``ttl`` seconds. That is safe when ``ttl`` is at least
the longest token lifetime: every token issued before an expired record's
event has expired too, and tokens issued after it carry that state.
"""

from __future__ import annotations

from dataclasses import dataclass

from cachetools import TTLCache

from shared.events import EntitlementEvent
from shared.tokens import PlaybackClaims


@dataclass(frozen=True)
class EntitlementState:
    granted: bool
    version: int


class EntitlementCache:
    """Latest entitlement per viewer and content, keyed by version."""

    def __init__(self, ttl: float, capacity: int) -> None:
        # NOTE: when more than ``capacity`` entitlements change within ``ttl``,
        # the oldest records are dropped early and their tokens fall back to
        # the state they were issued with.
        self._states: TTLCache[tuple[str, str], EntitlementState] = TTLCache(
            maxsize=capacity, ttl=ttl
        )

    def __len__(self) -> int:
        return len(self._states)

    def apply(self, event: EntitlementEvent) -> bool:
        """Record ``event`` if it is newer than what is held; return whether it was."""
        key = (event.viewer_ref, event.content_id)
        current = self._states.get(key)
        if current is not None and current.version >= event.version:
            return False
        self._states[key] = EntitlementState(event.granted, event.version)
        return True

    def record(self, viewer_ref: str, content_id: str, state: EntitlementState) -> None:
        """Keep a state read from the origin, if it is newer than what is held."""
        key = (viewer_ref, content_id)
        current = self._states.get(key)
        if current is None or state.version > current.version:
            self._states[key] = state

    def is_entitled(self, claims: PlaybackClaims) -> bool:
        """Decide from the newer of the token's and the edge's records."""
        state = self._states.get((claims.viewer_ref, claims.content_id))
        if state is not None and state.version >= claims.entitlement_version:
            return state.granted
        return claims.entitled


# A viewer who never held an entitlement, as the origin's lookup reports it.
NEVER_ENTITLED = EntitlementState(granted=False, version=0)
