"""Purchases that wait for the viewer's 3-D Secure step.

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-04

Adds where the viewer completes the issuer's authentication and when the
saga stops waiting, and counts ``requires_action`` among the statuses that
hold the one active purchase per viewer and content item.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_BEFORE = ("pending", "authorized", "captured", "granted", "voiding", "refunding")
_AFTER = ("pending", "requires_action", *_BEFORE[1:])


def upgrade() -> None:
    with op.batch_alter_table("purchases") as batch:
        batch.add_column(sa.Column("next_action_url", sa.Text))
        batch.add_column(sa.Column("action_expires_at", sa.Float))
    _replace_active_index(_AFTER)


def downgrade() -> None:
    _replace_active_index(_BEFORE)
    with op.batch_alter_table("purchases") as batch:
        batch.drop_column("action_expires_at")
        batch.drop_column("next_action_url")


def _replace_active_index(statuses: tuple[str, ...]) -> None:
    op.drop_index("uq_purchases_active", table_name="purchases")
    active = sa.column("status").in_(statuses)
    op.create_index(
        "uq_purchases_active",
        "purchases",
        ["viewer_id", "content_id"],
        unique=True,
        sqlite_where=active,
        postgresql_where=active,
    )
