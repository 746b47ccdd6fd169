"""Which of fal's two request histories each sync target is.

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-02

``sync_targets.history``: ``serverless`` (an app of the key's account, listed by
``/serverless/requests/by-endpoint``; every existing target) or ``model`` (one of fal's
hosted models, listed by ``/models/requests/by-endpoint``). A bare ``mirror sync`` walks
each stored target through the operation of its history. A plain ``ALTER TABLE ADD
COLUMN`` on both backends.
"""

from alembic import op

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None


_LOG = {
    "sqlite": """CREATE VIEW request_log AS
    SELECT rowid AS rowid, request_id, endpoint_id, status, status_code,
           sent_at, started_at, ended_at,
           round((julianday(started_at) - julianday(sent_at)) * 86400.0, 3) AS queued_s,
           duration AS duration_s, billable_units,
           CASE WHEN json_valid(json_input) THEN json_extract(json_input, '$.prompt') END
               AS prompt,
           runner_id, json_input, json_output, first_seen_at, last_changed_at{more}
    FROM requests""",
    "postgresql": """CREATE VIEW request_log AS
    SELECT request_id, endpoint_id, status, status_code, sent_at, started_at, ended_at,
           round(extract(epoch FROM started_at - sent_at), 3) AS queued_s,
           duration AS duration_s, billable_units,
           CASE WHEN jsonb_typeof(json_input) = 'object' THEN json_input ->> 'prompt' END
               AS prompt,
           runner_id, json_input, json_output, first_seen_at, last_changed_at{more}
    FROM requests""",
}


def _request_log(more: str) -> None:
    op.execute("DROP VIEW request_log")
    op.execute(_LOG[op.get_bind().dialect.name].format(more=more))


def upgrade() -> None:
    op.execute(
        "ALTER TABLE sync_targets ADD COLUMN history TEXT NOT NULL DEFAULT 'serverless' "
        "CHECK (history IN ('serverless', 'model'))"
    )
    _request_log(", history")


def downgrade() -> None:
    _request_log("")
    op.execute("ALTER TABLE sync_targets DROP COLUMN history")
