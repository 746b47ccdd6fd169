"""The store: migrations, the upsert's semantics, window state, and refusing bad files."""

from __future__ import annotations

import json
import os
import sqlite3
import stat

import pytest
import sqlalchemy as sa
from hypothesis import given, settings
from hypothesis import strategies as st

from mirror.db import HEAD_REVISION, script_heads
from mirror.errors import SchemaTooNewError, StoreError
from mirror.records import Row, derive_status
from mirror.schema import ROW_COLUMNS, metadata, requests
from mirror.store import Store

T1, T2 = "2026-11-28T10:00:00.000000Z", "2026-11-28T11:00:00.000000Z"


def row(
    rid="r1",
    *,
    ended="2026-11-28T09:00:01.000000Z",
    code=200,
    billable=1.5,
    inp='{"p":"x"}',
    out='{"o":1}',
    duration=1.0,
):
    r = (
        rid,
        "acme/app",
        "run-1",
        "2026-11-28T09:00:00.000000Z",
        "2026-11-28T09:00:00.500000Z",
        ended,
        code,
        duration,
        billable,
        inp,
        out,
    )
    return Row(*r, derive_status(ended, code))


def upsert(store, rows, now=T1, payloads=True, billing=True):
    with store.engine.begin() as conn:
        return store.upsert(conn, rows, payloads=payloads, billing=billing, now=now)


def norm(r):
    """A row with its JSON payloads decoded: PostgreSQL's jsonb keeps values, not spacing."""
    return (*r[:9], *(json.loads(v) if v is not None else None for v in r[9:11]), *r[11:])


def table(store):
    """Every stored row's upserted columns (``ROW_COLUMNS``), through the schema's column
    types (canonical timestamps)."""
    cols = [requests.c[name] for name in ROW_COLUMNS]
    with store.engine.connect() as conn:
        return [
            norm(tuple(r)) for r in conn.execute(sa.select(*cols).order_by(requests.c.request_id))
        ]


@pytest.fixture
def store(db_url):
    """A migrated store on each backend: a SQLite file, then a fresh PostgreSQL database."""
    s = Store.open(db_url)
    yield s
    s.close()


def test_migrated_schema_matches_the_declared_tables(store):
    insp = sa.inspect(store.engine)
    for t in metadata.sorted_tables:
        cols = [c["name"] for c in insp.get_columns(t.name)]
        assert cols == [c.name for c in t.columns], f"{t.name}: migration and Table disagree"
        assert insp.get_pk_constraint(t.name)["constrained_columns"] == [
            c.name for c in t.primary_key
        ]
    names = {i["name"] for i in insp.get_indexes("requests")}
    assert {"ix_requests_endpoint_ended", "ix_requests_ended_at", "ix_requests_unfinished"} <= names


def test_a_database_at_head_opens_without_loading_alembic(tmp_path):
    """``HEAD_REVISION`` is Alembic's head, and a database already there is opened (as
    every cron run opens it) without importing Alembic: only an upgrade needs it."""
    import subprocess
    import sys

    assert script_heads()[0].get_current_head() == HEAD_REVISION
    db = str(tmp_path / "m.db")
    Store.open(db).close()
    code = (
        "import sys\nfrom mirror.store import Store\nStore.open(sys.argv[1]).close()\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] == 'alembic'))"
    )
    out = subprocess.run([sys.executable, "-c", code, db], capture_output=True, text=True)
    assert (out.returncode, out.stdout.strip(), out.stderr) == (0, "[]", "")


def test_database_files_are_private_and_in_wal_mode(tmp_path, store):
    if store.dialect != "sqlite":
        pytest.skip("files: SQLite only")
    upsert(store, [row()])
    for p in tmp_path.iterdir():
        if p.name.startswith("m.db"):
            assert stat.S_IMODE(p.stat().st_mode) & 0o077 == 0, f"{p.name} is readable by others"
    assert sqlite3.connect(tmp_path / "m.db").execute("PRAGMA journal_mode").fetchone() == ("wal",)


