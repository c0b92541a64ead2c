"""The origin's public keys, as an edge keeps them.

Keys come from the origin's JWK set. A token with an unknown ``kid`` triggers
at most one refetch per interval, shared by every request waiting for it, so
a flood of made-up key ids costs the origin one request per interval.

Each JWK becomes a :class:`PublicKey`. A server edge uses :class:`PyJwtKey`
(PyJWT with ``cryptography``); an edge on Workers, which has no
``cryptography``, passes :class:`edge.webcrypto.WebCryptoKey` instead.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Protocol

import jwt

from shared.tokens import ALLOWED_ALGORITHMS

logger = logging.getLogger("segmentgate.edge.keys")

FetchKeySet = Callable[[], Awaitable[dict[str, Any]]]


class KeysUnavailable(Exception):
    """Raised when a key is unknown and the origin cannot be asked for it."""


class PublicKey(Protocol):
    """One of the origin's public keys, ready to verify the JWTs it signed."""

    async def decode(
        self,
        token: str,
        *,
        audience: str,
        issuer: str,
        leeway: float,
        require: Sequence[str],
    ) -> dict[str, Any]:
        """Return the verified claims of ``token``; raise ``jwt.PyJWTError``.

        The accepted algorithm is the key's own, never the token's header.
        """
        ...


# Builds a key from a JWK; raises ValueError or a PyJWT error if unusable.
PublicKeyFactory = Callable[[dict[str, Any]], PublicKey]


class PyJwtKey:
    """A public key that PyJWT verifies with ``cryptography``."""

    def __init__(self, jwk: dict[str, Any]) -> None:
        self._jwk = jwt.PyJWK(jwk, algorithm=jwk.get("alg"))

    async def decode(
        self,
        token: str,
        *,
        audience: str,
        issuer: str,
        leeway: float,
        require: Sequence[str],
    ) -> dict[str, Any]:
        claims: dict[str, Any] = jwt.decode(
            token,
            self._jwk.key,
            algorithms=[self._jwk.algorithm_name],
            audience=audience,
            issuer=issuer,
            leeway=leeway,
            options={"require": list(require)},
        )
        return claims


class KeySet:
    """Public verification keys by ``kid``, refreshed from the origin."""

    def __init__(
        self,
        fetch: FetchKeySet,
        refresh_interval: float = 30.0,
        public_key: PublicKeyFactory = PyJwtKey,
    ) -> None:
        self._fetch = fetch
        self._refresh_interval = refresh_interval
        self._public_key = public_key
        self._keys: dict[str, PublicKey] = {}
        self._revoked: set[str] = set()
        self._last_refresh = -float("inf")
        self._last_forced_refresh = -float("inf")
        self._lock = asyncio.Lock()

    def __len__(self) -> int:
        return len(self._keys)

    def load(self, jwks: dict[str, Any]) -> None:
        """Replace the keys with those of a JWK set; skip unusable entries."""
        keys: dict[str, PublicKey] = {}
        for entry in jwks.get("keys", []):
            kid, algorithm = entry.get("kid"), entry.get("alg")
            if kid in self._revoked:
                continue
            if not isinstance(kid, str) or algorithm not in ALLOWED_ALGORITHMS:
                logger.warning("skipping JWK without kid or allowed alg: %r", kid)
                continue
            try:
                keys[kid] = self._public_key(entry)
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

    async def get(self, kid: str) -> PublicKey | None:
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

    async def get_for_events(self, kid: str) -> PublicKey | None:
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

    def loaded(self, kid: str) -> PublicKey | None:
        """Return the key for ``kid`` if it is loaded now, without fetching."""
        return self._keys.get(kid)

    def remove(self, kid: str) -> None:
        """Stop accepting ``kid`` at once, and every session it opened."""
        self._keys.pop(kid, None)
        self._revoked.add(kid)

    def is_revoked(self, kid: str) -> bool:
        return kid in self._revoked
