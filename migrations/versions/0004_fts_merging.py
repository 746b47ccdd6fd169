"""Full-text index tuned for bulk ingest: no per-row sizes, fewer and larger merges.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-28

``requests_fts`` (revision 0002) is rebuilt with the same columns, tokenizer, content table
and triggers, and three FTS5 settings that make a sync's writes cheaper:

- ``columnsize=0``: no ``requests_fts_docsize`` row per request (only ``bm25()`` ranking reads
  it, and mirror, its canned queries and Datasette's table view order by time; ``bm25()``
  still works, recomputing sizes from the content table);
- ``automerge`` 16 (FTS5's default is 4): each transaction's terms form a new segment, and
  segments are merged once 16 share a level instead of 4, so what a sync has just written is
  re-merged far less often;
- ``pgsz`` 16,000 (default 4,050): larger leaf pages, half as many ``requests_fts_data`` rows.

Measured with ``bench/ingest_bench.py --runs 5`` (200,000 new rows through ``Store.upsert``,
10,000 per transaction): 30,451 rows/s with 0003's index, 37,373 with this one (1.23x);
each setting alone, and searches (0.4-3.3 ms on 200,000 rows either way, the index the same
size): docs/benchmarks.md. A row is still indexed exactly once: ``integrity-check`` with
rank 1 compares the index against ``requests`` (``tests/query/test_maintenance.py`` shows it
catches a row indexed twice).

Upgrading rebuilds the index from ``requests`` once (FTS5's ``rebuild``: 1.4 s for 200,000
requests on a 2-core machine), inside the migration's transaction: a crash or a kill
leaves 0003's index as it was. PostgreSQL has no FTS5 index: nothing to do there.
"""

from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

_TUNED = {"automerge": 16, "pgsz": 16000}


def _index(*, tuned: bool) -> list[str]:
    """The statements that (re)create ``requests_fts`` and its triggers, then fill it."""
    options = ", columnsize=0" if tuned else ""
    settings = [
        f"INSERT INTO requests_fts (requests_fts, rank) VALUES ('{key}', {value})"
        for key, value in (_TUNED.items() if tuned else ())
    ]
    return [
        "DROP TRIGGER requests_fts_au",
        "DROP TRIGGER requests_fts_ad",
        "DROP TRIGGER requests_fts_ai",
        "DROP TABLE requests_fts",
        f"""CREATE VIRTUAL TABLE requests_fts USING fts5(
            json_input, json_output,
            content="requests", content_rowid="rowid",
            tokenize="unicode61 remove_diacritics 2"{options})""",
        *settings,
        """CREATE TRIGGER requests_fts_ai AFTER INSERT ON requests BEGIN
            INSERT INTO requests_fts (rowid, json_input, json_output)
            VALUES (NEW.rowid, NEW.json_input, NEW.json_output);
        END""",
        """CREATE TRIGGER requests_fts_ad AFTER DELETE ON requests BEGIN
            INSERT INTO requests_fts (requests_fts, rowid, json_input, json_output)
            VALUES ('delete', OLD.rowid, OLD.json_input, OLD.json_output);
        END""",
        """CREATE TRIGGER requests_fts_au AFTER UPDATE OF json_input, json_output ON requests
        WHEN OLD.json_input IS NOT NEW.json_input OR OLD.json_output IS NOT NEW.json_output
        BEGIN
            INSERT INTO requests_fts (requests_fts, rowid, json_input, json_output)
            VALUES ('delete', OLD.rowid, OLD.json_input, OLD.json_output);
            INSERT INTO requests_fts (rowid, json_input, json_output)
            VALUES (NEW.rowid, NEW.json_input, NEW.json_output);
        END""",
        "INSERT INTO requests_fts (requests_fts) VALUES ('rebuild')",
    ]


def upgrade() -> None:
    if op.get_bind().dialect.name == "sqlite":
        for statement in _index(tuned=True):
            op.execute(statement)


def downgrade() -> None:
    if op.get_bind().dialect.name == "sqlite":
        for statement in _index(tuned=False):
            op.execute(statement)