def test_new_files_get_16_kib_pages_and_existing_ones_keep_theirs(tmp_path):
    """A new mirror file is created with PAGE_SIZE pages; one made before (SQLite's 4 KiB
    default) keeps its pages, is migrated and written as before."""
    from mirror.db import PAGE_SIZE

    def page_size(p):
        con = sqlite3.connect(p)
        try:
            return con.execute("PRAGMA page_size").fetchone()[0]
        finally:
            con.close()

    new = tmp_path / "new.db"
    s = Store.open(str(new))
    upsert(s, [row("a")])
    s.close()
    assert page_size(new) == PAGE_SIZE == 16_384
    old = tmp_path / "old.db"
    con = sqlite3.connect(old)  # how the file of an earlier mirror version began
    con.execute("PRAGMA page_size = 4096")
    con.execute("PRAGMA journal_mode = WAL")
    con.close()
    s = Store.open(str(old))
    assert upsert(s, [row("a"), row("b")]) == (2, 0)
    assert [r[0] for r in table(s)] == ["a", "b"]
    s.close()
    assert page_size(old) == 4096
    assert sqlite3.connect(old).execute("PRAGMA integrity_check").fetchone() == ("ok",)


def test_insert_then_update_counts_and_bookkeeping(store):
    assert upsert(store, [row("a"), row("b")]) == (2, 0)
    assert upsert(store, [row("a"), row("b")], now=T2) == (0, 0), (
        "unchanged rows must not count as updated"
    )
    assert [r[-1] for r in table(store)] == [T1, T1], "unchanged rows must keep last_changed_at"
    assert upsert(store, [row("a", billable=2.0), row("c")], now=T2) == (1, 1)
    a = table(store)[0]
    assert a[8] == 2.0 and a[-2:] == (T1, T2), "first_seen stays, last_changed moves"


def test_unfinished_row_is_completed_in_place(store):
    upsert(store, [row("a", ended=None, code=None, out=None, billable=None, duration=None)])
    assert table(store)[0][11] == "unfinished"
    assert upsert(store, [row("a")], now=T2) == (0, 1)
    assert table(store) == [norm((*row("a"), T1, T2))]


def test_fields_not_fetched_are_left_alone(store):
    upsert(store, [row("a")])
    no_extras = row("a", billable=None, inp=None, out=None)
    upsert(store, [no_extras], payloads=False, billing=False, now=T2)
    assert table(store) == [norm((*row("a"), T1, T1))], (
        "a sync without payloads/billing erased them"
    )


def test_expired_payloads_are_kept(store):
    upsert(store, [row("a")])
    upsert(store, [row("a", inp=None, out=None)], now=T2)
    assert table(store)[0][9:11] == ({"p": "x"}, {"o": 1})


def test_duplicate_ids_in_one_batch_last_wins(store):
    assert upsert(store, [row("a", billable=1.0), row("a", billable=3.0)]) == (1, 0)
    assert table(store)[0][8] == 3.0


rows_strategy = st.lists(
    st.builds(
        row,
        rid=st.sampled_from(["a", "b", "c", "d"]),
        ended=st.sampled_from([None, "2026-11-28T09:00:01.000000Z", "2026-11-28T09:30:00.000000Z"]),
        code=st.sampled_from([None, 200, 404, 500]),
        billable=st.sampled_from([None, 1.0, 2.5]),
        inp=st.sampled_from([None, '{"p":"x"}', '{"p":"東京"}']),
    ),
    max_size=12,
)


@settings(max_examples=60, deadline=None)
@given(batch=rows_strategy)
def test_upsert_twice_equals_once(tmp_path_factory, batch):  # SQLite; PG: tests/query
    s = Store.open(str(tmp_path_factory.mktemp("h") / "m.db"))
    try:
        upsert(s, batch)
        once = table(s)
        assert upsert(s, batch, now=T2) == (0, 0)
        assert table(s) == once
    finally:
        s.close()


def test_completed_windows_coalesce(store):
    with store.engine.begin() as conn:
        store.mark_complete(
            conn, "t", "2026-11-28T00:00:00.000000Z", "2026-11-28T01:00:00.000000Z", T1
        )
        store.mark_complete(
            conn, "t", "2026-11-28T03:00:00.000000Z", "2026-11-28T04:00:00.000000Z", T1
        )
        store.mark_complete(
            conn, "t", "2026-11-28T01:00:00.000000Z", "2026-11-28T02:00:00.000000Z", T1
        )
        store.mark_complete(
            conn, "u", "2026-11-28T01:00:00.000000Z", "2026-11-28T02:00:00.000000Z", T1
        )
    assert store.completed("t") == [
        ("2026-11-28T00:00:00.000000Z", "2026-11-28T02:00:00.000000Z"),
        ("2026-11-28T03:00:00.000000Z", "2026-11-28T04:00:00.000000Z"),
    ]
    with store.engine.begin() as conn:
        store.mark_complete(
            conn, "t", "2026-11-28T01:30:00.000000Z", "2026-11-28T03:00:00.000000Z", T1
        )
    assert store.completed("t") == [("2026-11-28T00:00:00.000000Z", "2026-11-28T04:00:00.000000Z")]
    assert store.completed("u") == [("2026-11-28T01:00:00.000000Z", "2026-11-28T02:00:00.000000Z")]


