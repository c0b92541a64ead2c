"""The origin's durable store: tables and the engine that reaches them.

SQLAlchemy Core over SQLite by default (``sqlite+aiosqlite``), or
PostgreSQL (``postgresql+asyncpg``). Every write that edges must learn about
happens in the same transaction as its outbox event, so the store never
holds a change that no event announces.
"""

from __future__ import annotations

from sqlalchemy import (
    JSON,
    Boolean,
    Column,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    event,
)
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from origin import migrations, sqlite_driver

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
    # The private key in PEM, encrypted with the master key (Fernet).
    Column("private_pem", Text, nullable=False),
    # next, current, retiring, retired or revoked; changed_at is when.
    Column("state", String(16), nullable=False),
    Column("created_at", Float, nullable=False),
    Column("changed_at", Float),
)

# Every admin action, for audit: who (a token's scope and fingerprint),
# what, on which target, when.
# Webhook signing secrets added through the admin API, encrypted with the
# master key; SEGMENTGATE_WEBHOOK_SECRETS adds more from the environment.
webhook_secrets = Table(
    "webhook_secrets",
    metadata,
    Column("secret_id", String(40), primary_key=True),
    Column("provider", String(64), nullable=False),
    Column("secret", Text, nullable=False),
    Column("hint", String(8), nullable=False),
    Column("created_at", Float, nullable=False),
)

admin_audit = Table(
    "admin_audit",
    metadata,
    Column("audit_id", Integer, primary_key=True, autoincrement=True),
    Column("at", Float, nullable=False),
    Column("actor", String(64), nullable=False),
    Column("action", String(64), nullable=False),
    Column("target", String(256), nullable=False),
    Column("detail", JSON, nullable=False),
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
    # The viewer's Idempotency-Key of the request that created the purchase.
    Column("idempotency_key", String(255)),
    Column("refund_requested_at", Float),
    # The status that a running void or refund ends the purchase in.
    Column("closing_status", String(16)),
    Column("authorization_expires_at", Float),
    # While the status is requires_action: where the viewer completes the
    # issuer's authentication, and when the saga stops waiting for it.
    Column("next_action_url", Text),
    Column("action_expires_at", Float),
    # The saga runner that may change the purchase, until lease_expires_at.
    Column("lease_owner", String(64)),
    Column("lease_expires_at", Float),
    # Failed tries of the current step, and when the next one is due.
    Column("attempts", Integer, nullable=False, server_default="0"),
    Column("next_attempt_at", Float),
    # The risk engine challenged the purchase: its payment intent asks the
    # issuer for 3-D Secure. NULL in rows older than the column means no.
    Column("request_three_d_secure", Boolean),
)
Index(
    "uq_purchases_request",
    purchases.c.viewer_id,
    purchases.c.idempotency_key,
    unique=True,
)

# Statuses in which a purchase holds or is working towards an entitlement.
ACTIVE_STATUSES = (
    "pending",
    "requires_action",
    "authorized",
    "captured",
    "granted",
    "voiding",
    "refunding",
)
_ACTIVE = purchases.c.status.in_(ACTIVE_STATUSES)

# At most one active purchase per viewer and content item, so a second
# purchase of the same content cannot charge the viewer again.
Index(
    "uq_purchases_active",
    purchases.c.viewer_id,
    purchases.c.content_id,
    unique=True,
    sqlite_where=_ACTIVE,
    postgresql_where=_ACTIVE,
)
Index("ix_purchases_status", purchases.c.status)

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
    Column("finished_at", Float),
    # The idempotency key sent to the payment provider for this call.
    Column("idempotency_key", String(255)),
)
Index("ix_purchase_steps_purchase", purchase_steps.c.purchase_id)

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
    # A request still in progress after this time is taken as abandoned.
    Column("locked_until", Float),
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

# Every authentic webhook delivery, duplicates included, for audit. The
# correlation id names the delivery in logs and responses; headers are
# stored with signatures and credentials redacted.
webhook_deliveries = Table(
    "webhook_deliveries",
    metadata,
    Column("correlation_id", String(64), primary_key=True),
    Column("provider", String(32), nullable=False),
    Column("event_id", String(255), nullable=False),
    Column("received_at", Float, nullable=False),
    Column("headers", JSON, nullable=False),
    Column("payload", Text, nullable=False),
    Column("duplicate", Boolean, nullable=False),
)
Index("ix_webhook_deliveries_event", webhook_deliveries.c.event_id)

