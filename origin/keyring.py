"""The origin's signing keys for playback tokens and event batches.

A key moves through states: ``next`` (published, not yet signing),
``current`` (signing), ``retiring`` (published, no longer signing),
``retired`` (gone) and ``revoked`` (gone at once, with an event that makes
edges drop it).

Rotation publishes a new ``next`` key and announces it to the edges. Only
after ``publish_seconds``, which exceed the edges' key refresh interval,
does it start signing, so every edge knows a key before the first token
signed with it arrives. The previous key stays published until every token
and event batch it signed has expired: the longest playback token lifetime
plus the event batch lifetime plus a minute for clocks.

Private keys are stored encrypted with Fernet under the master key; they
are never logged and never leave the origin.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

from cryptography.fernet import Fernet, InvalidToken
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from origin.outbox import append_event
from origin.store import signing_keys
from shared.events import KEY_REVOKED, KEY_ROTATED
from shared.keys import SigningKey, private_key_to_pem

logger = logging.getLogger("segmentgate.origin.keys")

NEXT = "next"
CURRENT = "current"
RETIRING = "retiring"
RETIRED = "retired"
REVOKED = "revoked"
PUBLISHED = (NEXT, CURRENT, RETIRING)
# Event batches verify for this long (see shared.events.encode_event_batch).
EVENT_BATCH_TTL = 300


class KeyNotFound(LookupError):
    """Raised for a kid that the key ring does not hold."""


@dataclass(frozen=True)
class KeyRecord:
    """One key's public facts, as the admin API lists them."""

    kid: str
    algorithm: str
    state: str
    created_at: float
    changed_at: float

    def to_dict(self) -> dict[str, Any]:
        return {
            "kid": self.kid,
            "algorithm": self.algorithm,
            "state": self.state,
            "created_at": self.created_at,
            "changed_at": self.changed_at,
        }