def _run_log(store):
    from mirror.schema import sync_runs

    c = sync_runs.c
    with store.engine.connect() as conn:
        return [
            tuple(r)
            for r in conn.execute(
                sa.select(c.id, c.outcome, c.started_at, c.ended_at, c.error).order_by(c.id)
            )
        ]


def test_a_run_left_running_is_marked_killed_only_by_a_run_holding_the_lock(tmp_path, store):
    """Under the writer lock no other run can be going on: a run still logged `running` is
    one whose process died. Without the lock (library use) nothing can be concluded."""
    from datetime import UTC, datetime

    from mirror import lock
    from mirror.store import STALE_RUN_ERROR

    t = [datetime(2026, 11, 28, h, tzinfo=UTC) for h in (10, 11, 12)]
    first = store.start_run(["acme/app"], t[0])  # then "killed": never finished
    second = store.start_run(["acme/app"], t[1])  # no lock held: first is left alone
    assert _run_log(store) == [
        (first, "running", "2026-11-28T10:00:00.000000Z", None, None),
        (second, "running", "2026-11-28T11:00:00.000000Z", None, None),
    ], "a run without the writer lock changed another run's record"
    if store.dialect != "sqlite":
        # PostgreSQL: other machines' runs may really be going on; nothing is ever concluded
        store.start_run(["acme/app"], t[2])
        assert [r[1] for r in _run_log(store)] == ["running"] * 3, _run_log(store)
        return
    with lock.hold(tmp_path / "m.db"):
        assert store.holds_sqlite_lock()
        third = store.start_run(["acme/app"], t[2])
    assert not store.holds_sqlite_lock()
    noticed = "2026-11-28T12:00:00.000000Z"
    assert _run_log(store) == [
        (first, "killed", "2026-11-28T10:00:00.000000Z", noticed, STALE_RUN_ERROR),
        (second, "killed", "2026-11-28T11:00:00.000000Z", noticed, STALE_RUN_ERROR),
        (third, "running", noticed, None, None),
    ], "runs left running were not marked killed, when noticed, by the run holding the lock"
    assert "died" in STALE_RUN_ERROR


def test_locked_database_message_says_what_happened_without_guessing(tmp_path):
    """A real SQLITE_BUSY: another connection holds the write lock."""
    from mirror.db import describe_db_error

    db = tmp_path / "busy.db"
    holder = sqlite3.connect(db, isolation_level=None)
    holder.execute("CREATE TABLE t (x)")
    holder.execute("BEGIN IMMEDIATE")
    other = sqlite3.connect(db, isolation_level=None, timeout=0)
    try:
        with pytest.raises(sqlite3.OperationalError) as caught:
            other.execute("BEGIN IMMEDIATE")
    finally:
        other.close()
        holder.execute("ROLLBACK")
        holder.close()
    assert describe_db_error(caught.value, "m.db") == (
        "m.db: the database stayed locked (database is locked); another connection held the "
        "write lock or a long transaction open past the busy timeout; run again"
    ), "the locked message should name the cause SQLite reports, not guess at a reader"


def test_target_covers_routes_but_not_lookalikes(store):
    rows = [row(f"{i}") for i in range(4)]
    ids = ["acme/app", "acme/app/turbo", "acme/app-2", "acme/apple"]
    rows = [r._replace(endpoint_id=e) for r, e in zip(rows, ids, strict=True)]
    upsert(store, [r._replace(ended_at=None, status_code=None, status="unfinished") for r in rows])
    got = {e for _, e, _ in store.unfinished("acme/app", "9999-01-01T00:00:00.000000Z", 100)}
    assert got == {"acme/app", "acme/app/turbo"}