# One row per provider event: the replay record that makes duplicates
# harmless, and the work item of the webhook retry loop. status is pending,
# processed, ignored or dead; correlation_id names the first delivery.
webhook_events = Table(
    "webhook_events",
    metadata,
    Column("provider", String(32), primary_key=True),
    Column("event_id", String(255), primary_key=True),
    Column("correlation_id", String(64), nullable=False),
    Column("event_type", String(128), nullable=False),
    Column("status", String(16), nullable=False),
    Column("attempts", Integer, nullable=False, server_default="0"),
    Column("next_attempt_at", Float),
    Column("last_error", Text),
    Column("received_at", Float, nullable=False),
    Column("processed_at", Float),
)
Index(
    "ix_webhook_events_due", webhook_events.c.status, webhook_events.c.next_attempt_at
)

# Webhook events whose processing failed every retry. Replaying one puts the
# event back to pending and sets replayed_at here.
webhook_dead_letters = Table(
    "webhook_dead_letters",
    metadata,
    Column("correlation_id", String(64), primary_key=True),
    Column("provider", String(32), nullable=False),
    Column("event_id", String(255), nullable=False),
    Column("event_type", String(128), nullable=False),
    Column("attempts", Integer, nullable=False),
    Column("last_error", Text),
    Column("dead_at", Float, nullable=False),
    Column("replayed_at", Float),
)

# Outbox batches that an edge rejected with a 4xx response, so that the relay
# moved past them for that edge. They wait here until resent.
relay_parked = Table(
    "relay_parked",
    metadata,
    Column("parked_id", Integer, primary_key=True, autoincrement=True),
    Column("target", Text, nullable=False),
    Column("first_seq", Integer, nullable=False),
    Column("last_seq", Integer, nullable=False),
    Column("status_code", Integer, nullable=False),
    Column("error", Text),
    Column("parked_at", Float, nullable=False),
)


# One row per purchase request that the risk engine assessed, blocked ones
# included; the rows are also the windows that its velocity signals count.
# No personal data is kept: card, device and network are keyed hashes.
risk_assessments = Table(
    "risk_assessments",
    metadata,
    Column("assessment_id", String(40), primary_key=True),
    Column("at", Float, nullable=False),
    # Set once the purchase exists; blocked requests never get one.
    Column("purchase_id", String(64)),
    Column("viewer_id", String(64), nullable=False),
    Column("content_id", String(128), nullable=False),
    Column("card_key", String(64)),
    Column("card_country", String(2)),
    Column("request_country", String(2)),
    Column("device_key", String(64), nullable=False),
    Column("network_key", String(64), nullable=False),
    # allow, challenge or block; enforced is False in observe mode.
    Column("decision", String(16), nullable=False),
    Column("enforced", Boolean, nullable=False),
    Column("reasons", JSON, nullable=False),
    Column("signals", JSON, nullable=False),
)
Index("ix_risk_at", risk_assessments.c.at)
Index("ix_risk_viewer", risk_assessments.c.viewer_id, risk_assessments.c.at)
Index("ix_risk_card", risk_assessments.c.card_key, risk_assessments.c.at)
Index("ix_risk_device", risk_assessments.c.device_key, risk_assessments.c.at)
Index("ix_risk_network", risk_assessments.c.network_key, risk_assessments.c.at)
Index("ix_risk_purchase", risk_assessments.c.purchase_id)


def _configure_sqlite(dbapi_connection, connection_record) -> None:  # type: ignore[no-untyped-def]
    cursor = dbapi_connection.cursor()
    # WAL lets readers run beside the single writer. The driver runs
    # statements on the event loop, so SQLite must not wait for a lock held
    # by another process: it reports the lock at once (busy_timeout 0) and
    # the driver tries again after an asyncio sleep.
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA busy_timeout=0")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


def create_engine(database_url: str) -> AsyncEngine:
    """Create the async engine for ``database_url``.

    A ``sqlite+aiosqlite`` URL gets the dialect of :mod:`origin.sqlite_driver`,
    which runs statements on the event loop and lets writers take turns.
    """
    url = make_url(database_url)
    if url.drivername == "sqlite+aiosqlite":
        url = url.set(drivername=f"sqlite+{sqlite_driver.DRIVER}")
    engine = create_async_engine(url)
    if engine.dialect.name == "sqlite":
        event.listen(engine.sync_engine, "connect", _configure_sqlite)
    return engine


async def create_tables(engine: AsyncEngine) -> None:
    """Create or upgrade the store's tables by running every schema migration."""
    await migrations.upgrade(engine)
