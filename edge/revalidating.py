"""A cache of origin responses with stale-while-revalidate and single flight.

An entry is fresh for ``ttl`` seconds, then served stale for up to
``stale_ttl`` more while one background request revalidates it, so a warm
cache never puts the origin on the request path. Concurrent misses for one
key share a single request. A key the origin does not know is remembered
as ``missing`` for ``negative_ttl`` seconds. When the origin fails, the
last value is kept.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Hashable
from dataclasses import dataclass
from typing import Generic, TypeVar

from cachetools import LRUCache

logger = logging.getLogger("segmentgate.edge.cache")

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class Missing(Exception):
    """Raised by a fetch when the origin has no such item."""


@dataclass
class _Entry(Generic[V]):
    value: V
    fetched_at: float
    ttl: float


class RevalidatingCache(Generic[K, V]):
    """Values by key, fetched from the origin on demand."""

    def __init__(
        self,
        name: str,
        fetch: Callable[[K], Awaitable[V]],
        *,
        missing: V,
        ttl: float = 60.0,
        stale_ttl: float = 3600.0,
        negative_ttl: float = 5.0,
        capacity: int = 100_000,
    ) -> None:
        self.name = name
        self._fetch = fetch
        self._missing = missing
        self._ttl = ttl
        self._stale_ttl = stale_ttl
        self._negative_ttl = negative_ttl
        self._entries: LRUCache[K, _Entry[V]] = LRUCache(maxsize=capacity)
        self._inflight: dict[K, asyncio.Task[V | None]] = {}
        self.origin_requests = 0
        self.failures = 0
        self._failure_logged = -float("inf")

    def __len__(self) -> int:
        return len(self._entries)

    async def get(self, key: K) -> V | None:
        """Return the value, or None when it is unknown and the origin failed.

        A fresh or stale entry returns at once; a stale one also starts a
        revalidation in the background.
        """
        entry = self._entries.get(key)
        if entry is not None:
            age = time.monotonic() - entry.fetched_at
            if age < entry.ttl:
                return entry.value
            if age < entry.ttl + self._stale_ttl:
                self._revalidate(key)
                return entry.value
        return await self._revalidate(key)

    def invalidate(self, key: K) -> None:
        """Mark an entry stale and refetch it in the background."""
        entry = self._entries.get(key)
        if entry is not None:
            entry.ttl = 0.0
            self._revalidate(key)

    def put(self, key: K, value: V, ttl: float | None = None) -> None:
        """Store a value learned without asking the origin."""
        self._entries[key] = _Entry(
            value, time.monotonic(), self._ttl if ttl is None else ttl
        )

    async def aclose(self) -> None:
        """Cancel revalidations still running, so their connections close."""
        tasks = list(self._inflight.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def _revalidate(self, key: K) -> asyncio.Task[V | None]:
        task = self._inflight.get(key)
        if task is None:
            task = asyncio.create_task(self._load(key))
            self._inflight[key] = task
            task.add_done_callback(lambda _: self._inflight.pop(key, None))
        return task

    async def _load(self, key: K) -> V | None:
        self.origin_requests += 1
        try:
            value = await self._fetch(key)
        except Missing:
            self.put(key, self._missing, self._negative_ttl)
            return self._missing
        except Exception as exc:  # noqa: BLE001 - any failure keeps what we had
            self.failures += 1
            now = time.monotonic()
            if now - self._failure_logged >= 60.0:
                self._failure_logged = now
                logger.warning(
                    "fetching %s %r failed (%d failures so far): %s",
                    self.name,
                    key,
                    self.failures,
                    exc,
                )
            entry = self._entries.get(key)
            return entry.value if entry is not None else None
        self.put(key, value)
        return value