def test_newer_schema_is_refused(tmp_path):
    p = tmp_path / "new.db"
    Store.open(str(p)).close()
    con = sqlite3.connect(p)
    con.execute("UPDATE alembic_version SET version_num = '9999'")
    con.commit()
    con.close()
    with pytest.raises(SchemaTooNewError, match="revision 9999, newer than this mirror knows"):
        Store.open(str(p))


def test_foreign_and_corrupt_files_are_refused_untouched(tmp_path):
    foreign = tmp_path / "other.db"
    con = sqlite3.connect(foreign)
    con.execute("CREATE TABLE invoices (id INTEGER)")
    con.commit()
    con.close()
    before = foreign.read_bytes()
    with pytest.raises(StoreError, match="not a mirror database"):
        Store.open(str(foreign))
    assert foreign.read_bytes() == before
    junk = tmp_path / "junk.db"
    junk.write_bytes(os.urandom(8192))
    before = junk.read_bytes()
    with pytest.raises(StoreError, match="not a mirror database or corrupt"):
        Store.open(str(junk))
    assert junk.read_bytes() == before


def test_upgrade_from_an_older_revision_backs_up_first(tmp_path):
    from alembic import command

    from mirror.db import alembic_config

    p = tmp_path / "m.db"
    s = Store.open(str(p))
    upsert(s, [row("a")])
    with s.engine.begin() as conn:
        head = conn.exec_driver_sql("SELECT version_num FROM alembic_version").scalar()
        if head == "0001":
            pytest.skip("only one revision so far: nothing to upgrade from")
        command.downgrade(alembic_config(conn), "0001")
    s.close()
    s = Store.open(str(p))
    assert (tmp_path / "m.db.bak-0001").exists(), "no backup taken before the upgrade"
    assert [r[0] for r in table(s)] == ["a"]
    s.close()


# --------------------------------------------------------------------------- PostgreSQL


def test_postgresql_schema_uses_native_types(pg_url):
    """timestamptz for instants, jsonb for payloads; the derived tables, views and the search
    index exist under the names the SQLite schema uses."""
    s = Store.open(pg_url)
    try:
        with s.engine.connect() as conn:
            types = dict(
                conn.exec_driver_sql(
                    "SELECT column_name, data_type FROM information_schema.columns "
                    "WHERE table_name = 'requests'"
                ).all()
            )
            views = {
                r[0]
                for r in conn.exec_driver_sql(
                    "SELECT table_name FROM information_schema.views WHERE table_schema = 'public'"
                )
            }
            indexes = {
                r[0]
                for r in conn.exec_driver_sql(
                    "SELECT indexname FROM pg_indexes WHERE tablename = 'requests'"
                )
            }
        assert types == {
            "request_id": "text",
            "endpoint_id": "text",
            "runner_id": "text",
            "sent_at": "timestamp with time zone",
            "started_at": "timestamp with time zone",
            "ended_at": "timestamp with time zone",
            "status_code": "integer",
            "duration": "double precision",
            "billable_units": "double precision",
            "json_input": "jsonb",
            "json_output": "jsonb",
            "status": "text",
            "first_seen_at": "timestamp with time zone",
            "last_changed_at": "timestamp with time zone",
            "history": "text",
        }, types
        assert views == {"request_log", "hourly_summary", "daily_summary", "daily_usage",
                         "request_costs"}  # fmt: skip
        assert {
            "ix_requests_search",
            "ix_requests_endpoint_ended",
            "ix_requests_unfinished",
            "ix_requests_status_ended",
            "ix_requests_sent_at",
        } <= indexes, indexes
    finally:
        s.close()  # fmt: skip


def test_postgresql_downgrade_then_upgrade_keeps_rows_and_summaries(pg_url):
    from alembic import command

    from mirror.db import alembic_config

    s = Store.open(pg_url)
    upsert(s, [row("a"), row("b", ended="2026-11-28T10:15:00.000000Z", billable=0.1)])
    with s.engine.begin() as conn:
        command.downgrade(alembic_config(conn), "0001")
    with s.engine.connect() as conn:
        assert conn.exec_driver_sql("SELECT to_regclass('summary_hourly')").scalar() is None
    s.close()
    s = Store.open(pg_url)  # upgrades again, rebuilding the summary from the rows
    try:
        assert [r[0] for r in table(s)] == ["a", "b"]
        with s.engine.connect() as conn:
            got = conn.exec_driver_sql(
                "SELECT to_char(hour AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24'), requests, "
                "billable_micro FROM summary_hourly ORDER BY hour"
            ).all()
        assert got == [("2026-11-28T09", 1, 1_500_000), ("2026-11-28T10", 1, 100_000)], got
    finally:
        s.close()


