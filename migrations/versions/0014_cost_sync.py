"""What `mirror sync` keeps about mirroring cost: billing-event windows, its state, usage checks.

Revision ID: 0014
Revises: 0012
Create Date: 2026-12-02

``cost_windows``: the completed intervals of billing events (by their ``timestamp``), as
``sync_windows`` is for a target's requests. ``cost_state``: one row, whether cost is being
mirrored (``ok``), refused by the API (``refused``: the key lacks ADMIN scope) or failed,
why, and when prices and usage totals were last checked. ``usage_checks``: fal's usage
totals per day and endpoint as the last check fetched them, beside what the mirror's
billing events summed to then. Nothing here touches the existing tables: the downgrade
drops the three.
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

INSTANT = sa.Text().with_variant(postgresql.TIMESTAMP(timezone=True), "postgresql")
KEY = sa.Text().with_variant(postgresql.TEXT(collation="C"), "postgresql")

revision = "0014"
down_revision = "0013"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "cost_windows",
        sa.Column("window_start", INSTANT, primary_key=True),
        sa.Column("window_end", INSTANT, nullable=False),
        sa.Column("completed_at", INSTANT, nullable=False),
    )
    op.create_table(
        "cost_state",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("state", sa.Text, nullable=False),
        sa.Column("reason", sa.Text),
        sa.Column("checked_at", INSTANT, nullable=False),
        sa.Column("ok_at", INSTANT),
        sa.Column("prices_checked_at", INSTANT),
        sa.Column("usage_checked_at", INSTANT),
    )
    op.create_table(
        "usage_checks",
        sa.Column("day", sa.Text, primary_key=True),
        sa.Column("endpoint_id", KEY, primary_key=True),
        sa.Column("usage_nano_usd", sa.BigInteger, nullable=False),
        sa.Column("mirror_nano_usd", sa.BigInteger, nullable=False),
        sa.Column("checked_at", INSTANT, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("usage_checks")
    op.drop_table("cost_state")
    op.drop_table("cost_windows")
