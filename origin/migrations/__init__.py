"""Schema migrations of the origin's store, run with Alembic.

:func:`upgrade` brings a store to the newest revision. It runs when the
origin starts and as ``segmentgate origin migrate``. The first revision,
``0001``, creates the schema as it was before migrations existed, and
adopts a store that the earlier start-up code created: it adds only what
such a store lacks, so no row is lost.

On PostgreSQL an advisory lock makes replicas that start together run the
migrations one after the other; SQLite has a single writer and needs none.
"""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, text
from sqlalchemy.ext.asyncio import AsyncEngine

SCRIPT_LOCATION = Path(__file__).resolve().parent
# Any fixed number: the PostgreSQL advisory lock held while migrating.
MIGRATION_LOCK_ID = 0x5E6_A1E3


def alembic_config(connection: Connection | None = None) -> Config:
    """Return the Alembic configuration, bound to ``connection`` when given."""
    config = Config()
    config.set_main_option("script_location", str(SCRIPT_LOCATION))
    if connection is not None:
        config.attributes["connection"] = connection
    return config


def head_revision() -> str:
    """Return the newest revision id."""
    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    if head is None:
        raise RuntimeError(f"no migration found in {SCRIPT_LOCATION}")
    return head


def current_revision(connection: Connection) -> str | None:
    """Return the revision that the store is at, or None before any."""
    return MigrationContext.configure(connection).get_current_revision()


async def upgrade(engine: AsyncEngine, revision: str = "head") -> None:
    """Run every migration of the store up to ``revision``."""
    async with engine.begin() as connection:
        await connection.run_sync(_upgrade, revision)


def _upgrade(connection: Connection, revision: str) -> None:
    if connection.dialect.name == "postgresql":
        # Released at commit, so the next replica sees the new revision.
        connection.execute(
            text("SELECT pg_advisory_xact_lock(:id)"), {"id": MIGRATION_LOCK_ID}
        )
    command.upgrade(alembic_config(connection), revision)


async def migrate_store(database_url: str) -> str:
    """Upgrade the store at ``database_url``; return the revision it is at."""
    from origin.store import create_engine

    engine = create_engine(database_url)
    try:
        await upgrade(engine)
    finally:
        await engine.dispose()
    return head_revision()


async def downgrade(engine: AsyncEngine, revision: str) -> None:
    """Undo migrations down to ``revision`` (``base`` removes every table)."""
    async with engine.begin() as connection:
        await connection.run_sync(_downgrade, revision)


def _downgrade(connection: Connection, revision: str) -> None:
    command.downgrade(alembic_config(connection), revision)
