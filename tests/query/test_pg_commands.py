"""The offline commands on PostgreSQL: the same output as on SQLite for the same rows,
`mirror sql` only reads, search uses the GIN index, `browse` refuses in one line."""

from __future__ import annotations

import json

import pytest
import sqlalchemy as sa
from support.rows import add_targets, fill, make_rows

from mirror import query
from mirror.db import reader_engine


def one_line(result) -> str:
    lines = [ln for ln in result.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, f"expected one line on stderr, got:\n{result.stderr}"
    assert "Traceback" not in result.output
    return lines[0]


@pytest.fixture(scope="module")
def both(tmp_path_factory, pg_databases):
    """The same 600 rows in a SQLite file and in a fresh PostgreSQL database."""
    path = tmp_path_factory.mktemp("both") / "m.db"
    rows = make_rows(600, seed=9)
    fill(path, rows)
    url = pg_databases()
    fill(url, rows)
    return str(path), url


def _state(url: str) -> list[tuple]:
    engine = sa.create_engine(url)
    with engine.connect() as conn:
        out = conn.exec_driver_sql(
            "SELECT (SELECT count(*) FROM requests), (SELECT count(*) FROM sync_targets), "
            "(SELECT sum(requests) FROM summary_hourly), "
            "(SELECT count(*) FROM pg_tables WHERE schemaname = 'public'), "
            "(SELECT string_agg(request_id || status || coalesce(duration::text, ''), ',' "
            "  ORDER BY request_id) FROM requests)"
        ).all()
    engine.dispose()
    return out


# --------------------------------------------------------------------------- same output

SAME = [
    ["stats"],
    ["stats", "--by", "endpoint,day"],
    ["stats", "--by", "status,hour", "-e", "acme/flux-lora", "--since", "2026-11-26T07:00Z"],
    ["stats", "--by", "hour", "--time-field", "sent_at", "--min-duration", "1.25"],
    ["stats", "--by", "endpoint", "--search", "lighthouse dusk"],
    ["query", "-n", "0"],
    ["query", "-n", "20", "--sort", "duration", "--asc", "-s", "error", "-s", "user_error"],
    ["query", "-n", "0", "--search", "harbor", "-e", "acme/flux-lora",
     "-c", "request_id,sent_at,started_at,ended_at,first_seen_at,last_changed_at"],
    ["query", "-n", "0", "-e", "beta/sd_xl", "--until", "2026-11-27", "--status-code", "200"],
]  # fmt: skip


@pytest.mark.parametrize("fmt", ["table", "csv", "json", "jsonl"])
@pytest.mark.parametrize("args", SAME, ids=[" ".join(a) for a in SAME])
def test_query_and_stats_print_the_same_on_both(run_cli, both, args, fmt):
    sqlite, pg = both
    out = {}
    for name, db in (("sqlite", sqlite), ("postgresql", pg)):
        r = run_cli([*args, "--db", db, "--format", fmt], env={"COLUMNS": "400"})
        assert r.exit_code == 0, f"{name}: {r.output}"
        out[name] = r.stdout
    assert out["sqlite"].strip(), f"{args}: no output to compare"
    assert out["sqlite"] == out["postgresql"], f"mirror {' '.join(args)} -f {fmt} differs"


def test_payloads_are_the_same_json_values_on_both(run_cli, both):
    sqlite, pg = both
    got = {}
    for db in both:
        r = run_cli(["query", "-n", "0", "--payloads", "--db", db, "--format", "json"])
        assert r.exit_code == 0, r.output
        got[db] = json.loads(r.stdout)
    assert got[sqlite] == got[pg] and got[sqlite]


def test_status_prints_the_same_on_both(run_cli, tmp_path, pg_url):
    from mirror.store import Store

    for db in (str(tmp_path / "m.db"), pg_url):
        store = Store.open(db)
        with store.engine.begin() as conn:
            add_targets(conn, ["acme/flux-lora", "beta/sd_xl"], "2026-11-25T00:00:00.000000Z")
            store.mark_complete(conn, "acme/flux-lora", "2026-11-25T00:00:00.000000Z",
                                "2026-11-26T00:00:00.000000Z", "2026-11-28T12:00:00.000000Z")  # fmt: skip
            store.mark_complete(conn, "acme/flux-lora", "2026-11-26T06:00:00.123456Z",
                                "2026-11-28T12:00:00.000000Z", "2026-11-28T12:00:00.000000Z")  # fmt: skip
        store.close()
        fill(db, make_rows(300, seed=3))
    for fmt in ("table", "json", "csv"):
        a, b = (
            run_cli(["status", "--db", db, "--format", fmt])
            for db in (str(tmp_path / "m.db"), pg_url)
        )
        assert a.exit_code == b.exit_code == 0, a.output + b.output
        assert a.stdout == b.stdout and a.stdout.strip(), f"status -f {fmt} differs"


# --------------------------------------------------------------------------- search


def test_search_uses_the_gin_index(both):
    _, pg = both
    engine = reader_engine(pg)
    with engine.connect() as conn:
        conn.exec_driver_sql("SET enable_seqscan = off")  # 600 rows: ask whether it *can*
        stmt = query.listing_statement(conn, query.Filters(search="lighthouse dusk"))
        sql, params = query.statement_sql(conn, stmt)
        plan = "\n".join(r[0] for r in conn.exec_driver_sql("EXPLAIN " + sql, params))
        conn.rollback()
    engine.dispose()
    assert "ix_requests_search" in plan, f"the search does not use the GIN index:\n{plan}"


@pytest.mark.parametrize(
    ("words", "want"),
    [
        ("lighthouse", lambda p: "lighthouse" in p.split()),
        ("LIGHTHOUSE dusk", lambda p: {"lighthouse", "dusk"} <= set(p.split())),
        ("dusk -- ", lambda p: "dusk" in p.split()),  # a word without tokens is ignored…
        ("--", lambda p: False),  # …and alone matches nothing, as in FTS5
    ],
)
def test_every_word_must_occur_on_both(both, words, want):
    found = {}
    for db in both:
        engine = reader_engine(db)
        with engine.connect() as conn:
            found[db] = {
                r[0]
                for r in query.select_requests(
                    conn, query.Filters(search=words), columns=["request_id"]
                )
            }
            prompts = {
                r[0]: json.loads(r[1])["prompt"]
                for r in conn.execute(
                    sa.text(
                        "SELECT request_id, json_input FROM requests WHERE json_input IS NOT NULL"
                    )
                )
            }
            conn.rollback()
        engine.dispose()
    sqlite, pg = both
    expected = {rid for rid, p in prompts.items() if want(p.lower())}
    assert found[sqlite] == found[pg] == expected, f"search {words!r}"


# --------------------------------------------------------------------------- sql

ESCAPES = [
    ("INSERT INTO sync_targets VALUES ('x', now())", "INSERT returns no rows"),
    ("INSERT INTO sync_targets VALUES ('x', now()) RETURNING target", "read-only transaction"),
    ("DELETE FROM requests", "DELETE returns no rows"),
    ("UPDATE requests SET status = 'success' RETURNING 1", "read-only transaction"),
    (
        "WITH x AS (DELETE FROM requests RETURNING 1) SELECT count(*) FROM x",
        "read-only transaction",
    ),
    ("DROP TABLE requests", "DROP returns no rows"),
    ("CREATE TABLE evil (x int)", "CREATE returns no rows"),
    ("CREATE TEMP TABLE evil AS SELECT 1", "CREATE returns no rows"),
    ("TRUNCATE requests", "TRUNCATE returns no rows"),
    ("COPY requests TO PROGRAM 'touch {marker}'", "COPY returns no rows"),
    ("COPY requests TO '{marker}'", "COPY returns no rows"),
    ("DO $$BEGIN DELETE FROM requests; END$$", "DO returns no rows"),
    ("SET TRANSACTION READ WRITE", "SET returns no rows"),
    ("SET SESSION CHARACTERISTICS AS TRANSACTION READ WRITE", "SET returns no rows"),
    ("SELECT set_config('transaction_read_only', 'off', true)", "read-write mode must be set"),
    ("COMMIT", "COMMIT returns no rows"),
    ("COMMIT; DROP TABLE requests", "one statement at a time"),
    ("SELECT 1; DROP TABLE requests", "one statement at a time"),
    ("EXPLAIN ANALYZE DELETE FROM requests", "read-only transaction"),
    ("SELECT nextval('sync_runs_id_seq')", "read-only transaction"),
    ("SELECT * FROM requests FOR UPDATE", "read-only transaction"),
]


@pytest.mark.parametrize(("sql", "needle"), ESCAPES, ids=[e[0][:40] for e in ESCAPES])
def test_sql_writes_are_refused_and_change_nothing(run_cli, both, tmp_path, sql, needle):
    _, pg = both
    marker = tmp_path / "pwned"
    sql = sql.replace("{marker}", str(marker))
    before = _state(pg)
    result = run_cli(["sql", sql, "--db", pg])
    assert result.exit_code == 1, f"{sql!r}: exit {result.exit_code}\n{result.output}"
    line = one_line(result)
    assert line.startswith("mirror: sql: ") and needle in line, line
    assert _state(pg) == before, f"{sql!r} changed the database"
    assert not marker.exists(), f"{sql!r} ran something on the server"


def test_sql_time_limit_is_statement_timeout(run_cli, both):
    _, pg = both
    result = run_cli(["sql", "SELECT pg_sleep(5)", "--db", pg, "--timeout", "0.3"])
    assert result.exit_code == 1
    assert (
        one_line(result)
        == "mirror: sql: stopped after 0.3s (the time limit; raise it with --timeout)"
    )


def test_sql_reads_with_bound_parameters_like_sqlite(run_cli, both):
    sqlite, pg = both
    sql = ("SELECT status, count(*) AS n, sum(duration) AS total, max(ended_at) AS last "
           "FROM requests WHERE endpoint_id = :ep AND status_code <> :code "
           "AND ended_at::text LIKE '%' GROUP BY status ORDER BY status")  # fmt: skip
    out = {}
    for db in both:
        text = sql.replace("ended_at::text", "CAST(ended_at AS TEXT)") if db == sqlite else sql
        r = run_cli(["sql", text, "--db", db, "-p", "ep", "acme/upscaler", "-p", "code", "404",
                     "--format", "json"])  # fmt: skip
        assert r.exit_code == 0, r.output
        out[db] = json.loads(r.stdout)
    assert out[sqlite] == out[pg] and out[pg], "mirror sql answered differently"


@pytest.mark.parametrize(
    "sql",
    ["SELECT * FROM request_log ORDER BY ended_at DESC LIMIT 3", "SELECT * FROM daily_usage",
     "SELECT * FROM hourly_summary LIMIT 5", "SHOW statement_timeout",
     "EXPLAIN SELECT count(*) FROM requests", "VALUES (1, 'a')", "TABLE sync_targets"],
)  # fmt: skip
def test_sql_reading_views_and_plans_is_allowed(run_cli, both, sql):
    _, pg = both
    result = run_cli(["sql", sql, "--db", pg, "--format", "jsonl"])
    assert result.exit_code == 0, f"{sql}: {result.output}"
    if not sql.startswith("TABLE"):
        assert result.stdout.strip(), f"{sql}: no rows"


def test_sql_a_missing_parameter_and_a_syntax_error_are_one_line(run_cli, both):
    _, pg = both
    r = run_cli(["sql", "SELECT :x", "--db", pg, "-p", "y", "1"])
    assert (
        r.exit_code == 1 and one_line(r) == "mirror: sql: no value for :x; pass one with -p x VALUE"
    )
    r = run_cli(["sql", "SELEC 1", "--db", pg])
    assert r.exit_code == 1 and one_line(r) == 'mirror: sql: syntax error at or near "SELEC"'


def test_sql_on_an_unreachable_server_is_one_line(run_cli):
    r = run_cli(["sql", "SELECT 1", "--db", "postgresql://nobody@/nope?host=/nonexistent"])
    assert r.exit_code == 1
    line = one_line(r)
    assert (
        line.startswith("mirror: sql: postgresql+psycopg://nobody@/nope")
        and "cannot connect" in line
    )


# --------------------------------------------------------------------------- browse


def test_browse_refuses_a_server_database_in_one_line(run_cli, both):
    _, pg = both
    result = run_cli(["browse", "--db", pg])
    assert result.exit_code == 2
    line = one_line(result)
    assert "Datasette serves SQLite files" in line and "mirror copy" in line, line
