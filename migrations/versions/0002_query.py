"""Query side: indexes for the query paths, full-text search, hourly summaries, views.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-28

What this adds, and why each piece is shaped the way it is:

- ``ix_requests_endpoint_ended`` is widened with ``status`` and ``billable_units`` (same name,
  same leading columns), so ``mirror stats`` over every row reads only this index and never
  the table, whose rows carry the payloads (~0.9 KB each).
- ``ix_requests_status_ended`` (status over time, for "every error last night" across
  endpoints) and ``ix_requests_sent_at`` (``--time-field sent_at``). Kept to two: every index
  slows the sync's ingest.
- ``requests_fts``: an FTS5 *external-content* table over ``json_input`` / ``json_output``
  (the payload text is stored once, in ``requests``), named and declared
  (``content="requests"``) the way Datasette and sqlite-utils detect it. Triggers keep it
  exact: the store's upsert UPDATEs a row only when a value changed, and the update trigger
  reindexes only when a payload actually differs, deleting the old entry first, so a row is
  never indexed twice. Every row has its entry, an empty one while it has no payload, so
  the index is exactly what FTS5's ``rebuild`` would make (and ``integrity-check`` can
  verify it against the table). FTS rows are keyed by
  the ``requests`` rowid; SQLite's VACUUM keeps those here, and should a rowid ever move,
  ``INSERT INTO requests_fts(requests_fts) VALUES('rebuild')`` re-derives the whole index.
- ``summary_hourly``: per hour (of ``ended_at``), endpoint and status, the count of requests
  and the sums of durations and billable units, maintained by triggers on every
  insert/update/delete, so the summaries stay instant on tens of millions of rows. Sums are
  kept as integers (microseconds, micro-units) because integer sums stay exact under
  subtraction, where float sums would drift. Unfinished requests (no ``ended_at``) are
  counted once they end.
- Views for browsing: ``request_log`` (readable requests), ``hourly_summary``,
  ``daily_summary`` and ``daily_usage``.

On PostgreSQL the same pieces, in its own terms: the text search is a GIN index over
``to_tsvector('simple', …)`` of both payloads (the expression ``mirror.query`` searches with),
``summary_hourly`` is kept by one plpgsql trigger function (the same integer sums), and the
views have the same names and columns (``request_log`` without SQLite's ``rowid``).
"""

from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

#: the hour bucket of a timestamp, as the canonical text of the hour's first instant
_HOUR = "substr({t}, 1, 13) || ':00:00Z'"
_MICRO = "CAST(round({x} * 1000000) AS INTEGER)"


def _summary_add(ref: str) -> str:
    """One row's contribution added to its hour (``ref`` is NEW or OLD)."""
    return f"""
    INSERT INTO summary_hourly (hour, endpoint_id, status, requests, durations, duration_us,
                                billed, billable_micro)
    SELECT {_HOUR.format(t=f"{ref}.ended_at")}, {ref}.endpoint_id, {ref}.status, 1,
           {ref}.duration IS NOT NULL, COALESCE({_MICRO.format(x=f"{ref}.duration")}, 0),
           {ref}.billable_units IS NOT NULL,
           COALESCE({_MICRO.format(x=f"{ref}.billable_units")}, 0)
    WHERE {ref}.ended_at IS NOT NULL
    ON CONFLICT (hour, endpoint_id, status) DO UPDATE SET
        requests = requests + 1,
        durations = durations + excluded.durations,
        duration_us = duration_us + excluded.duration_us,
        billed = billed + excluded.billed,
        billable_micro = billable_micro + excluded.billable_micro;
    """


