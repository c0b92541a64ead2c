"""The origin's signing keys for playback tokens and event batches.

A key is created on first start and kept in the store. The JWK set lists
the public half of every key that edges should accept.
"""

from __future__ import annotations

import time
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from origin.store import signing_keys
from shared.keys import SigningKey, private_key_to_pem

CURRENT = "current"


class KeyRing:
    """Signing keys loaded from the store; ``current`` signs."""

    def __init__(self, engine: AsyncEngine, algorithm: str = "EdDSA") -> None:
        self._engine = engine
        self._algorithm = algorithm
        self._current: SigningKey | None = None

    @property
    def current(self) -> SigningKey:
        if self._current is None:
            raise RuntimeError("KeyRing.load() has not run")
        return self._current

    async def load(self) -> None:
        """Load the current key, creating one if the store has none."""
        async with self._engine.begin() as connection:
            row = (
                await connection.execute(
                    select(signing_keys).where(signing_keys.c.state == CURRENT)
                )
            ).first()
            if row is not None:
                self._current = SigningKey.from_pem(
                    row.private_pem.encode(), row.algorithm
                )
                return
            key = SigningKey.generate(self._algorithm)
            # TODO: encrypt private keys at rest under a master key.
            await connection.execute(
                signing_keys.insert().values(
                    kid=key.kid,
                    algorithm=key.algorithm,
                    private_pem=private_key_to_pem(key.private_key).decode(),
                    state=CURRENT,
                    created_at=time.time(),
                )
            )
            self._current = key

    def jwks(self) -> dict[str, Any]:
        return {"keys": [self.current.jwk]}
