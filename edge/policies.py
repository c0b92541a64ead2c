"""Content policies as the edge caches them.

A policy (free or purchase, preview length, offline mode, withdrawn) comes
from the origin's ``GET /v1/catalog/{content_id}`` through a
:class:`~edge.revalidating.RevalidatingCache`. Policy events from the
origin invalidate an entry at once.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from edge.revalidating import Missing, RevalidatingCache

logger = logging.getLogger("segmentgate.edge.policies")


# Raised by a fetch when the origin reports the content missing or withdrawn.
ContentUnavailable = Missing


@dataclass(frozen=True)
class Policy:
    """One content item's policy, as the gate uses it."""

    kind: str
    preview_seconds: float
    offline: str
    withdrawn: bool = False

    @property
    def free(self) -> bool:
        return self.kind == "free"

    @classmethod
    def from_item(cls, item: dict[str, Any]) -> Policy:
        policy = item["policy"]
        kind = str(policy["kind"])
        return cls(
            kind=kind,
            preview_seconds=float(policy.get("preview_seconds", 0.0)),
            offline=str(policy.get("offline", "open" if kind == "free" else "closed")),
        )


WITHDRAWN = Policy(
    kind="withdrawn", preview_seconds=0.0, offline="closed", withdrawn=True
)

# Fetches one content item's catalog entry; raises ContentUnavailable for
# unknown or withdrawn content, anything else when the origin failed.
FetchPolicy = Callable[[str], Awaitable[dict[str, Any]]]


class PolicyCache(RevalidatingCache[str, Policy]):
    """Policies by content id; unknown or withdrawn content is ``WITHDRAWN``."""

    def __init__(
        self,
        fetch: FetchPolicy,
        *,
        ttl: float = 60.0,
        stale_ttl: float = 3600.0,
        negative_ttl: float = 5.0,
        capacity: int = 100_000,
    ) -> None:
        async def fetch_policy(content_id: str) -> Policy:
            return Policy.from_item(await fetch(content_id))

        super().__init__(
            "the policy of",
            fetch_policy,
            missing=WITHDRAWN,
            ttl=ttl,
            stale_ttl=stale_ttl,
            negative_ttl=negative_ttl,
            capacity=capacity,
        )
        self._withdrawn_ttl = negative_ttl + stale_ttl

    def withdraw(self, content_id: str) -> None:
        """Record that content was withdrawn, without asking the origin."""
        self.put(content_id, WITHDRAWN, self._withdrawn_ttl)