def _summary_remove(ref: str) -> str:
    """One row's contribution taken back out of its hour; an emptied hour row goes away."""
    key = (
        f"hour = {_HOUR.format(t=f'{ref}.ended_at')} AND endpoint_id = {ref}.endpoint_id "
        f"AND status = {ref}.status"
    )
    return f"""
    UPDATE summary_hourly SET
        requests = requests - 1,
        durations = durations - ({ref}.duration IS NOT NULL),
        duration_us = duration_us - COALESCE({_MICRO.format(x=f"{ref}.duration")}, 0),
        billed = billed - ({ref}.billable_units IS NOT NULL),
        billable_micro = billable_micro - COALESCE({_MICRO.format(x=f"{ref}.billable_units")}, 0)
    WHERE {ref}.ended_at IS NOT NULL AND {key};
    DELETE FROM summary_hourly WHERE {ref}.ended_at IS NOT NULL AND {key} AND requests = 0;
    """


SQLITE_UP = [
    # ---- full-text search over the payloads
    """CREATE VIRTUAL TABLE requests_fts USING fts5(
        json_input, json_output,
        content="requests", content_rowid="rowid",
        tokenize="unicode61 remove_diacritics 2")""",
    """CREATE TRIGGER requests_fts_ai AFTER INSERT ON requests BEGIN
        INSERT INTO requests_fts (rowid, json_input, json_output)
        VALUES (NEW.rowid, NEW.json_input, NEW.json_output);
    END""",
    """CREATE TRIGGER requests_fts_ad AFTER DELETE ON requests BEGIN
        INSERT INTO requests_fts (requests_fts, rowid, json_input, json_output)
        VALUES ('delete', OLD.rowid, OLD.json_input, OLD.json_output);
    END""",
    """CREATE TRIGGER requests_fts_au AFTER UPDATE OF json_input, json_output ON requests
    WHEN OLD.json_input IS NOT NEW.json_input OR OLD.json_output IS NOT NEW.json_output BEGIN
        INSERT INTO requests_fts (requests_fts, rowid, json_input, json_output)
        VALUES ('delete', OLD.rowid, OLD.json_input, OLD.json_output);
        INSERT INTO requests_fts (rowid, json_input, json_output)
        VALUES (NEW.rowid, NEW.json_input, NEW.json_output);
    END""",
    "INSERT INTO requests_fts (requests_fts) VALUES ('rebuild')",
    # ---- hourly summary, maintained row by row
    """CREATE TABLE summary_hourly (
        hour TEXT NOT NULL,
        endpoint_id TEXT NOT NULL,
        status TEXT NOT NULL,
        requests INTEGER NOT NULL,
        durations INTEGER NOT NULL,
        duration_us INTEGER NOT NULL,
        billed INTEGER NOT NULL,
        billable_micro INTEGER NOT NULL,
        PRIMARY KEY (hour, endpoint_id, status)
    ) WITHOUT ROWID""",
    f"""INSERT INTO summary_hourly
    SELECT {_HOUR.format(t="ended_at")} AS h, endpoint_id, status, count(*),
           count(duration), COALESCE(sum({_MICRO.format(x="duration")}), 0),
           count(billable_units), COALESCE(sum({_MICRO.format(x="billable_units")}), 0)
    FROM requests WHERE ended_at IS NOT NULL GROUP BY h, endpoint_id, status""",
    f"""CREATE TRIGGER requests_summary_ai AFTER INSERT ON requests
    WHEN NEW.ended_at IS NOT NULL BEGIN {_summary_add("NEW")} END""",
    f"""CREATE TRIGGER requests_summary_ad AFTER DELETE ON requests
    WHEN OLD.ended_at IS NOT NULL BEGIN {_summary_remove("OLD")} END""",
    f"""CREATE TRIGGER requests_summary_au
    AFTER UPDATE OF endpoint_id, ended_at, status, duration, billable_units ON requests
    WHEN OLD.endpoint_id IS NOT NEW.endpoint_id OR OLD.ended_at IS NOT NEW.ended_at
      OR OLD.status IS NOT NEW.status OR OLD.duration IS NOT NEW.duration
      OR OLD.billable_units IS NOT NEW.billable_units
    BEGIN {_summary_remove("OLD")} {_summary_add("NEW")} END""",
    # ---- views for browsing (sqlite3 shell, Datasette)
    """CREATE VIEW request_log AS
    SELECT rowid AS rowid, request_id, endpoint_id, status, status_code,
           sent_at, started_at, ended_at,
           round((julianday(started_at) - julianday(sent_at)) * 86400.0, 3) AS queued_s,
           duration AS duration_s, billable_units,
           CASE WHEN json_valid(json_input) THEN json_extract(json_input, '$.prompt') END
               AS prompt,
           runner_id, json_input, json_output, first_seen_at, last_changed_at
    FROM requests""",
    """CREATE VIEW hourly_summary AS
    SELECT hour, endpoint_id, status, requests,
           round(duration_us / 1e6, 6) AS duration_s_total,
           CASE WHEN durations > 0 THEN round(duration_us / 1e6 / durations, 3) END
               AS duration_s_avg,
           round(billable_micro / 1e6, 6) AS billable_units
    FROM summary_hourly""",
    """CREATE VIEW daily_summary AS
    SELECT substr(hour, 1, 10) AS day, endpoint_id, status, sum(requests) AS requests,
           round(sum(duration_us) / 1e6, 6) AS duration_s_total,
           CASE WHEN sum(durations) > 0
                THEN round(sum(duration_us) / 1e6 / sum(durations), 3) END AS duration_s_avg,
           round(sum(billable_micro) / 1e6, 6) AS billable_units
    FROM summary_hourly GROUP BY day, endpoint_id, status""",
    """CREATE VIEW daily_usage AS
    SELECT substr(hour, 1, 10) AS day, endpoint_id, sum(requests) AS requests,
           sum(CASE WHEN status = 'success' THEN requests ELSE 0 END) AS success,
           sum(CASE WHEN status = 'user_error' THEN requests ELSE 0 END) AS user_error,
           sum(CASE WHEN status = 'error' THEN requests ELSE 0 END) AS error,
           round(1.0 * sum(CASE WHEN status = 'error' THEN requests ELSE 0 END)
                 / sum(requests), 4) AS error_rate,
           round(1.0 * sum(CASE WHEN status = 'user_error' THEN requests ELSE 0 END)
                 / sum(requests), 4) AS user_error_rate,
           CASE WHEN sum(durations) > 0
                THEN round(sum(duration_us) / 1e6 / sum(durations), 3) END AS duration_s_avg,
           round(sum(billable_micro) / 1e6, 6) AS billable_units
    FROM summary_hourly GROUP BY day, endpoint_id""",
]

