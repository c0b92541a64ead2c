"""Alembic's environment for the origin's store.

:func:`origin.migrations.upgrade` passes an open connection. The ``alembic``
command line (``alembic revision --autogenerate``, see docs/deploy/laptop.md)
connects to ``SEGMENTGATE_DATABASE_URL`` instead.
"""

from __future__ import annotations

import asyncio
import os

from alembic import context
from sqlalchemy import Connection

from origin.store import create_engine, metadata


def run_with(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=metadata,
        # SQLite alters tables by copying them (ALTER TABLE support is partial).
        render_as_batch=connection.dialect.name == "sqlite",
    )
    with context.begin_transaction():
        context.run_migrations()


async def run_from_url(url: str) -> None:
    engine = create_engine(url)
    try:
        async with engine.begin() as connection:
            await connection.run_sync(run_with)
    finally:
        await engine.dispose()


def main() -> None:
    connection = context.config.attributes.get("connection")
    if connection is not None:
        run_with(connection)
        return
    url = os.environ.get("SEGMENTGATE_DATABASE_URL")
    if not url:
        raise SystemExit("set SEGMENTGATE_DATABASE_URL to the store to migrate")
    asyncio.run(run_from_url(url))


if context.is_offline_mode():
    raise SystemExit("offline (--sql) migrations are not supported")
main()
