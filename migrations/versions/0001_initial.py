"""The requests table and the sync state.

Revision ID: 0001
Revises:
Create Date: 2026-11-28
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

#: a UTC instant: canonical ISO-8601 text on SQLite (text order is time order), timestamptz on
#: PostgreSQL; a JSON document: its text on SQLite, jsonb on PostgreSQL (see mirror.schema)
INSTANT = sa.Text().with_variant(postgresql.TIMESTAMP(timezone=True), "postgresql")
JSON = sa.Text().with_variant(postgresql.JSONB(), "postgresql")
#: ids compared by byte order on both (SQLite's BINARY; PostgreSQL's "C", whatever the
#: database's collation): app-id ranges (`owner/app/` .. `owner/app0`) rely on it
KEY = sa.Text().with_variant(postgresql.TEXT(collation="C"), "postgresql")

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "requests",
        sa.Column("request_id", KEY, primary_key=True),
        sa.Column("endpoint_id", KEY, nullable=False),
        sa.Column("runner_id", sa.Text),
        sa.Column("sent_at", INSTANT, nullable=False),
        sa.Column("started_at", INSTANT),
        sa.Column("ended_at", INSTANT),
        sa.Column("status_code", sa.Integer),
        sa.Column("duration", sa.Float),
        sa.Column("billable_units", sa.Float),
        sa.Column("json_input", JSON),
        sa.Column("json_output", JSON),
        sa.Column("status", sa.Text, nullable=False),
        sa.Column("first_seen_at", INSTANT, nullable=False),
        sa.Column("last_changed_at", INSTANT, nullable=False),
    )
    # the everyday query path: one endpoint over a time range, covering status and duration
    op.create_index(
        "ix_requests_endpoint_ended",
        "requests",
        ["endpoint_id", "ended_at", "status_code", "duration"],
    )
    op.create_index("ix_requests_ended_at", "requests", ["ended_at"])
    # rows still running: refreshed by every sync until they end
    op.create_index(
        "ix_requests_unfinished",
        "requests",
        ["endpoint_id", "sent_at"],
        sqlite_where=sa.text("ended_at IS NULL"),
        postgresql_where=sa.text("ended_at IS NULL"),
    )
    op.create_table(
        "sync_targets",
        sa.Column("target", sa.Text, primary_key=True),
        sa.Column("added_at", INSTANT, nullable=False),
    )
    op.create_table(
        "sync_windows",
        sa.Column("target", sa.Text, primary_key=True),
        sa.Column("window_start", INSTANT, primary_key=True),
        sa.Column("window_end", INSTANT, nullable=False),
        sa.Column("completed_at", INSTANT, nullable=False),
    )
    op.create_table(
        "sync_runs",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("started_at", INSTANT, nullable=False),
        sa.Column("ended_at", INSTANT),
        sa.Column("outcome", sa.Text, nullable=False),
        sa.Column("targets", sa.Text, nullable=False),
        sa.Column("pages", sa.Integer, nullable=False, server_default="0"),
        sa.Column("api_calls", sa.Integer, nullable=False, server_default="0"),
        sa.Column("rows_inserted", sa.Integer, nullable=False, server_default="0"),
        sa.Column("rows_updated", sa.Integer, nullable=False, server_default="0"),
        sa.Column("error", sa.Text),
    )


def downgrade() -> None:
    op.drop_table("sync_runs")
    op.drop_table("sync_windows")
    op.drop_table("sync_targets")
    op.drop_index("ix_requests_unfinished", table_name="requests")
    op.drop_index("ix_requests_ended_at", table_name="requests")
    op.drop_index("ix_requests_endpoint_ended", table_name="requests")
    op.drop_table("requests")