SQLITE_DOWN = [
    "DROP VIEW daily_usage",
    "DROP VIEW daily_summary",
    "DROP VIEW hourly_summary",
    "DROP VIEW request_log",
    "DROP TRIGGER requests_summary_au",
    "DROP TRIGGER requests_summary_ad",
    "DROP TRIGGER requests_summary_ai",
    "DROP TABLE summary_hourly",
    "DROP TRIGGER requests_fts_au",
    "DROP TRIGGER requests_fts_ad",
    "DROP TRIGGER requests_fts_ai",
    "DROP TABLE requests_fts",
]


# ---- PostgreSQL

#: the searched document; mirror.query.PG_SEARCH_DOCUMENT is this same expression
_PG_DOCUMENT = (
    "to_tsvector('simple'::regconfig, "
    "COALESCE(json_input::text, '') || ' ' || COALESCE(json_output::text, ''))"
)
#: float -> integer millionths, rounding half away from zero exactly as SQLite's round()
_PG_MICRO = "trunc({x} * 1000000 + CASE WHEN {x} < 0 THEN -0.5 ELSE 0.5 END)::bigint"
_PG_HOUR = "date_trunc('hour', {t}, 'UTC')"

PG_UP = [
    f"CREATE INDEX ix_requests_search ON requests USING gin ({_PG_DOCUMENT})",
    """CREATE TABLE summary_hourly (
        hour timestamptz NOT NULL,
        endpoint_id text NOT NULL,
        status text NOT NULL,
        requests bigint NOT NULL,
        durations bigint NOT NULL,
        duration_us bigint NOT NULL,
        billed bigint NOT NULL,
        billable_micro bigint NOT NULL,
        PRIMARY KEY (hour, endpoint_id, status)
    )""",
    f"""INSERT INTO summary_hourly
    SELECT {_PG_HOUR.format(t="ended_at")} AS h, endpoint_id, status, count(*),
           count(duration), COALESCE(sum({_PG_MICRO.format(x="duration")}), 0),
           count(billable_units), COALESCE(sum({_PG_MICRO.format(x="billable_units")}), 0)
    FROM requests WHERE ended_at IS NOT NULL GROUP BY h, endpoint_id, status""",
    f"""CREATE FUNCTION requests_summary() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        IF TG_OP IN ('UPDATE', 'DELETE') AND OLD.ended_at IS NOT NULL THEN
            UPDATE summary_hourly SET
                requests = requests - 1,
                durations = durations - (OLD.duration IS NOT NULL)::int,
                duration_us = duration_us - COALESCE({_PG_MICRO.format(x="OLD.duration")}, 0),
                billed = billed - (OLD.billable_units IS NOT NULL)::int,
                billable_micro = billable_micro
                    - COALESCE({_PG_MICRO.format(x="OLD.billable_units")}, 0)
            WHERE hour = {_PG_HOUR.format(t="OLD.ended_at")}
              AND endpoint_id = OLD.endpoint_id AND status = OLD.status;
            DELETE FROM summary_hourly
            WHERE hour = {_PG_HOUR.format(t="OLD.ended_at")}
              AND endpoint_id = OLD.endpoint_id AND status = OLD.status AND requests = 0;
        END IF;
        IF TG_OP IN ('INSERT', 'UPDATE') AND NEW.ended_at IS NOT NULL THEN
            INSERT INTO summary_hourly AS s VALUES (
                {_PG_HOUR.format(t="NEW.ended_at")}, NEW.endpoint_id, NEW.status, 1,
                (NEW.duration IS NOT NULL)::int,
                COALESCE({_PG_MICRO.format(x="NEW.duration")}, 0),
                (NEW.billable_units IS NOT NULL)::int,
                COALESCE({_PG_MICRO.format(x="NEW.billable_units")}, 0))
            ON CONFLICT (hour, endpoint_id, status) DO UPDATE SET
                requests = s.requests + 1,
                durations = s.durations + excluded.durations,
                duration_us = s.duration_us + excluded.duration_us,
                billed = s.billed + excluded.billed,
                billable_micro = s.billable_micro + excluded.billable_micro;
        END IF;
        RETURN NULL;
    END
    $$""",
    """CREATE TRIGGER requests_summary_insert_delete AFTER INSERT OR DELETE ON requests
    FOR EACH ROW EXECUTE FUNCTION requests_summary()""",
    """CREATE TRIGGER requests_summary_update
    AFTER UPDATE OF endpoint_id, ended_at, status, duration, billable_units ON requests
    FOR EACH ROW WHEN (OLD.endpoint_id IS DISTINCT FROM NEW.endpoint_id
        OR OLD.ended_at IS DISTINCT FROM NEW.ended_at OR OLD.status IS DISTINCT FROM NEW.status
        OR OLD.duration IS DISTINCT FROM NEW.duration
        OR OLD.billable_units IS DISTINCT FROM NEW.billable_units)
    EXECUTE FUNCTION requests_summary()""",
    """CREATE VIEW request_log AS
    SELECT request_id, endpoint_id, status, status_code, sent_at, started_at, ended_at,
           round(extract(epoch FROM started_at - sent_at), 3) AS queued_s,
           duration AS duration_s, billable_units,
           CASE WHEN jsonb_typeof(json_input) = 'object' THEN json_input ->> 'prompt' END
               AS prompt,
           runner_id, json_input, json_output, first_seen_at, last_changed_at
    FROM requests""",
    """CREATE VIEW hourly_summary AS
    SELECT hour, endpoint_id, status, requests,
           round(duration_us / 1e6, 6) AS duration_s_total,
           CASE WHEN durations > 0 THEN round(duration_us / 1e6 / durations, 3) END
               AS duration_s_avg,
           round(billable_micro / 1e6, 6) AS billable_units
    FROM summary_hourly""",
    """CREATE VIEW daily_summary AS
    SELECT to_char(hour AT TIME ZONE 'UTC', 'YYYY-MM-DD') AS day, endpoint_id, status,
           sum(requests) AS requests,
           round(sum(duration_us) / 1e6, 6) AS duration_s_total,
           CASE WHEN sum(durations) > 0
                THEN round(sum(duration_us) / 1e6 / sum(durations), 3) END AS duration_s_avg,
           round(sum(billable_micro) / 1e6, 6) AS billable_units
    FROM summary_hourly GROUP BY 1, endpoint_id, status""",
    """CREATE VIEW daily_usage AS
    SELECT to_char(hour AT TIME ZONE 'UTC', 'YYYY-MM-DD') AS day, endpoint_id,
           sum(requests) AS requests,
           sum(CASE WHEN status = 'success' THEN requests ELSE 0 END) AS success,
           sum(CASE WHEN status = 'user_error' THEN requests ELSE 0 END) AS user_error,
           sum(CASE WHEN status = 'error' THEN requests ELSE 0 END) AS error,
           round(1.0 * sum(CASE WHEN status = 'error' THEN requests ELSE 0 END)
                 / sum(requests), 4) AS error_rate,
           round(1.0 * sum(CASE WHEN status = 'user_error' THEN requests ELSE 0 END)
                 / sum(requests), 4) AS user_error_rate,
           CASE WHEN sum(durations) > 0
                THEN round(sum(duration_us) / 1e6 / sum(durations), 3) END AS duration_s_avg,
           round(sum(billable_micro) / 1e6, 6) AS billable_units
    FROM summary_hourly GROUP BY 1, endpoint_id""",
]

