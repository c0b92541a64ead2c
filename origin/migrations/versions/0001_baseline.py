"""Baseline: the schema that the origin created before migrations existed.

Revision ID: 0001
Revises:
Create Date: 2026-12-04

The tables are spelled out here, frozen, instead of imported from
``origin.store``, because later revisions change that metadata. The upgrade
creates what is missing and adds missing columns, so it both builds an
empty store and adopts a store that the start-up code before Alembic
created (which also added new columns to existing tables) without losing
rows.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

logger = logging.getLogger("segmentgate.origin.migrations")

baseline = sa.MetaData()

sa.Table(
    "content",
    baseline,
    sa.Column("content_id", sa.String(128), primary_key=True),
    sa.Column("title", sa.Text, nullable=False),
    sa.Column("entry", sa.Text, nullable=False),
    sa.Column("policy_kind", sa.String(16), nullable=False),
    sa.Column("price_amount", sa.String(32)),
    sa.Column("price_currency", sa.String(3)),
    sa.Column("preview_seconds", sa.Float, nullable=False),
    sa.Column("offline", sa.String(8), nullable=False),
    sa.Column("updated_at", sa.Float, nullable=False),
)
sa.Table(
    "viewers",
    baseline,
    sa.Column("viewer_id", sa.String(64), primary_key=True),
    sa.Column("viewer_ref", sa.String(64), nullable=False, unique=True),
    sa.Column("token_hash", sa.String(64), nullable=False, unique=True),
    sa.Column("created_at", sa.Float, nullable=False),
)
sa.Table(
    "signing_keys",
    baseline,
    sa.Column("kid", sa.String(64), primary_key=True),
    sa.Column("algorithm", sa.String(16), nullable=False),
    sa.Column("private_pem", sa.Text, nullable=False),
    sa.Column("state", sa.String(16), nullable=False),
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Column("changed_at", sa.Float),
)
sa.Table(
    "webhook_secrets",
    baseline,
    sa.Column("secret_id", sa.String(40), primary_key=True),
    sa.Column("provider", sa.String(64), nullable=False),
    sa.Column("secret", sa.Text, nullable=False),
    sa.Column("hint", sa.String(8), nullable=False),
    sa.Column("created_at", sa.Float, nullable=False),
)
sa.Table(
    "admin_audit",
    baseline,
    sa.Column("audit_id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("at", sa.Float, nullable=False),
    sa.Column("actor", sa.String(64), nullable=False),
    sa.Column("action", sa.String(64), nullable=False),
    sa.Column("target", sa.String(256), nullable=False),
    sa.Column("detail", sa.JSON, nullable=False),
)
purchases = sa.Table(
    "purchases",
    baseline,
    sa.Column("purchase_id", sa.String(64), primary_key=True),
    sa.Column(
        "viewer_id",
        sa.String(64),
        sa.ForeignKey("viewers.viewer_id"),
        nullable=False,
    ),
    sa.Column("content_id", sa.String(128), nullable=False),
    sa.Column("amount", sa.String(32), nullable=False),
    sa.Column("currency", sa.String(3), nullable=False),
    sa.Column("payment_method", sa.String(128), nullable=False),
    sa.Column("provider", sa.String(32), nullable=False),
    sa.Column("payment_intent_id", sa.String(128)),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Column("updated_at", sa.Float, nullable=False),
    sa.Column("idempotency_key", sa.String(255)),
    sa.Column("refund_requested_at", sa.Float),
    sa.Column("closing_status", sa.String(16)),
    sa.Column("authorization_expires_at", sa.Float),
    sa.Column("lease_owner", sa.String(64)),
    sa.Column("lease_expires_at", sa.Float),
    sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
    sa.Column("next_attempt_at", sa.Float),
)
sa.Index(
    "uq_purchases_request",
    purchases.c.viewer_id,
    purchases.c.idempotency_key,
    unique=True,
)
_active = purchases.c.status.in_(
    ("pending", "authorized", "captured", "granted", "voiding", "refunding")
)
sa.Index(
    "uq_purchases_active",
    purchases.c.viewer_id,
    purchases.c.content_id,
    unique=True,
    sqlite_where=_active,
    postgresql_where=_active,
)
sa.Index("ix_purchases_status", purchases.c.status)
purchase_steps = sa.Table(
    "purchase_steps",
    baseline,
    sa.Column("step_id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column(
        "purchase_id",
        sa.String(64),
        sa.ForeignKey("purchases.purchase_id"),
        nullable=False,
    ),
    sa.Column("step", sa.String(32), nullable=False),
    sa.Column("outcome", sa.String(16), nullable=False),
    sa.Column("detail", sa.Text),
    sa.Column("at", sa.Float, nullable=False),
    sa.Column("finished_at", sa.Float),
    sa.Column("idempotency_key", sa.String(255)),
)
sa.Index("ix_purchase_steps_purchase", purchase_steps.c.purchase_id)
sa.Table(
    "entitlements",
    baseline,
    sa.Column("viewer_id", sa.String(64), primary_key=True),
    sa.Column("content_id", sa.String(128), primary_key=True),
    sa.Column("granted", sa.Boolean, nullable=False),
    sa.Column("version", sa.Integer, nullable=False),
    sa.Column("purchase_id", sa.String(64)),
    sa.Column("updated_at", sa.Float, nullable=False),
)
sa.Table(
    "idempotency_keys",
    baseline,
    sa.Column("scope", sa.String(128), primary_key=True),
    sa.Column("key", sa.String(255), primary_key=True),
    sa.Column("request_hash", sa.String(64), nullable=False),
    sa.Column("state", sa.String(16), nullable=False),
    sa.Column("status_code", sa.Integer),
    sa.Column("body", sa.Text),
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Column("locked_until", sa.Float),
)
sa.Table(
    "outbox",
    baseline,
    sa.Column("seq", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("event_id", sa.String(64), nullable=False, unique=True),
    sa.Column("type", sa.String(64), nullable=False),
    sa.Column("payload", sa.JSON, nullable=False),
    sa.Column("created_at", sa.Float, nullable=False),
    sqlite_autoincrement=True,
)
sa.Table(
    "relay_cursors",
    baseline,
    sa.Column("target", sa.Text, primary_key=True),
    sa.Column("seq", sa.Integer, nullable=False),
)
webhook_deliveries = sa.Table(
    "webhook_deliveries",
    baseline,
    sa.Column("correlation_id", sa.String(64), primary_key=True),
    sa.Column("provider", sa.String(32), nullable=False),
    sa.Column("event_id", sa.String(255), nullable=False),
    sa.Column("received_at", sa.Float, nullable=False),
    sa.Column("headers", sa.JSON, nullable=False),
    sa.Column("payload", sa.Text, nullable=False),
    sa.Column("duplicate", sa.Boolean, nullable=False),
)
sa.Index("ix_webhook_deliveries_event", webhook_deliveries.c.event_id)
webhook_events = sa.Table(
    "webhook_events",
    baseline,
    sa.Column("provider", sa.String(32), primary_key=True),
    sa.Column("event_id", sa.String(255), primary_key=True),
    sa.Column("correlation_id", sa.String(64), nullable=False),
    sa.Column("event_type", sa.String(128), nullable=False),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
    sa.Column("next_attempt_at", sa.Float),
    sa.Column("last_error", sa.Text),
    sa.Column("received_at", sa.Float, nullable=False),
    sa.Column("processed_at", sa.Float),
)
sa.Index(
    "ix_webhook_events_due",
    webhook_events.c.status,
    webhook_events.c.next_attempt_at,
)
sa.Table(
    "webhook_dead_letters",
    baseline,
    sa.Column("correlation_id", sa.String(64), primary_key=True),
    sa.Column("provider", sa.String(32), nullable=False),
    sa.Column("event_id", sa.String(255), nullable=False),
    sa.Column("event_type", sa.String(128), nullable=False),
    sa.Column("attempts", sa.Integer, nullable=False),
    sa.Column("last_error", sa.Text),
    sa.Column("dead_at", sa.Float, nullable=False),
    sa.Column("replayed_at", sa.Float),
)
sa.Table(
    "relay_parked",
    baseline,
    sa.Column("parked_id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("target", sa.Text, nullable=False),
    sa.Column("first_seq", sa.Integer, nullable=False),
    sa.Column("last_seq", sa.Integer, nullable=False),
    sa.Column("status_code", sa.Integer, nullable=False),
    sa.Column("error", sa.Text),
    sa.Column("parked_at", sa.Float, nullable=False),
)


def upgrade() -> None:
    connection = op.get_bind()
    baseline.create_all(connection, checkfirst=True)
    _add_missing_columns(connection)


def downgrade() -> None:
    baseline.drop_all(op.get_bind())


def _add_missing_columns(connection: sa.Connection) -> None:
    # Only a store from before Alembic can lack columns here: the start-up
    # code of that time added them the same way, so this finishes its work.
    inspector = sa.inspect(connection)
    for table in baseline.sorted_tables:
        present = {column["name"] for column in inspector.get_columns(table.name)}
        missing = [column for column in table.columns if column.name not in present]
        for column in missing:
            logger.info("adding column %s.%s to the store", table.name, column.name)
            # Every column that the earlier start-up code could add is
            # nullable or has a server default, so ADD COLUMN works on
            # SQLite and PostgreSQL alike.
            op.add_column(
                table.name,
                sa.Column(
                    column.name,
                    column.type,
                    nullable=column.nullable,
                    server_default=column.server_default,
                ),
            )
        if missing:
            for index in table.indexes:
                index.create(connection, checkfirst=True)
