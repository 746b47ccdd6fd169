"""When each target's older history was last re-checked.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-28
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

INSTANT = sa.Text().with_variant(postgresql.TIMESTAMP(timezone=True), "postgresql")

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # one row per (target, tier): e.g. ("acme/app", "day") re-checked at checked_at
    op.create_table(
        "sync_rechecks",
        sa.Column("target", sa.Text, primary_key=True),
        sa.Column("tier", sa.Text, primary_key=True),
        sa.Column("checked_at", INSTANT, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("sync_rechecks")
