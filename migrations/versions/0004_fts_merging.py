"""Full-text index tuned for bulk ingest: merge segments 16 at a time, 16 KB leaf pages.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-28

FTS5 writes each transaction's new terms as a new segment and merges segments in the
background of later writes. With its defaults (``automerge`` 4: merge as soon as four
segments share a level; ``pgsz`` 4050-byte leaf pages) a sync spends much of its time
re-merging what it has just written. With 16 and 16,000 the same index is built with far
less merge work: ingest of 200,000 new rows through ``Store.upsert`` goes from ~34,000 to
~42,000 rows/s (``bench/ingest_bench.py``; the A/B of each setting is in
``docs/benchmarks.md``), searches read as fast (the same number of segments within a few
percent, 0.4-3.4 ms per search on 200,000 rows either way) and the index is the same size.

Only the index's settings change (rows in ``requests_fts_config``; FTS5 reads them on its
next use): no rebuild, instant on any size. PostgreSQL has no FTS5 index: nothing to do.
"""

from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

#: FTS5's own defaults, restored by the downgrade
_DEFAULTS = {"automerge": 4, "pgsz": 4050}
_TUNED = {"automerge": 16, "pgsz": 16000}


def _configure(values: dict[str, int]) -> None:
    for key, value in values.items():
        op.execute(
            f"INSERT INTO requests_fts (requests_fts, rank) VALUES ('{key}', {int(value)})"
        )


def upgrade() -> None:
    if op.get_bind().dialect.name == "sqlite":
        _configure(_TUNED)


def downgrade() -> None:
    if op.get_bind().dialect.name == "sqlite":
        _configure(_DEFAULTS)
