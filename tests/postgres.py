"""Throwaway databases on the PostgreSQL server at 127.0.0.1:5432 (user postgres)."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import AsyncIterator

import pytest
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.ext.asyncio import create_async_engine

SERVER = "postgresql+asyncpg://postgres@127.0.0.1:5432"


@contextlib.asynccontextmanager
async def temporary_database(prefix: str = "segmentgate_test") -> AsyncIterator[str]:
    """Create a database with a unique name, yield its URL, then drop it.

    Skip the test when the server cannot be reached.
    """
    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    admin = create_async_engine(f"{SERVER}/test", isolation_level="AUTOCOMMIT")
    try:
        async with admin.connect() as connection:
            await connection.execute(text(f'CREATE DATABASE "{name}"'))
    except (OSError, OperationalError, DBAPIError) as exc:
        await admin.dispose()
        pytest.skip(f"PostgreSQL at 127.0.0.1:5432 is unreachable: {exc}")
    try:
        yield f"{SERVER}/{name}"
    finally:
        async with admin.connect() as connection:
            await connection.execute(text(f'DROP DATABASE "{name}" WITH (FORCE)'))
        await admin.dispose()
