"""What each target was asked to cover, and the API's clock as each run saw it.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-02

``sync_targets.requested_from``: the earliest start a user asked for (``--since``, or the
default age of a first sync), stored before any page is fetched, so that a first backfill
interrupted before its oldest windows completed is finished by later runs instead of being
forgotten. A file written before this revision records nothing of what was asked: it takes
what it covers today (its earliest completed window), and a target with no completed window
keeps NULL, which the next sync fills in as a first sync would.

``sync_runs.clock_skew``: this machine's clock minus the API's (from the ``Date`` header of
its answers), in seconds, as the run measured it; NULL where nothing was measured.
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

INSTANT = sa.Text().with_variant(postgresql.TIMESTAMP(timezone=True), "postgresql")

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("sync_targets") as batch:
        batch.add_column(sa.Column("requested_from", INSTANT))
    with op.batch_alter_table("sync_runs") as batch:
        batch.add_column(sa.Column("clock_skew", sa.Float))
    op.execute(
        "UPDATE sync_targets SET requested_from = (SELECT min(w.window_start) FROM sync_windows w"
        " WHERE w.target = sync_targets.target)"
    )


def downgrade() -> None:
    with op.batch_alter_table("sync_runs") as batch:
        batch.drop_column("clock_skew")
    with op.batch_alter_table("sync_targets") as batch:
        batch.drop_column("requested_from")