class KeyRing:
    """Signing keys loaded from the store; ``current`` signs."""

    def __init__(
        self,
        engine: AsyncEngine,
        algorithm: str = "EdDSA",
        *,
        master_key: bytes,
        publish_seconds: float = 60.0,
        token_lifetime: float = 3600.0,
        on_event: Any = None,
    ) -> None:
        self._engine = engine
        self._algorithm = algorithm
        self._fernet = Fernet(master_key)
        self.publish_seconds = publish_seconds
        self.retire_after = token_lifetime + EVENT_BATCH_TTL + 60
        # Called after a transaction that added events committed.
        self.on_event = on_event or (lambda: None)
        self._keys: dict[str, SigningKey] = {}
        self._states: dict[str, str] = {}
        self._current: SigningKey | None = None

    @property
    def current(self) -> SigningKey:
        if self._current is None:
            raise RuntimeError("KeyRing.load() has not run")
        return self._current

    def jwks(self) -> dict[str, Any]:
        """The public keys edges should accept: next, current and retiring."""
        return {
            "keys": [
                self._keys[kid].jwk
                for kid, state in self._states.items()
                if state in PUBLISHED
            ]
        }

    @property
    def jwks_max_age(self) -> int:
        """Seconds a cache may keep the JWK set: well inside the publish delay."""
        return max(1, int(self.publish_seconds / 4))

    def encrypt_text(self, text: str) -> str:
        """Encrypt a secret for the store with the master key."""
        return self._fernet.encrypt(text.encode()).decode()

    def decrypt_text(self, token: str) -> str:
        return self._fernet.decrypt(token.encode()).decode()

    def _encrypt(self, key: SigningKey) -> str:
        return self._fernet.encrypt(private_key_to_pem(key.private_key)).decode()

    def _decrypt(self, stored: str, algorithm: str) -> SigningKey:
        try:
            pem = self._fernet.decrypt(stored.encode())
        except InvalidToken:
            if not stored.startswith("-----BEGIN"):
                raise ValueError(
                    "a signing key does not decrypt with this master key"
                ) from None
            pem = stored.encode()  # written before keys were encrypted
        return SigningKey.from_pem(pem, algorithm)

    async def load(self) -> None:
        """Read the keys from the store, creating a current key if none exists."""
        async with self._engine.begin() as connection:
            rows = (await connection.execute(select(signing_keys))).all()
            if not any(row.state == CURRENT for row in rows):
                await self._insert(
                    connection, SigningKey.generate(self._algorithm), CURRENT
                )
                rows = (await connection.execute(select(signing_keys))).all()
        keys: dict[str, SigningKey] = {}
        states: dict[str, str] = {}
        current = None
        for row in rows:
            states[row.kid] = row.state
            if row.state in PUBLISHED:
                keys[row.kid] = self._keys.get(row.kid) or self._decrypt(
                    row.private_pem, row.algorithm
                )
                if row.state == CURRENT:
                    current = keys[row.kid]
        self._keys, self._states, self._current = keys, states, current

    async def _insert(
        self, connection: AsyncConnection, key: SigningKey, state: str
    ) -> None:
        now = time.time()
        await connection.execute(
            signing_keys.insert().values(
                kid=key.kid,
                algorithm=key.algorithm,
                private_pem=self._encrypt(key),
                state=state,
                created_at=now,
                changed_at=now,
            )
        )

    async def _set_state(
        self, connection: AsyncConnection, kid: str, old: str, new: str
    ) -> bool:
        result = await connection.execute(
            signing_keys.update()
            .where(signing_keys.c.kid == kid, signing_keys.c.state == old)
            .values(state=new, changed_at=time.time())
        )
        return bool(result.rowcount)

    async def records(self) -> list[KeyRecord]:
        async with self._engine.connect() as connection:
            rows = (
                await connection.execute(
                    select(signing_keys).order_by(signing_keys.c.created_at)
                )
            ).all()
        return [
            KeyRecord(row.kid, row.algorithm, row.state, row.created_at,
                      row.changed_at or row.created_at)
            for row in rows
        ]  # fmt: skip

    async def rotate(self) -> KeyRecord:
        """Publish a new next key, or return the one already waiting."""
        async with self._engine.begin() as connection:
            waiting = (
                await connection.execute(
                    select(signing_keys).where(signing_keys.c.state == NEXT)
                )
            ).first()
            if waiting is None:
                key = SigningKey.generate(self._algorithm)
                await self._insert(connection, key, NEXT)
                await append_event(connection, KEY_ROTATED, "", "", 0, kid=key.kid)
                kid = key.kid
                logger.info(
                    "published key %s; it signs in %g s", kid, self.publish_seconds
                )
            else:
                kid = waiting.kid
        # Load first, so the relay signs the announcement with the new state.
        await self.load()
        self.on_event()
        return next(record for record in await self.records() if record.kid == kid)

    async def revoke(self, kid: str) -> KeyRecord:
        """Stop publishing ``kid`` at once and tell the edges to drop it.

        Revoking the current key promotes the next key, or a new one, at
        once: tokens signed by the revoked key fail either way.
        """
        while not await self._revoke_once(kid):
            # A rotation tick changed the key's state after it was read.
            logger.info("key %s changed state during revocation; retrying", kid)
        # Load first, so the relay signs the announcement with the new state.
        await self.load()
        self.on_event()
        return next(record for record in await self.records() if record.kid == kid)

    async def _revoke_once(self, kid: str) -> bool:
        """Revoke ``kid`` unless its state changed since it was read."""
        async with self._engine.begin() as connection:
            row = (
                await connection.execute(
                    select(signing_keys).where(signing_keys.c.kid == kid)
                )
            ).first()
            if row is None:
                raise KeyNotFound(kid)
            if row.state == REVOKED:
                return True
            if not await self._set_state(connection, kid, row.state, REVOKED):
                return False
            await append_event(connection, KEY_REVOKED, "", "", 0, kid=kid)
            logger.warning("revoked key %s (was %s)", kid, row.state)
            if row.state == CURRENT:
                await self._promote_next(connection, immediately=True)
        return True

    async def _promote_next(
        self, connection: AsyncConnection, *, immediately: bool
    ) -> None:
        waiting = (
            await connection.execute(
                select(signing_keys).where(signing_keys.c.state == NEXT)
            )
        ).first()
        if waiting is None:
            if not immediately:
                return
            key = SigningKey.generate(self._algorithm)
            await self._insert(connection, key, CURRENT)
            await append_event(connection, KEY_ROTATED, "", "", 0, kid=key.kid)
            return
        current = (
            await connection.execute(
                select(signing_keys).where(signing_keys.c.state == CURRENT)
            )
        ).first()
        if not await self._set_state(connection, waiting.kid, NEXT, CURRENT):
            return  # another replica promoted it
        if current is not None:
            await self._set_state(connection, current.kid, CURRENT, RETIRING)
        await append_event(connection, KEY_ROTATED, "", "", 0, kid=waiting.kid)
        logger.info("key %s signs now", waiting.kid)

    async def tick(self) -> None:
        """Advance rotation: promote a published next key, retire old keys."""
        now = time.time()
        async with self._engine.begin() as connection:
            rows = (
                await connection.execute(
                    select(signing_keys).where(
                        signing_keys.c.state.in_((NEXT, RETIRING))
                    )
                )
            ).all()
            changed = False
            for row in rows:
                age = now - (row.changed_at or row.created_at)
                if row.state == NEXT and age >= self.publish_seconds:
                    await self._promote_next(connection, immediately=False)
                    changed = True
                elif row.state == RETIRING and age >= self.retire_after:
                    changed |= await self._set_state(
                        connection, row.kid, RETIRING, RETIRED
                    )
        # Load first, so the relay signs the announcement with the new state.
        await self.load()
        if changed:
            self.on_event()
