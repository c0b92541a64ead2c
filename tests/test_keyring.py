"""The origin's key ring under concurrent state changes."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from cryptography.fernet import Fernet
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from origin.keyring import RETIRING, REVOKED, KeyRing
from origin.outbox import read_events
from origin.store import create_engine, create_tables, signing_keys


@pytest.fixture
async def engine(tmp_path: Path) -> AsyncIterator[AsyncEngine]:
    engine = create_engine(f"sqlite+aiosqlite:///{tmp_path / 'keys.db'}")
    await create_tables(engine)
    yield engine
    await engine.dispose()


async def test_revoke_survives_concurrent_rotation(
    engine: AsyncEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    keys = KeyRing(
        engine,
        "EdDSA",
        master_key=Fernet.generate_key(),
        publish_seconds=60.0,
        token_lifetime=1800,
    )
    await keys.load()
    kid = keys.current.kid
    set_state = keys._set_state
    calls = 0

    async def rotated_meanwhile(
        connection: AsyncConnection, target: str, old: str, new: str
    ) -> bool:
        # The first attempt finds that a rotation tick retired the key after
        # revoke read its state, as happens when both run at once.
        nonlocal calls
        calls += 1
        if calls == 1:
            await connection.execute(
                signing_keys.update()
                .where(signing_keys.c.kid == target)
                .values(state=RETIRING)
            )
            return False
        return await set_state(connection, target, old, new)

    monkeypatch.setattr(keys, "_set_state", rotated_meanwhile)
    record = await keys.revoke(kid)

    assert calls == 2
    assert record.state == REVOKED
    assert kid not in {key["kid"] for key in keys.jwks()["keys"]}
    async with engine.connect() as connection:
        batch = await read_events(connection, 0, 3600)
    revocations = [event for event in batch.events if event.type == "key.revoked"]
    assert [event.kid for event in revocations] == [kid]
