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


def upgrade() -> None:
    op.execute(
        "ALTER TABLE sync_targets ADD COLUMN history TEXT NOT NULL DEFAULT 'serverless' "
        "CHECK (history IN ('serverless', 'model'))"
    )


def downgrade() -> None:
    op.execute("ALTER TABLE sync_targets DROP COLUMN history")
