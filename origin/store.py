"""The origin's durable store: tables and the engine that reaches them.

SQLAlchemy Core over SQLite by default (``sqlite+aiosqlite``). Every write
that edges must learn about happens in the same transaction as its outbox
event, so the store never holds a change that no event announces.
"""

from __future__ import annotations

from sqlalchemy import (
    JSON,
    Boolean,
    Column,
    Float,
    ForeignKey,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    event,
)
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

metadata = MetaData()

content = Table(
    "content",
    metadata,
    Column("content_id", String(128), primary_key=True),
    Column("title", Text, nullable=False),
    Column("entry", Text, nullable=False),
    Column("policy_kind", String(16), nullable=False),
    Column("price_amount", String(32)),
    Column("price_currency", String(3)),
    Column("preview_seconds", Float, nullable=False, default=0.0),
    # What edges do when they cannot confirm entitlements with the origin
    # past their grace period: "open" keeps serving, "closed" stops.
    Column("offline", String(8), nullable=False, default="closed"),
    Column("updated_at", Float, nullable=False),
)

viewers = Table(
    "viewers",
    metadata,
    Column("viewer_id", String(64), primary_key=True),
    Column("viewer_ref", String(64), nullable=False, unique=True),
    Column("token_hash", String(64), nullable=False, unique=True),
    Column("created_at", Float, nullable=False),
)

signing_keys = Table(
    "signing_keys",
    metadata,
    Column("kid", String(64), primary_key=True),
    Column("algorithm", String(16), nullable=False),
    Column("private_pem", Text, nullable=False),
    Column("state", String(16), nullable=False),
    Column("created_at", Float, nullable=False),
)

purchases = Table(
    "purchases",
    metadata,
    Column("purchase_id", String(64), primary_key=True),
    Column("viewer_id", String(64), ForeignKey("viewers.viewer_id"), nullable=False),
    Column("content_id", String(128), nullable=False),
    Column("amount", String(32), nullable=False),
    Column("currency", String(3), nullable=False),
    Column("payment_method", String(128), nullable=False),
    Column("provider", String(32), nullable=False),
    Column("payment_intent_id", String(128)),
    Column("status", String(16), nullable=False),
    Column("created_at", Float, nullable=False),
    Column("updated_at", Float, nullable=False),
)

purchase_steps = Table(
    "purchase_steps",
    metadata,
    Column("step_id", Integer, primary_key=True, autoincrement=True),
    Column(
        "purchase_id", String(64), ForeignKey("purchases.purchase_id"), nullable=False
    ),
    Column("step", String(32), nullable=False),
    Column("outcome", String(16), nullable=False),
    Column("detail", Text),
    Column("at", Float, nullable=False),
)

entitlements = Table(
    "entitlements",
    metadata,
    Column("viewer_id", String(64), primary_key=True),
    Column("content_id", String(128), primary_key=True),
    Column("granted", Boolean, nullable=False),
    Column("version", Integer, nullable=False),
    Column("purchase_id", String(64)),
    Column("updated_at", Float, nullable=False),
)

idempotency_keys = Table(
    "idempotency_keys",
    metadata,
    Column("scope", String(128), primary_key=True),
    Column("key", String(255), primary_key=True),
    Column("request_hash", String(64), nullable=False),
    Column("state", String(16), nullable=False),
    Column("status_code", Integer),
    Column("body", Text),
    Column("created_at", Float, nullable=False),
)

outbox = Table(
    "outbox",
    metadata,
    Column("seq", Integer, primary_key=True, autoincrement=True),
    Column("event_id", String(64), nullable=False, unique=True),
    Column("type", String(64), nullable=False),
    Column("payload", JSON, nullable=False),
    Column("created_at", Float, nullable=False),
    sqlite_autoincrement=True,
)

relay_cursors = Table(
    "relay_cursors",
    metadata,
    Column("target", Text, primary_key=True),
    Column("seq", Integer, nullable=False),
)


def _configure_sqlite(dbapi_connection, connection_record) -> None:  # type: ignore[no-untyped-def]
    cursor = dbapi_connection.cursor()
    # WAL lets readers run beside the single writer; busy_timeout makes a
    # second writer wait instead of failing at once.
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA busy_timeout=5000")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


def create_engine(database_url: str) -> AsyncEngine:
    """Create the async engine for ``database_url``."""
    engine = create_async_engine(database_url)
    if engine.dialect.name == "sqlite":
        event.listen(engine.sync_engine, "connect", _configure_sqlite)
    return engine


async def create_tables(engine: AsyncEngine) -> None:
    async with engine.begin() as connection:
        await connection.run_sync(metadata.create_all)
