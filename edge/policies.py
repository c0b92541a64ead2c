"""Content policies as the edge caches them.

A policy (free or purchase, preview length, offline mode, withdrawn) comes
from the origin's ``GET /v1/catalog/{content_id}``. Entries are fresh for
``ttl`` seconds and then served stale for up to ``stale_ttl`` more while one
background request revalidates them, so a warm cache never puts the origin
on the request path. Concurrent misses for one content item share a single
request. Unknown content is remembered for ``negative_ttl`` seconds. Policy
events from the origin invalidate an entry at once.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from cachetools import LRUCache

logger = logging.getLogger("segmentgate.edge.policies")


class ContentUnavailable(Exception):
    """Raised by a fetch when the origin reports the content missing or withdrawn."""


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


@dataclass
class _Entry:
    policy: Policy
    fetched_at: float
    ttl: float


class PolicyCache:
    """Policies by content id, with stale-while-revalidate and single flight."""

    def __init__(
        self,
        fetch: FetchPolicy,
        *,
        ttl: float = 60.0,
        stale_ttl: float = 3600.0,
        negative_ttl: float = 5.0,
        capacity: int = 100_000,
    ) -> None:
        self._fetch = fetch
        self._ttl = ttl
        self._stale_ttl = stale_ttl
        self._negative_ttl = negative_ttl
        self._entries: LRUCache[str, _Entry] = LRUCache(maxsize=capacity)
        self._inflight: dict[str, asyncio.Task[Policy | None]] = {}
        self.origin_requests = 0
        self.failures = 0
        self._failure_logged = -float("inf")

    def __len__(self) -> int:
        return len(self._entries)

    async def get(self, content_id: str) -> Policy | None:
        """Return the policy, or None when it is unknown and the origin failed.

        A fresh or stale entry returns at once; a stale one also starts a
        revalidation in the background.
        """
        entry = self._entries.get(content_id)
        now = time.monotonic()
        if entry is not None:
            age = now - entry.fetched_at
            if age < entry.ttl:
                return entry.policy
            if age < entry.ttl + self._stale_ttl:
                self._revalidate(content_id)
                return entry.policy
        return await self._revalidate(content_id)

    def invalidate(self, content_id: str) -> None:
        """Mark an entry stale and refetch it in the background."""
        entry = self._entries.get(content_id)
        if entry is not None:
            entry.ttl = 0.0
            self._revalidate(content_id)

    def withdraw(self, content_id: str) -> None:
        """Record that content was withdrawn, without asking the origin."""
        self._store(content_id, WITHDRAWN, self._negative_ttl + self._stale_ttl)

    def _store(self, content_id: str, policy: Policy, ttl: float) -> None:
        self._entries[content_id] = _Entry(policy, time.monotonic(), ttl)

    def _revalidate(self, content_id: str) -> asyncio.Task[Policy | None]:
        task = self._inflight.get(content_id)
        if task is None:
            task = asyncio.create_task(self._load(content_id))
            self._inflight[content_id] = task
            task.add_done_callback(lambda _: self._inflight.pop(content_id, None))
        return task

    async def _load(self, content_id: str) -> Policy | None:
        self.origin_requests += 1
        try:
            policy = Policy.from_item(await self._fetch(content_id))
        except ContentUnavailable:
            self._store(content_id, WITHDRAWN, self._negative_ttl)
            return WITHDRAWN
        except Exception as exc:  # noqa: BLE001 - any failure keeps what we had
            self.failures += 1
            now = time.monotonic()
            if now - self._failure_logged >= 60.0:
                self._failure_logged = now
                logger.warning(
                    "fetching the policy of %s failed (%d failures so far): %s",
                    content_id,
                    self.failures,
                    exc,
                )
            entry = self._entries.get(content_id)
            return entry.policy if entry is not None else None
        self._store(content_id, policy, self._ttl)
        return policy
