"""Schema migrations of the origin's store, on SQLite and on PostgreSQL.

The PostgreSQL cases use the server at 127.0.0.1:5432 (user postgres) with a
database of their own, and are skipped, saying why, when it is unreachable.
"""

from __future__ import annotations

import asyncio
import importlib
import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import Connection, MetaData, inspect, select, text
from sqlalchemy.ext.asyncio import AsyncEngine

from origin import migrations
from origin.store import create_engine, metadata
from tests.postgres import temporary_database

baseline: MetaData = importlib.import_module(
    "origin.migrations.versions.0001_baseline"
).baseline

HOW_TO_MIGRATE = (
    "origin.store.metadata and the migrations in origin/migrations/versions "
    "differ; add a revision as README.md describes under "
    "'Changing the store's schema'"
)


@pytest.fixture(params=["sqlite", "postgresql"])
async def database_url(
    request: pytest.FixtureRequest, tmp_path: Path
) -> AsyncIterator[str]:
    if request.param == "sqlite":
        yield f"sqlite+aiosqlite:///{tmp_path / 'store.db'}"
        return
    async with temporary_database("segmentgate_migrations") as url:
        yield url


@pytest.fixture
async def engine(database_url: str) -> AsyncIterator[AsyncEngine]:
    engine = create_engine(database_url)
    yield engine
    await engine.dispose()


def differences(connection: Connection) -> list[object]:
    context = MigrationContext.configure(connection)
    return list(compare_metadata(context, metadata))


async def schema_differences(engine: AsyncEngine) -> list[object]:
    async with engine.connect() as connection:
        return await connection.run_sync(differences)


async def revision_of(engine: AsyncEngine) -> str | None:
    async with engine.connect() as connection:
        return await connection.run_sync(migrations.current_revision)


async def test_empty_store_upgrades_to_metadata(engine: AsyncEngine) -> None:
    await migrations.upgrade(engine)

    assert await revision_of(engine) == migrations.head_revision()
    diff = await schema_differences(engine)
    assert diff == [], f"{HOW_TO_MIGRATE}:\n" + "\n".join(map(repr, diff))


async def test_upgrade_twice_changes_nothing(engine: AsyncEngine) -> None:
    await migrations.upgrade(engine)
    await migrations.upgrade(engine)

    assert await revision_of(engine) == migrations.head_revision()
    assert await schema_differences(engine) == []


async def test_replicas_migrate_together(database_url: str) -> None:
    if database_url.startswith("sqlite"):
        pytest.skip("a SQLite store serves one origin process, not replicas")
    engines = [create_engine(database_url) for _ in range(3)]
    try:
        await asyncio.gather(*(migrations.upgrade(e) for e in engines))
        assert await revision_of(engines[0]) == migrations.head_revision()
        assert await schema_differences(engines[0]) == []
    finally:
        for engine in engines:
            await engine.dispose()


async def test_downgrade_removes_every_table(engine: AsyncEngine) -> None:
    await migrations.upgrade(engine)
    await migrations.downgrade(engine, "base")

    async with engine.connect() as connection:
        tables = await connection.run_sync(
            lambda sync: set(inspect(sync).get_table_names())
        )
    assert tables <= {"alembic_version"}


async def create_pre_alembic_store(engine: AsyncEngine) -> None:
    """Create a store as the start-up code before migrations did, with rows.

    ``purchases`` lacks the retry columns, as in a store that an older
    release created before those columns existed.
    """
    async with engine.begin() as connection:
        await connection.run_sync(baseline.create_all)
        await connection.execute(text("ALTER TABLE purchases DROP COLUMN attempts"))
        await connection.execute(
            text("ALTER TABLE purchases DROP COLUMN next_attempt_at")
        )
        await connection.execute(
            text(
                "INSERT INTO viewers (viewer_id, viewer_ref, token_hash, created_at) "
                "VALUES ('vw_1', 'ref_1', 'hash_1', 1.0)"
            )
        )
        await connection.execute(
            text(
                "INSERT INTO purchases (purchase_id, viewer_id, content_id, amount, "
                "currency, payment_method, provider, status, created_at, updated_at) "
                "VALUES ('pur_1', 'vw_1', 'sample', '4.99', 'EUR', 'pm_card_visa', "
                "'sandbox', 'granted', 1.0, 2.0)"
            )
        )
        await connection.execute(
            text(
                "INSERT INTO outbox (event_id, type, payload, created_at) "
                "VALUES ('ev_1', 'entitlement.granted', '{\"version\": 1}', 3.0)"
            )
        )


async def test_pre_alembic_store_is_adopted(engine: AsyncEngine) -> None:
    await create_pre_alembic_store(engine)

    await migrations.upgrade(engine)

    assert await revision_of(engine) == migrations.head_revision()
    diff = await schema_differences(engine)
    assert diff == [], f"{HOW_TO_MIGRATE}:\n" + "\n".join(map(repr, diff))
    purchases = metadata.tables["purchases"]
    outbox = metadata.tables["outbox"]
    async with engine.connect() as connection:
        purchase = (await connection.execute(select(purchases))).one()
        event = (await connection.execute(select(outbox))).one()
    assert purchase.purchase_id == "pur_1"
    assert purchase.status == "granted"
    assert purchase.attempts == 0
    assert purchase.next_attempt_at is None
    assert event.event_id == "ev_1"
    assert event.payload == {"version": 1}


def test_migrate_command_upgrades_store(tmp_path: Path) -> None:
    import subprocess
    import sys

    url = f"sqlite+aiosqlite:///{tmp_path / 'cli.db'}"
    result = subprocess.run(
        [sys.executable, "-m", "segmentgate", "origin", "migrate"],
        env={**os.environ, "SEGMENTGATE_DATABASE_URL": url},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )

    async def revision() -> str | None:
        engine = create_engine(url)
        try:
            return await revision_of(engine)
        finally:
            await engine.dispose()

    assert result.returncode == 0, result.stderr
    head = migrations.head_revision()
    assert f"store is at schema revision {head}" in result.stdout
    assert asyncio.run(revision()) == head