def test_postgresql_machines_migrating_at_once_take_turns(pg_url):
    """Several processes opening a fresh database at once: one migrates, the others wait on
    the advisory lock and find the schema at head; none fails."""
    import subprocess
    import sys

    code = "import sys\nfrom mirror.store import Store\nStore.open(sys.argv[1]).close()\n"
    procs = [subprocess.Popen([sys.executable, "-c", code, pg_url], stderr=subprocess.PIPE,
                              text=True) for _ in range(4)]  # fmt: skip
    errors = [p.communicate(timeout=120)[1] for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0, 0], errors
    s = Store.open(pg_url)
    try:
        with s.engine.connect() as conn:
            head = script_heads()[0].get_current_head()
            assert conn.exec_driver_sql("SELECT version_num FROM alembic_version").all() == [
                (head,)
            ]
    finally:
        s.close()


def test_postgresql_database_of_another_application_is_refused(pg_url):
    engine = sa.create_engine(pg_url)
    with engine.begin() as conn:
        conn.exec_driver_sql("CREATE TABLE invoices (id integer)")
    engine.dispose()
    with pytest.raises(StoreError, match="is not a mirror database"):
        Store.open(pg_url)
    engine = sa.create_engine(pg_url)
    with engine.connect() as conn:
        tables = {r[0] for r in conn.exec_driver_sql(
            "SELECT tablename FROM pg_tables WHERE schemaname = 'public'")}  # fmt: skip
    engine.dispose()
    assert tables == {"invoices"}, f"the foreign database was changed: {tables}"


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("mysql://u@h/db", "unsupported database 'mysql'"),
        ("postgresql+psycopg2://u@h/db", "driver 'psycopg2' is not supported"),
        ("postgresql://u@h:notaport/db", "is not a database URL"),
    ],
)
def test_unusable_database_urls_are_a_usage_error(tmp_path, url, message):
    from mirror.errors import ConfigError

    with pytest.raises(ConfigError, match=message):
        Store.open(url)
    assert list(tmp_path.iterdir()) == [], "a bad URL created files"


def test_passwords_in_urls_never_reach_messages():
    from mirror.db import describe_db_error, display_db

    url = "postgresql+psycopg://me:hunter2@db.example/mirror"
    assert display_db(url) == "postgresql+psycopg://me:***@db.example/mirror"
    msg = describe_db_error(RuntimeError("connection failed:\n\tIs the server running?"), url)
    assert msg == (
        "postgresql+psycopg://me:***@db.example/mirror: connection failed: Is the server running?"
    )


