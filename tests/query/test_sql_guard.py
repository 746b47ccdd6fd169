"""`mirror sql` only reads: every way to write is refused by SQLite, in one line, exit 1.

After each attempt the database file is byte-for-byte what it was and no file has appeared
next to it (SQLite's ``-shm`` index aside, which holds no data).
"""

from __future__ import annotations

import json

import pytest
from support.rows import fill, folder_state, make_rows, read_all


@pytest.fixture
def db(tmp_path):
    folder = tmp_path / "data"
    folder.mkdir()
    path = folder / "m.db"
    fill(path, make_rows(200, seed=2))
    return path


def one_line(result) -> str:
    lines = [ln for ln in result.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, f"expected one line on stderr, got:\n{result.stderr}"
    assert "Traceback" not in result.output
    return lines[0]


ESCAPES = [
    ("DROP TABLE requests", "changing the schema"),
    ("DELETE FROM requests", "DELETE"),
    ("UPDATE requests SET status = 'success'", "UPDATE"),
    ("INSERT INTO sync_targets VALUES ('x', 'y')", "INSERT"),
    ("REPLACE INTO sync_targets VALUES ('x', 'y')", "INSERT"),
    ("WITH t AS (SELECT 1) DELETE FROM requests", "DELETE"),
    ("CREATE TABLE evil (x)", "changing the schema"),
    ("CREATE TEMP TABLE evil AS SELECT * FROM requests", "changing the schema"),
    ("CREATE VIEW evil AS SELECT 1", "changing the schema"),
    ("CREATE TRIGGER evil AFTER INSERT ON requests BEGIN SELECT 1; END", "CREATE TRIGGER"),
    ("DROP VIEW request_log", "changing the schema"),
    ("ALTER TABLE requests ADD COLUMN evil TEXT", "ALTER TABLE"),
    ("ATTACH 'evil.db' AS evil", "ATTACH"),
    ("ATTACH 'file:evil.db?mode=rwc' AS evil", "ATTACH"),
    ("VACUUM INTO 'copy.db'", "VACUUM INTO"),
    ("VACUUM", "refused"),
    ("REINDEX", "REINDEX"),
    ("ANALYZE", "refused"),
    ("PRAGMA user_version = 7", "PRAGMA user_version = 7"),
    ("PRAGMA journal_mode = DELETE", "PRAGMA journal_mode"),
    ("PRAGMA query_only = 0", "PRAGMA query_only"),
    ("PRAGMA writable_schema = 1", "PRAGMA writable_schema"),
    ("PRAGMA wal_checkpoint(TRUNCATE)", "PRAGMA wal_checkpoint"),
    ("BEGIN IMMEDIATE", "TRANSACTION"),
    ("INSERT INTO requests_fts(requests_fts) VALUES ('delete-all')", "INSERT"),
    ("SELECT load_extension('/tmp/evil')", "load_extension"),
    ("SELECT 1; DROP TABLE requests", "one statement at a time"),
    ("SELECT 1; ATTACH 'evil.db' AS e", "one statement at a time"),
]


@pytest.mark.parametrize(("sql", "needle"), ESCAPES, ids=[e[0][:40] for e in ESCAPES])
def test_writes_are_refused_and_change_nothing(run_cli, db, sql, needle):
    before = folder_state(db.parent)
    n_before = read_all(db, "SELECT count(*), sum(length(json_input)) FROM requests")
    result = run_cli(["sql", sql, "--db", str(db)])
    assert result.exit_code == 1, f"{sql!r}: exit {result.exit_code}\n{result.output}"
    line = one_line(result)
    assert line.startswith("mirror: sql: ") and needle in line, line
    assert folder_state(db.parent) == before, f"{sql!r} changed or created files"
    assert read_all(db, "SELECT count(*), sum(length(json_input)) FROM requests") == n_before


def test_a_runaway_query_is_stopped_by_the_time_limit(run_cli, db):
    before = folder_state(db.parent)
    sql = "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n) SELECT max(i) FROM n"
    result = run_cli(["sql", sql, "--db", str(db), "--timeout", "0.3"])
    assert result.exit_code == 1
    assert one_line(result) == (
        "mirror: sql: stopped after 0.3s (the time limit; raise it with --timeout)"
    )
    assert folder_state(db.parent) == before


def test_a_runaway_stream_is_stopped_too(run_cli, db):
    sql = "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n) SELECT i FROM n"
    result = run_cli(["sql", sql, "--db", str(db), "--timeout", "0.3", "--format", "csv"])
    assert result.exit_code == 1
    assert "stopped after 0.3s" in one_line(result)


def test_reading_works_with_bound_parameters(run_cli, db):
    before = folder_state(db.parent)
    result = run_cli([
        "sql", "SELECT status, count(*) AS n FROM requests WHERE endpoint_id = :ep "
        "GROUP BY status ORDER BY status", "--db", str(db), "-p", "ep", "acme/upscaler",
        "--format", "json",
    ])  # fmt: skip
    assert result.exit_code == 0, result.output
    want = read_all(
        db,
        "SELECT status, count(*) FROM requests WHERE endpoint_id = ? GROUP BY status ORDER BY status",
        ("acme/upscaler",),
    )
    assert json.loads(result.stdout) == [{"status": s, "n": n} for s, n in want]
    assert folder_state(db.parent) == before


@pytest.mark.parametrize(
    "sql",
    [
        "PRAGMA table_info(requests)",
        "SELECT name FROM pragma_table_info('requests') ORDER BY cid",
        "SELECT count(*) FROM json_each('[1, 2, 3]')",
        "PRAGMA user_version",
        "SELECT count(*) FROM requests_fts WHERE requests_fts MATCH 'lighthouse'",
        "SELECT * FROM request_log ORDER BY ended_at DESC LIMIT 3",
        "SELECT * FROM daily_usage",
    ],
)
def test_reading_the_schema_and_views_is_allowed(run_cli, db, sql):
    result = run_cli(["sql", sql, "--db", str(db), "--format", "jsonl"])
    assert result.exit_code == 0, f"{sql}: {result.output}"
    assert result.stdout.strip(), f"{sql}: no rows"


def test_a_missing_file_is_not_created(run_cli, tmp_path):
    result = run_cli(["sql", "SELECT 1", "--db", str(tmp_path / "nope.db")])
    assert result.exit_code == 2
    assert "does not exist" in one_line(result)
    assert not (tmp_path / "nope.db").exists()


def test_a_syntax_error_is_one_line(run_cli, db):
    result = run_cli(["sql", "SELEC 1", "--db", str(db)])
    assert result.exit_code == 1
    assert one_line(result) == 'mirror: sql: near "SELEC": syntax error'


# --------------------------------------------------------------------------- bounded work
# SQLite's progress handler counts VM steps, and one function call is one step however long
# it runs: 40 rows of a 20 MB printf are a few hundred steps and seconds of work. The clock
# runs outside the statement, and no single value may grow past mirror sql's size limit.

STOPPED = "mirror: sql: stopped after 0.2s (the time limit; raise it with --timeout)"


@pytest.mark.timeout(60)
def test_the_time_limit_holds_inside_long_function_calls(run_cli, db):
    before = folder_state(db.parent)
    sql = (
        "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 40) "
        "SELECT sum(length(printf('%.*c', 20000000 + i, 'x'))) FROM n"
    )
    result = run_cli(["sql", sql, "--db", str(db), "--timeout", "0.2"])
    assert (result.exit_code, result.stderr) == (1, STOPPED + "\n"), (
        f"40 long printf calls ran past the time limit: exit {result.exit_code}, "
        f"stdout {result.stdout!r}"
    )
    assert folder_state(db.parent) == before


@pytest.mark.timeout(60)
def test_a_value_past_the_size_limit_is_refused(run_cli, db):
    """hex() of a 40 MB blob is an 80 MB string: over the 64 MiB limit of one value."""
    before = folder_state(db.parent)
    result = run_cli(
        ["sql", "SELECT length(hex(randomblob(40000000)))", "--db", str(db), "--timeout", "5"]
    )
    assert (result.exit_code, result.stderr) == (
        1,
        "mirror: sql: stopped: a value would be larger than 64 MiB "
        "(mirror sql's limit for one string or blob)\n",
    ), f"an 80 MB value was built: exit {result.exit_code}, stdout {result.stdout!r}"
    assert folder_state(db.parent) == before


@pytest.mark.timeout(60)
def test_the_memory_of_a_statement_is_limited(db):
    """Values under the size limit can still add up: SQLite's heap is capped too. In a child
    process, since the cap is process-wide and only ever lowered."""
    import subprocess
    import sys

    code = (
        "import sys\nfrom pathlib import Path\n"
        "from mirror.readonly import ReadOnlyDatabase, SqlError\n"
        "with ReadOnlyDatabase(Path(sys.argv[1]), heap_limit=64 << 20) as rdb:\n"
        "    try:\n"
        "        print(len(list(rdb.execute('SELECT ' + ', '.join(['randomblob(30000000)'] * 4))[1])))\n"
        "    except SqlError as e:\n"
        "        print(e)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, str(db)], capture_output=True, text=True, timeout=60
    )
    assert (done.returncode, done.stdout, done.stderr) == (
        0,
        "stopped: the statement needed more than 64 MiB of memory (mirror sql's limit)\n",
        "",
    ), "four 30 MB blobs at once were not stopped by the heap limit"


def test_closing_the_database_closes_its_row_streams(db):
    """A stream left half-read (an interrupt while printing) ends with its database, instead
    of closing its cursor on a closed connection when it is collected (a traceback on stderr
    after the interrupt's one line)."""
    from mirror.readonly import ReadOnlyDatabase

    rdb = ReadOnlyDatabase(db)
    _, rows = rdb.execute("SELECT request_id FROM requests")
    assert next(rows)[0].startswith("req-")
    rdb.close()
    assert list(rows) == [], "the stream outlived its database"
