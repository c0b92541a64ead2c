"""Claims on a destination's relay cursor, so replicas never push the same batch.

Every origin replica runs a relay. Before it pushes a batch to a
destination, a relay locks that destination's ``relay_cursors`` row with
``SELECT ... FOR UPDATE SKIP LOCKED`` and keeps the lock until the new
cursor commits. Another replica that finds the row locked passes over the
destination instead of waiting, so each batch goes out from one replica.
A replica that dies releases its lock with its connection, and
``CLAIM_IDLE_TIMEOUT`` bounds how long a hung one keeps it, so a
destination is never stuck.

SQLite has a single writer and serves one origin process: there the claim
reads the cursor without a lock.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Iterable

from sqlalchemy import select, text
from sqlalchemy.dialects import postgresql
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from origin.store import relay_cursors

# Seconds that a claim may stay idle inside its transaction, which covers
# one push, before PostgreSQL ends the session and releases the lock. A
# push of one batch takes at most the relay's timeout per request.
CLAIM_IDLE_TIMEOUT = 60


class CursorClaimed(Exception):
    """Raised when another replica has locked the destination's cursor."""


async def create_cursors(engine: AsyncEngine, targets: Iterable[str]) -> None:
    """Insert a cursor row at 0 for each target that has none.

    A row must exist before replicas can lock it; on SQLite the first
    saved cursor inserts it instead.
    """
    if engine.dialect.name != "postgresql":
        return
    async with engine.begin() as connection:
        for target in targets:
            await connection.execute(
                postgresql.insert(relay_cursors)
                .values(target=target, seq=0)
                .on_conflict_do_nothing(index_elements=["target"])
            )


@contextlib.asynccontextmanager
async def claim_cursor(
    engine: AsyncEngine, target: str
) -> AsyncIterator[tuple[AsyncConnection, int]]:
    """Lock ``target``'s cursor row in a new transaction; yield it and the cursor.

    Raise :class:`CursorClaimed` when another replica has locked the row.
    The claim ends, and its lock with it, when the transaction commits on
    leaving the block.
    """
    async with engine.connect() as connection, connection.begin():
        query = select(relay_cursors.c.seq).where(relay_cursors.c.target == target)
        if connection.dialect.name == "postgresql":
            await connection.execute(
                text(
                    "SET LOCAL idle_in_transaction_session_timeout = "
                    f"{CLAIM_IDLE_TIMEOUT * 1000}"
                )
            )
            query = query.with_for_update(skip_locked=True)
        cursor = (await connection.execute(query)).scalar()
        if cursor is None and connection.dialect.name == "postgresql":
            raise CursorClaimed(target)
        yield connection, int(cursor or 0)


async def save_cursor(connection: AsyncConnection, target: str, seq: int) -> None:
    """Move ``target``'s cursor to ``seq`` inside the claim's transaction."""
    updated = await connection.execute(
        relay_cursors.update().where(relay_cursors.c.target == target).values(seq=seq)
    )
    if updated.rowcount == 0:
        await connection.execute(relay_cursors.insert().values(target=target, seq=seq))
