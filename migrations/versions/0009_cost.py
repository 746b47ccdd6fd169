"""What requests cost: billing events, prices over time, and which history a request is of.

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-02

``billing_events``: one row per billed request, keyed by ``request_id`` (fal bills a
request once), with fal's fields; ``cost_estimate_nano_usd`` is an integer of nano-USD so
that sums are exact. No foreign key to ``requests``: an event may arrive before its
request does, and is kept.

``prices``: each endpoint's price per unit as fal quoted it to the key, one row per price
seen (``seen_at``), a new row only when it changed; ``checked_at`` is the last time that
price was seen again. Rows are never updated otherwise, so past prices stay.

``requests.history``: ``serverless`` (the calls to the user's own apps, every existing
row) or ``model`` (the calls the key made to fal's hosted models); a plain ``ALTER TABLE
ADD COLUMN`` on both backends, so the table, its rowids, its full-text index and its
triggers stay as they are.
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

INSTANT = sa.Text().with_variant(postgresql.TIMESTAMP(timezone=True), "postgresql")
KEY = sa.Text().with_variant(postgresql.TEXT(collation="C"), "postgresql")

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "billing_events",
        sa.Column("request_id", KEY, primary_key=True),
        sa.Column("endpoint_id", KEY, nullable=False),
        sa.Column("timestamp", INSTANT, nullable=False),
        sa.Column("output_units", sa.Float),
        sa.Column("unit_price", sa.Float),
        sa.Column("percent_discount", sa.Float),
        sa.Column("cost_subtotal", sa.Float, nullable=False),
        sa.Column("cost_discount", sa.Float, nullable=False),
        sa.Column("cost_total", sa.Float, nullable=False),
        sa.Column("cost_estimate_nano_usd", sa.BigInteger, nullable=False),
        sa.Column("auth_method", sa.Text),
        sa.Column("api_key_id", sa.Text),
        sa.Column("login_username", sa.Text),
        sa.Column("first_seen_at", INSTANT, nullable=False),
        sa.Column("last_changed_at", INSTANT, nullable=False),
    )
    # spend over a time range, and per endpoint over a time range
    op.create_index("ix_billing_events_timestamp", "billing_events", ["timestamp"])
    op.create_index(
        "ix_billing_events_endpoint_timestamp", "billing_events", ["endpoint_id", "timestamp"]
    )
    op.create_table(
        "prices",
        sa.Column("endpoint_id", KEY, primary_key=True),
        sa.Column("seen_at", INSTANT, primary_key=True),
        sa.Column("unit", sa.Text, nullable=False),
        sa.Column("unit_price", sa.Float, nullable=False),
        sa.Column("currency", sa.Text, nullable=False),
        sa.Column("checked_at", INSTANT, nullable=False),
    )
    op.execute(
        "ALTER TABLE requests ADD COLUMN history TEXT NOT NULL DEFAULT 'serverless' "
        "CHECK (history IN ('serverless', 'model'))"
    )


def downgrade() -> None:
    op.execute("ALTER TABLE requests DROP COLUMN history")
    op.drop_table("prices")
    op.drop_index("ix_billing_events_endpoint_timestamp", table_name="billing_events")
    op.drop_index("ix_billing_events_timestamp", table_name="billing_events")
    op.drop_table("billing_events")