def test_postgresql_app_id_ranges_hold_under_a_punctuation_blind_collation(pg_admin):
    """A database whose default collation ignores punctuation (ICU ``ka-shifted``, like
    glibc's en_US) would put ``acme/app/turbo`` outside ``['acme/app/', 'acme/app0')``;
    the id columns compare in "C" order, so a target still covers exactly its routes."""
    import uuid

    name = f"mirror_test_icu_{uuid.uuid4().hex[:8]}"
    admin = sa.create_engine(pg_admin, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.exec_driver_sql(
            f"CREATE DATABASE {name} TEMPLATE template0 LOCALE_PROVIDER icu "
            "ICU_LOCALE 'en-US-u-ka-shifted' LOCALE 'C.UTF-8'"
        )
    url = sa.engine.make_url(pg_admin).set(database=name).render_as_string(False)
    try:
        probe = sa.create_engine(url)
        with probe.connect() as conn:
            blind = conn.exec_driver_sql("SELECT 'acme/app/turbo' < 'acme/app0'").scalar()
        probe.dispose()
        assert blind is False, "the collation does not ignore punctuation: proves nothing"
        s = Store.open(url)
        try:
            rows = [row(f"{i}") for i in range(4)]
            ids = ["acme/app", "acme/app/turbo", "acme/app-2", "acme/apple"]
            rows = [r._replace(endpoint_id=e) for r, e in zip(rows, ids, strict=True)]
            upsert(
                s, [r._replace(ended_at=None, status_code=None, status="unfinished") for r in rows]
            )
            got = {e for _, e, _ in s.unfinished("acme/app", "9999-01-01T00:00:00.000000Z", 9)}
            assert got == {"acme/app", "acme/app/turbo"}, got
            with s.engine.connect() as conn:  # the same range typed in psql by a user
                raw = {
                    r[0]
                    for r in conn.exec_driver_sql(
                        "SELECT endpoint_id FROM requests "
                        "WHERE endpoint_id >= 'acme/app/' AND endpoint_id < 'acme/app0'"
                    )
                }
            assert raw == {"acme/app/turbo"}, f"the column does not compare in C order: {raw}"
        finally:
            s.close()
    finally:
        with admin.connect() as conn:
            conn.exec_driver_sql(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        admin.dispose()


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("postgresql://me@db.example/mirror?password=hunter2",
         "postgresql://me@db.example/mirror?password=***"),
        ("postgresql+psycopg://me@/mirror?host=/run/pg&PassWord=hunter2&sslpassword=hunter2",
         "postgresql+psycopg://me@/mirror?PassWord=***&host=%2Frun%2Fpg&sslpassword=***"),
        ("postgresql://me:hunter2@db.example/mirror?password=hunter2",
         "postgresql://me:***@db.example/mirror?password=***"),
    ],
)  # fmt: skip
def test_a_password_in_the_query_string_is_masked_too(url, shown):
    from mirror.db import describe_db_error, display_db

    assert display_db(url) == shown
    assert describe_db_error(RuntimeError("no route"), url) == f"{shown}: no route"


def test_mirror_sql_never_prints_a_password_given_as_a_parameter():
    from click.testing import CliRunner

    from mirror.cli import cli

    url = "postgresql://nobody@/nope?host=/nonexistent&password=hunter2"
    for args in (["sql", "SELECT 1", "--db", url], ["status", "--db", url]):
        r = CliRunner().invoke(cli, args)
        assert r.exit_code == 1 and "/nope" in r.stderr and "hunter2" not in r.stderr, (
            f"mirror {args[0]}: exit {r.exit_code}, stderr {r.stderr!r}"
        )


def _batch_steps(store, rows):
    """SQLite virtual-machine steps an upsert of ``rows`` takes (its statements, the index
    and rollup work included): a count of work done, not of time."""
    steps = 0

    def count():
        nonlocal steps
        steps += 1
        return 0

    with store.engine.begin() as conn:
        raw = conn.connection.driver_connection
        raw.set_progress_handler(count, 100)
        try:
            store.upsert(conn, rows, payloads=True, billing=True, now=T1)
        finally:
            raw.set_progress_handler(None, 0)
    return steps


@pytest.mark.parametrize("analyzed", [False, True], ids=["plain", "analyzed"])
def test_a_batch_costs_the_same_whatever_the_mirror_already_holds(tmp_path, analyzed):
    """The work a batch does after its rows (full-text index, summary, histogram, unbilled
    requests) reads the rows it inserted, not the table: a batch into a mirror ten times
    larger takes as many steps. With SQLite's statistics (ANALYZE, which `sqlite3` users may
    run) too. Before: the unbilled rollup read every success row of the table per batch."""

    def rows(prefix, n):
        return [
            row(f"{prefix}{i:06d}", ended=f"2026-11-28T{i % 24:02d}:00:01.000000Z")
            for i in range(n)
        ]

    small, large = Store.open(str(tmp_path / "s.db")), Store.open(str(tmp_path / "l.db"))
    try:
        for s, held in ((small, 1_000), (large, 10_000)):
            for start in range(0, held, 1_000):
                upsert(s, rows(f"old{start:06d}-", 1_000))
            if analyzed:
                with s.engine.begin() as conn:
                    conn.exec_driver_sql("ANALYZE")
        base = _batch_steps(small, rows("new-", 200))
        grown = _batch_steps(large, rows("new-", 200))
        assert grown <= 1.2 * base, (
            f"a 200-row batch took {grown} x100 VM steps into a mirror of 10,000 rows and "
            f"{base} x100 into one of 1,000: some statement reads the table, not the batch"
        )
    finally:
        small.close()
        large.close()
