"""Requests too big for a page with their payloads, and the page sizes learned.

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-02

``oversized_requests``: one row per request a sync stored without its payloads because a
page of that one request was over the body cap with them (``mirror status`` lists them).
``sync_page_limits``: stretches of a target's history whose pages had to be smaller than
100 requests to stay under the cap, so the next walk there starts small. Nothing here
touches the existing tables: the downgrade drops the two.
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

INSTANT = sa.Text().with_variant(postgresql.TIMESTAMP(timezone=True), "postgresql")
KEY = sa.Text().with_variant(postgresql.TEXT(collation="C"), "postgresql")

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "sync_page_limits",
        sa.Column("target", sa.Text, primary_key=True),
        sa.Column("window_start", INSTANT, primary_key=True),
        sa.Column("window_end", INSTANT, primary_key=True),
        sa.Column("page_limit", sa.Integer, nullable=False),
        sa.Column("learned_at", INSTANT, nullable=False),
    )
    op.create_table(
        "oversized_requests",
        sa.Column("request_id", KEY, primary_key=True),
        sa.Column("endpoint_id", KEY, nullable=False),
        sa.Column("sent_at", INSTANT, nullable=False),
        sa.Column("page_bytes", sa.BigInteger),
        sa.Column("cap_bytes", sa.BigInteger, nullable=False),
        sa.Column("first_seen_at", INSTANT, nullable=False),
        sa.Column("last_seen_at", INSTANT, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("oversized_requests")
    op.drop_table("sync_page_limits")