PG_DOWN = [
    "DROP VIEW daily_usage",
    "DROP VIEW daily_summary",
    "DROP VIEW hourly_summary",
    "DROP VIEW request_log",
    "DROP TRIGGER requests_summary_update ON requests",
    "DROP TRIGGER requests_summary_insert_delete ON requests",
    "DROP FUNCTION requests_summary()",
    "DROP TABLE summary_hourly",
    "DROP INDEX ix_requests_search",
]


def _run_all(statements: list[str]) -> None:
    bind = op.get_bind()
    for stmt in statements:
        # driver-level: the SQL holds ':00:00Z', which sa.text() would read as a parameter
        bind.exec_driver_sql(stmt)


def upgrade() -> None:
    op.drop_index("ix_requests_endpoint_ended", table_name="requests")
    op.create_index(
        "ix_requests_endpoint_ended",
        "requests",
        ["endpoint_id", "ended_at", "status_code", "duration", "status", "billable_units"],
    )
    op.create_index("ix_requests_status_ended", "requests", ["status", "ended_at"])
    op.create_index("ix_requests_sent_at", "requests", ["sent_at"])
    dialect = op.get_context().dialect.name
    if dialect == "sqlite":
        _run_all(SQLITE_UP)
    elif dialect == "postgresql":
        _run_all(PG_UP)


def downgrade() -> None:
    dialect = op.get_context().dialect.name
    if dialect == "sqlite":
        _run_all(SQLITE_DOWN)
    elif dialect == "postgresql":
        _run_all(PG_DOWN)
    op.drop_index("ix_requests_sent_at", table_name="requests")
    op.drop_index("ix_requests_status_ended", table_name="requests")
    op.drop_index("ix_requests_endpoint_ended", table_name="requests")
    op.create_index(
        "ix_requests_endpoint_ended",
        "requests",
        ["endpoint_id", "ended_at", "status_code", "duration"],
    )
