"""Risk assessments of purchase requests, and 3-D Secure asked of the issuer.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-04

The risk engine keeps one row per assessed purchase request, with keyed
hashes of the card, device and network, so that every origin replica
counts from the same windows.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "risk_assessments",
        sa.Column("assessment_id", sa.String(length=40), nullable=False),
        sa.Column("at", sa.Float(), nullable=False),
        sa.Column("purchase_id", sa.String(length=64), nullable=True),
        sa.Column("viewer_id", sa.String(length=64), nullable=False),
        sa.Column("content_id", sa.String(length=128), nullable=False),
        sa.Column("card_key", sa.String(length=64), nullable=True),
        sa.Column("card_country", sa.String(length=2), nullable=True),
        sa.Column("request_country", sa.String(length=2), nullable=True),
        sa.Column("device_key", sa.String(length=64), nullable=False),
        sa.Column("network_key", sa.String(length=64), nullable=False),
        sa.Column("decision", sa.String(length=16), nullable=False),
        sa.Column("enforced", sa.Boolean(), nullable=False),
        sa.Column("reasons", sa.JSON(), nullable=False),
        sa.Column("signals", sa.JSON(), nullable=False),
        sa.PrimaryKeyConstraint("assessment_id"),
    )
    with op.batch_alter_table("risk_assessments", schema=None) as batch_op:
        batch_op.create_index("ix_risk_at", ["at"], unique=False)
        batch_op.create_index("ix_risk_card", ["card_key", "at"], unique=False)
        batch_op.create_index("ix_risk_device", ["device_key", "at"], unique=False)
        batch_op.create_index("ix_risk_network", ["network_key", "at"], unique=False)
        batch_op.create_index("ix_risk_purchase", ["purchase_id"], unique=False)
        batch_op.create_index("ix_risk_viewer", ["viewer_id", "at"], unique=False)

    with op.batch_alter_table("purchases", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("request_three_d_secure", sa.Boolean(), nullable=True)
        )


def downgrade() -> None:
    with op.batch_alter_table("purchases", schema=None) as batch_op:
        batch_op.drop_column("request_three_d_secure")

    with op.batch_alter_table("risk_assessments", schema=None) as batch_op:
        batch_op.drop_index("ix_risk_viewer")
        batch_op.drop_index("ix_risk_purchase")
        batch_op.drop_index("ix_risk_network")
        batch_op.drop_index("ix_risk_device")
        batch_op.drop_index("ix_risk_card")
        batch_op.drop_index("ix_risk_at")

    op.drop_table("risk_assessments")
