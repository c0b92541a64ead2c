"""The origin's public keys, as an edge keeps them.

Keys come from the origin's JWK set. A token with an unknown ``kid`` triggers
at most one refetch per interval, shared by every request waiting for it, so
a flood of made-up key ids costs the origin one request per interval.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

import jwt

from shared.keys import ALLOWED_ALGORITHMS

logger = logging.getLogger("segmentgate.edge.keys")

FetchKeySet = Callable[[], Awaitable[dict[str, Any]]]


class KeysUnavailable(Exception):
    """Raised when a key is unknown and the origin cannot be asked for it."""


class KeySet:
    """Public verification keys by ``kid``, refreshed from the origin."""

    def __init__(self, fetch: FetchKeySet, refresh_interval: float = 30.0) -> None:
        self._fetch = fetch
        self._refresh_interval = refresh_interval
        self._keys: dict[str, jwt.PyJWK] = {}
        self._revoked: set[str] = set()
        self._last_refresh = -float("inf")
        self._last_forced_refresh = -float("inf")
        self._lock = asyncio.Lock()

    def __len__(self) -> int:
        return len(self._keys)

    def load(self, jwks: dict[str, Any]) -> None:
        """Replace the keys with those of a JWK set; skip unusable entries."""
        keys: dict[str, jwt.PyJWK] = {}
        for entry in jwks.get("keys", []):
            kid, algorithm = entry.get("kid"), entry.get("alg")
            if kid in self._revoked:
                continue
            if not isinstance(kid, str) or algorithm not in ALLOWED_ALGORITHMS:
                logger.warning("skipping JWK without kid or allowed alg: %r", kid)
                continue
            try:
                keys[kid] = jwt.PyJWK(entry, algorithm=algorithm)
            except (jwt.PyJWKError, jwt.InvalidKeyError, ValueError) as exc:
                logger.warning("skipping invalid JWK %s: %s", kid, exc)
        self._keys = keys

    async def refresh(self, *, force: bool = False) -> None:
        """Fetch the key set now, unless another request is already doing so."""
        started = time.monotonic() if not force else float("inf")
        async with self._lock:
            if self._last_refresh >= started:
                return
            self.load(await self._fetch())
            self._last_refresh = time.monotonic()

    async def get(self, kid: str) -> jwt.PyJWK | None:
        """Return the key for ``kid``, refetching the set if it may be new."""
        key = self._keys.get(kid)
        if key is not None:
            return key
        if time.monotonic() - self._last_refresh < self._refresh_interval:
            return None
        try:
            await self.refresh()
        except Exception as exc:
            logger.warning("refreshing the key set failed: %s", exc)
            raise KeysUnavailable(str(exc)) from exc
        return self._keys.get(kid)

    async def get_for_events(self, kid: str) -> jwt.PyJWK | None:
        """Return the key for ``kid`` of an event batch, refetching at once.

        Right after the current key is revoked, the origin signs with a key
        edges have not fetched yet, and the batch announcing it is the first
        thing signed. Such a batch triggers a refetch at most five times a
        second, so forged batches with made-up kids cost the origin little.
        """
        key = self._keys.get(kid)
        if key is not None:
            return key
        now = time.monotonic()
        if now - self._last_forced_refresh >= 0.2:
            self._last_forced_refresh = now
            try:
                await self.refresh(force=True)
            except Exception as exc:
                logger.warning("refreshing the key set failed: %s", exc)
                raise KeysUnavailable(str(exc)) from exc
        return self._keys.get(kid)

    def loaded(self, kid: str) -> jwt.PyJWK | None:
        """Return the key for ``kid`` if it is loaded now, without fetching."""
        return self._keys.get(kid)

    def remove(self, kid: str) -> None:
        """Stop accepting ``kid`` at once, and every session it opened."""
        self._keys.pop(kid, None)
        self._revoked.add(kid)

    def is_revoked(self, kid: str) -> bool:
        return kid in self._revoked
