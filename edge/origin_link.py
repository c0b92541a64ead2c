"""The edge's connection to the origin: requests, a circuit breaker, grace.

Every request to the origin goes through one circuit breaker, so an origin
that is down costs one failed request per reset interval, not one per
viewer. The link also records the last time the edge heard from the origin
(a feed read or a pushed batch). Past ``stale_after`` seconds without
contact the edge is *degraded*: it may have missed a revocation. It keeps
serving entitled viewers for ``grace_period`` seconds more; after that each
content item's offline mode decides.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from typing import Any

import httpx

from edge.circuit import CircuitBreaker, CircuitOpen
from shared.tracing import inject_traceparent

logger = logging.getLogger("segmentgate.edge.origin")


class OriginUnavailable(Exception):
    """Raised when the origin cannot be reached, fails, or its circuit is open."""


class _ServerError(Exception):
    pass


class OriginLink:
    """HTTP access to the origin, guarded by a circuit breaker."""

    def __init__(
        self,
        base_url: str,
        *,
        timeout: float = 5.0,
        token: str = "",
        stale_after: float = 15.0,
        grace_period: float = 900.0,
        failure_threshold: int = 3,
        reset_timeout: float = 5.0,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        headers = {"Authorization": f"Bearer {token}"} if token else None
        self.client = httpx.AsyncClient(
            base_url=base_url,
            timeout=timeout,
            headers=headers,
            event_hooks={"request": [inject_traceparent]},
            transport=transport,
        )
        self.breaker = CircuitBreaker(
            "origin",
            failure_threshold=failure_threshold,
            reset_timeout=reset_timeout,
            failures=(httpx.TransportError, _ServerError),
        )
        self.stale_after = stale_after
        self.grace_period = grace_period
        self.last_contact: float | None = None
        # Requests attempted by path, including those the open circuit stopped.
        self.requests: Counter[str] = Counter()
        # Decisions taken while degraded, by outcome: grace, open, closed.
        self.degraded_decisions: Counter[str] = Counter()
        self._last_report = 0.0

    async def get(self, path: str, **params: Any) -> httpx.Response:
        """GET ``path``; raise :class:`OriginUnavailable` on any failure but 4xx."""

        async def request() -> httpx.Response:
            response = await self.client.get(path, params=params or None)
            if response.status_code >= 500:
                raise _ServerError(f"origin responded {response.status_code}")
            return response

        self.requests[path] += 1
        try:
            return await self.breaker.call(request)
        except (CircuitOpen, httpx.HTTPError, _ServerError) as exc:
            raise OriginUnavailable(f"GET {path}: {exc}") from exc

    def mark_contact(self) -> None:
        self.last_contact = time.monotonic()

    def silence(self) -> float:
        """Seconds since the origin was last heard from (infinite if never)."""
        if self.last_contact is None:
            return float("inf")
        return time.monotonic() - self.last_contact

    @property
    def degraded(self) -> bool:
        return self.silence() > self.stale_after

    def within_grace(self) -> bool:
        return self.silence() <= self.stale_after + self.grace_period

    def count_degraded(self, outcome: str) -> None:
        """Count a decision taken while degraded, logging at most once a minute."""
        self.degraded_decisions[outcome] += 1
        now = time.monotonic()
        if now - self._last_report >= 60.0:
            self._last_report = now
            logger.warning(
                "origin silent for %.0f s; decisions without it so far: %s",
                self.silence(),
                dict(self.degraded_decisions),
            )

    async def aclose(self) -> None:
        await self.client.aclose()
