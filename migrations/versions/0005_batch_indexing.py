"""A sync indexes and summarizes the rows it inserts once per batch, not row by row.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-29

Until now the two insert triggers on ``requests`` did their work one row at a time:
``requests_fts_ai`` added each new row to the full-text index, ``requests_summary_ai`` added
it to its hour of ``summary_hourly``. A sync inserts thousands of rows per transaction, and
the same work done once per batch is cheaper: one ``INSERT INTO requests_fts … SELECT`` over
the batch's new rows, and one grouped ``INSERT INTO summary_hourly … SELECT … GROUP BY`` that
adds each hour's sums at once (``bench/ingest_bench.py``: the row "with revision 0004's
row-by-row insert triggers").

The triggers stay, and still do their work for every other writer: the ``sqlite3`` shell, a
script, ``mirror copy``. They now stand aside only while ``sync_batch`` has a row, and the
only writer that puts one there is ``Store.upsert``, inside its own transaction, where
nobody else can see it: it inserts the row, upserts the batch, indexes and summarizes the
rows it inserted (rowid above the largest before the batch; ``requests`` has no
AUTOINCREMENT and the transaction holds the write lock, so exactly those), and deletes the
row again before its transaction commits. A crash or a kill rolls all of it back together.
So ``sync_batch`` is empty in every committed state, and the index and the summary stay
exactly what the row-by-row triggers would have made (``tests/query/test_maintenance.py``
compares both with a recomputation after random histories and after failed batches).

The update and delete triggers are unchanged: a sync updates few rows. PostgreSQL keeps its
trigger function (its upsert is a different path): nothing to do there.
"""

from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

#: what the insert triggers wait for: no batch of ``Store.upsert`` is in progress
_NO_BATCH = "NOT EXISTS (SELECT 1 FROM sync_batch)"

_HOUR = "substr(NEW.ended_at, 1, 13) || ':00:00Z'"
_MICRO = "CAST(round({x} * 1000000) AS INTEGER)"


def _triggers(gate: str) -> list[str]:
    """The two insert triggers as 0002 (``requests_summary_ai``) and 0004
    (``requests_fts_ai``) made them, with ``gate`` added to their WHEN clause."""
    fts_when = f"WHEN {gate} " if gate else ""
    summary_gate = f" AND {gate}" if gate else ""
    return [
        "DROP TRIGGER requests_fts_ai",
        "DROP TRIGGER requests_summary_ai",
        f"""CREATE TRIGGER requests_fts_ai AFTER INSERT ON requests {fts_when}BEGIN
            INSERT INTO requests_fts (rowid, json_input, json_output)
            VALUES (NEW.rowid, NEW.json_input, NEW.json_output);
        END""",
        f"""CREATE TRIGGER requests_summary_ai AFTER INSERT ON requests
        WHEN NEW.ended_at IS NOT NULL{summary_gate} BEGIN
            INSERT INTO summary_hourly (hour, endpoint_id, status, requests, durations,
                                        duration_us, billed, billable_micro)
            SELECT {_HOUR}, NEW.endpoint_id, NEW.status, 1,
                   NEW.duration IS NOT NULL, COALESCE({_MICRO.format(x="NEW.duration")}, 0),
                   NEW.billable_units IS NOT NULL,
                   COALESCE({_MICRO.format(x="NEW.billable_units")}, 0)
            WHERE NEW.ended_at IS NOT NULL
            ON CONFLICT (hour, endpoint_id, status) DO UPDATE SET
                requests = requests + 1,
                durations = durations + excluded.durations,
                duration_us = duration_us + excluded.duration_us,
                billed = billed + excluded.billed,
                billable_micro = billable_micro + excluded.billable_micro;
        END""",
    ]


def upgrade() -> None:
    if op.get_bind().dialect.name != "sqlite":
        return
    # one row at most, and only inside Store.upsert's transaction
    op.execute("CREATE TABLE sync_batch (batch INTEGER PRIMARY KEY CHECK (batch = 1))")
    for statement in _triggers(_NO_BATCH):
        op.execute(statement)


def downgrade() -> None:
    if op.get_bind().dialect.name != "sqlite":
        return
    for statement in _triggers(""):
        op.execute(statement)
    op.execute("DROP TABLE sync_batch")
