"""The origin's SQLite driver: statements on the event loop, writers in turn.

Each test opens a real SQLite file through ``origin.store.create_engine``.
Another process's lock is made with Python's own ``sqlite3`` module on the
same file, as the ``segmentgate`` command line or a backup tool would hold it.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from sqlalchemy import Column, Integer, MetaData, String, Table, func, select, text
from sqlalchemy.engine import Connection
from sqlalchemy.exc import IntegrityError, OperationalError
from sqlalchemy.ext.asyncio import AsyncEngine

from origin import sqlite_driver
from origin.store import create_engine

metadata = MetaData()
notes = Table(
    "notes",
    metadata,
    Column("note_id", Integer, primary_key=True),
    Column("text", String(64), nullable=False, unique=True),
)


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "store.db"


@pytest.fixture
async def engine(path: Path) -> AsyncIterator[AsyncEngine]:
    engine = create_engine(f"sqlite+aiosqlite:///{path}")
    async with engine.begin() as connection:
        await connection.run_sync(metadata.create_all)
    yield engine
    await engine.dispose()


async def count(engine: AsyncEngine) -> int:
    async with engine.connect() as connection:
        return int(
            (
                await connection.execute(select(func.count()).select_from(notes))
            ).scalar_one()
        )


async def test_sqlite_url_gets_inline_driver(engine: AsyncEngine) -> None:
    assert engine.dialect.driver == sqlite_driver.DRIVER
    async with engine.begin() as connection:
        result = await connection.execute(notes.insert().values(text="first"))
        assert result.inserted_primary_key == (1,)
        updated = await connection.execute(notes.update().values(text="changed"))
        assert updated.rowcount == 1
        rows = (await connection.execute(select(notes))).all()
    assert [tuple(row) for row in rows] == [(1, "changed")]


async def test_writer_awaiting_inside_makes_others_wait(engine: AsyncEngine) -> None:
    order: list[str] = []

    async def slow() -> None:
        async with engine.begin() as connection:
            await connection.execute(notes.insert().values(text="slow"))
            order.append("slow wrote")
            # Something that is not SQL, inside the transaction.
            await asyncio.sleep(0.2)
            order.append("slow commits")

    async def quick() -> None:
        await asyncio.sleep(0.05)
        async with engine.begin() as connection:
            await connection.execute(notes.insert().values(text="quick"))
            order.append("quick wrote")

    await asyncio.gather(slow(), quick())

    # The second writer waited for the first to commit instead of failing,
    # although SQLite's busy handler is off.
    assert order == ["slow wrote", "slow commits", "quick wrote"]
    assert await count(engine) == 2


async def test_reader_skips_the_writer_turn(engine: AsyncEngine) -> None:
    async with engine.begin() as writer:
        await writer.execute(notes.insert().values(text="uncommitted"))
        # The writer's turn is still on. A read runs at once and returns the
        # last committed state.
        assert await asyncio.wait_for(count(engine), 1) == 0
    assert await count(engine) == 1


async def test_failed_transaction_ends_its_turn(engine: AsyncEngine) -> None:
    async with engine.begin() as connection:
        await connection.execute(notes.insert().values(text="taken"))
    with pytest.raises(IntegrityError):
        async with engine.begin() as connection:
            await connection.execute(notes.insert().values(text="taken"))
    # A rolled-back transaction gave up its turn: the next writer proceeds.
    async with asyncio.timeout(1):
        async with engine.begin() as connection:
            await connection.execute(notes.insert().values(text="next"))
    assert await count(engine) == 2


async def test_other_process_lock_waited_without_blocking(
    engine: AsyncEngine, path: Path
) -> None:
    other = sqlite3.connect(path, isolation_level=None)
    other.execute("BEGIN IMMEDIATE")
    other.execute("INSERT INTO notes (text) VALUES ('other process')")
    ticks = 0

    async def tick() -> None:
        nonlocal ticks
        while True:
            await asyncio.sleep(0.01)
            ticks += 1

    ticker = asyncio.create_task(tick())
    asyncio.get_running_loop().call_later(0.3, other.execute, "COMMIT")
    try:
        async with engine.begin() as connection:
            await connection.execute(notes.insert().values(text="ours"))
    finally:
        ticker.cancel()
        other.close()

    assert await count(engine) == 2
    # The event loop kept running while the statement waited for the lock.
    assert ticks >= 10


async def test_other_process_lock_too_long_fails(
    engine: AsyncEngine, path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sqlite_driver, "WRITER_WAIT_SECONDS", 0.2)
    other = sqlite3.connect(path, isolation_level=None)
    other.execute("BEGIN IMMEDIATE")
    try:
        with pytest.raises(OperationalError, match="database is locked"):
            async with engine.begin() as connection:
                await connection.execute(notes.insert().values(text="ours"))
    finally:
        other.execute("ROLLBACK")
        other.close()
    # The failed statement gave up its turn.
    async with asyncio.timeout(1):
        async with engine.begin() as connection:
            await connection.execute(notes.insert().values(text="later"))
    assert await count(engine) == 1


async def test_writer_turn_too_long_fails(
    engine: AsyncEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sqlite_driver, "WRITER_WAIT_SECONDS", 0.2)
    release = asyncio.Event()

    async def holder() -> None:
        async with engine.begin() as connection:
            await connection.execute(notes.insert().values(text="held"))
            await release.wait()

    holding = asyncio.create_task(holder())
    await asyncio.sleep(0.05)
    with pytest.raises(OperationalError, match="database is locked"):
        async with engine.begin() as connection:
            await connection.execute(notes.insert().values(text="waiting"))
    release.set()
    await holding
    assert await count(engine) == 1


class _TakesLockFirst:
    """A parameter whose conversion lets another process take the write lock.

    sqlite3 converts a row's parameters just before it runs that row, so the
    lock is taken between two rows of one ``executemany``.
    """

    def __init__(self, text: str, other: sqlite3.Connection) -> None:
        self.text = text
        self.other = other
        self.lock_taken = False

    def __conform__(self, protocol: object) -> str:
        if not self.lock_taken:
            self.lock_taken = True
            self.other.execute("BEGIN IMMEDIATE")
            asyncio.get_running_loop().call_later(0.1, self.other.execute, "COMMIT")
        return self.text


async def test_autocommit_executemany_busy_midway(
    engine: AsyncEngine, path: Path
) -> None:
    other = sqlite3.connect(path, isolation_level=None)
    rows = [{"text": "first"}, {"text": "second"}]
    rows.append({"text": _TakesLockFirst("third", other)})
    autocommit = engine.execution_options(isolation_level="AUTOCOMMIT")
    try:
        async with autocommit.connect() as connection:
            result = await connection.execute(
                text("INSERT INTO notes (text) VALUES (:text)"), rows
            )
    finally:
        other.close()

    # Each row committed by itself: the rows before the lock run once.
    assert result.rowcount == 3
    async with engine.connect() as connection:
        stored = (await connection.execute(select(notes.c.text))).scalars().all()
    assert sorted(stored) == ["first", "second", "third"]


async def test_executemany_iterator_busy_at_start(
    engine: AsyncEngine, path: Path
) -> None:
    other = sqlite3.connect(path, isolation_level=None)
    other.execute("BEGIN IMMEDIATE")
    asyncio.get_running_loop().call_later(0.1, other.execute, "COMMIT")

    def insert(connection: Connection) -> None:
        cursor = connection.connection.dbapi_connection.cursor()  # type: ignore[union-attr]
        rows = ((name,) for name in ("first", "second", "third"))
        cursor.executemany("INSERT INTO notes (text) VALUES (?)", rows)

    try:
        async with engine.begin() as connection:
            await connection.run_sync(insert)
    finally:
        other.close()

    # The rows read before the lock was met are run again, not skipped.
    assert await count(engine) == 3
