"""The store: tables, connection setup, migrations, the upsert and the sync state.

Conventions, for everything in the file:

- One row of ``requests`` is one fal request, keyed by its ``request_id``; its columns carry
  the API's field names and values. ``status`` is derived from ``ended_at`` and
  ``status_code``; ``first_seen_at`` / ``last_changed_at`` say when this mirror first stored
  the row and when a sync last changed any of its values.
- Timestamps are UTC ISO-8601 text of exactly one shape, ``2026-11-28T10:00:08.123456Z``, so
  text order is time order (see ``mirror.timeparse``). JSON payloads are stored as JSON text.
- Sync state lives in the same file, so a row and the claim that its window is complete are
  committed in one transaction: ``sync_windows`` holds, per target, the completed ``[start,
  end)`` intervals (coalesced), ``sync_runs`` logs every run.

The schema itself is created and changed only by the Alembic revisions in ``migrations/``
(shipped as ``mirror.migrations``); the ``Table`` objects below describe it for queries and
are checked against the migrated schema by the tests.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
from collections.abc import Iterable, Iterator, Sequence
from datetime import datetime
from importlib import resources
from itertools import chain, repeat
from operator import add
from pathlib import Path
from typing import Any, NamedTuple

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.dialects import postgresql
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.engine import Connection, Dialect, Engine
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.compiler import SQLCompiler

from mirror import lock
from mirror.errors import ConfigError, SchemaTooNewError, StoreError
from mirror.redact import redact
from mirror.sqlitefile import check_file, connect_readonly
from mirror.timeparse import from_text, to_text

# --------------------------------------------------------------------------- dialects
#
# SQLite is the default, PostgreSQL the engine teams outgrow it into. Everything that differs
# between the two lives here: column types, the hour/day of a timestamp, the upsert, locking.
# The rest of mirror sees one convention on both: timestamps are canonical UTC text, payloads
# are JSON text.


class Instant(sa.types.TypeDecorator[str]):
    """A UTC instant: canonical text (``2026-11-28T10:00:08.123456Z``) on SQLite, where text
    order is time order; ``timestamptz`` on PostgreSQL. Python always sees the text."""

    impl = sa.Text
    cache_ok = True

    def load_dialect_impl(self, dialect: Dialect) -> sa.types.TypeEngine[Any]:
        if dialect.name == "postgresql":
            return dialect.type_descriptor(postgresql.TIMESTAMP(timezone=True))
        return dialect.type_descriptor(sa.Text())

    def process_bind_param(self, value: Any, dialect: Dialect) -> Any:
        if dialect.name == "postgresql" and isinstance(value, str):
            return from_text(value)
        return value

    def process_result_value(self, value: Any, dialect: Dialect) -> Any:
        if dialect.name == "postgresql" and isinstance(value, datetime):
            return to_text(value)
        return value


class JsonText(sa.types.TypeDecorator[str]):
    """A JSON document: its text on SQLite, ``jsonb`` on PostgreSQL. Python sees JSON text
    (PostgreSQL's rendering of it: ``jsonb`` keeps the value, not the spacing or key order)."""

    impl = sa.Text
    cache_ok = True

    def load_dialect_impl(self, dialect: Dialect) -> sa.types.TypeEngine[Any]:
        if dialect.name == "postgresql":
            return dialect.type_descriptor(postgresql.JSONB())
        return dialect.type_descriptor(sa.Text())

    def bind_processor(self, dialect: Dialect) -> Any:
        # the text is JSON already: handed to the driver as it is (see make_engine)
        return None

    def result_processor(self, dialect: Dialect, coltype: Any) -> Any:
        return None


#: ids compared by byte order on both backends: SQLite's BINARY, PostgreSQL's "C" collation
#: whatever the database's own (app-id ranges such as ``owner/app/`` .. ``owner/app0`` rely on
#: it; a language collation would ignore the punctuation)
Key = sa.Text().with_variant(postgresql.TEXT(collation="C"), "postgresql")


class hour_of(sa.sql.functions.GenericFunction[str]):
    """The hour of a timestamp as text, ``YYYY-MM-DDTHH`` (UTC)."""

    type = sa.Text()
    inherit_cache = True


class day_of(sa.sql.functions.GenericFunction[str]):
    """The day of a timestamp as text, ``YYYY-MM-DD`` (UTC)."""

    type = sa.Text()
    inherit_cache = True


@compiles(hour_of)
def _hour_sqlite(element: hour_of, compiler: SQLCompiler, **kw: Any) -> str:
    return f"substr({compiler.process(element.clauses, **kw)}, 1, 13)"


@compiles(day_of)
def _day_sqlite(element: day_of, compiler: SQLCompiler, **kw: Any) -> str:
    return f"substr({compiler.process(element.clauses, **kw)}, 1, 10)"


@compiles(hour_of, "postgresql")
def _hour_pg(element: hour_of, compiler: SQLCompiler, **kw: Any) -> str:
    arg = compiler.process(element.clauses, **kw)
    return f"to_char(({arg}) AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24')"


@compiles(day_of, "postgresql")
def _day_pg(element: day_of, compiler: SQLCompiler, **kw: Any) -> str:
    arg = compiler.process(element.clauses, **kw)
    return f"to_char(({arg}) AT TIME ZONE 'UTC', 'YYYY-MM-DD')"


def is_postgresql(db: str) -> bool:
    return is_url(db) and sa.engine.make_url(normalize_url(db)).get_backend_name() == "postgresql"


def normalize_url(db: str) -> str:
    """``postgresql://`` and ``postgres://`` mean psycopg 3, the driver mirror ships with."""
    for prefix in ("postgresql://", "postgres://"):
        if db.startswith(prefix):
            return "postgresql+psycopg://" + db[len(prefix) :]
    return db


metadata = sa.MetaData()

#: one row per fal request; see the module docstring for conventions
requests = sa.Table(
    "requests",
    metadata,
    sa.Column("request_id", Key, primary_key=True),
    sa.Column("endpoint_id", Key, nullable=False),
    sa.Column("runner_id", sa.Text),
    sa.Column("sent_at", Instant, nullable=False),
    sa.Column("started_at", Instant),
    sa.Column("ended_at", Instant),
    sa.Column("status_code", sa.Integer),
    sa.Column("duration", sa.Float),
    sa.Column("billable_units", sa.Float),
    sa.Column("json_input", JsonText),
    sa.Column("json_output", JsonText),
    sa.Column("status", sa.Text, nullable=False),
    sa.Column("first_seen_at", Instant, nullable=False),
    sa.Column("last_changed_at", Instant, nullable=False),
)

#: one row per sync target: an endpoint id exactly as the user gave it
sync_targets = sa.Table(
    "sync_targets",
    metadata,
    sa.Column("target", sa.Text, primary_key=True),
    sa.Column("added_at", Instant, nullable=False),
    #: the earliest start asked for; every sync plans from here until it is covered
    sa.Column("requested_from", Instant),
)

#: one row per coalesced completed interval [window_start, window_end) of a target
sync_windows = sa.Table(
    "sync_windows",
    metadata,
    sa.Column("target", sa.Text, primary_key=True),
    sa.Column("window_start", Instant, primary_key=True),
    sa.Column("window_end", Instant, nullable=False),
    sa.Column("completed_at", Instant, nullable=False),
)

#: one row per `mirror sync` run
sync_runs = sa.Table(
    "sync_runs",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("started_at", Instant, nullable=False),
    sa.Column("ended_at", Instant),
    sa.Column("outcome", sa.Text, nullable=False),
    sa.Column("targets", sa.Text, nullable=False),
    sa.Column("pages", sa.Integer, nullable=False, server_default="0"),
    sa.Column("api_calls", sa.Integer, nullable=False, server_default="0"),
    sa.Column("rows_inserted", sa.Integer, nullable=False, server_default="0"),
    sa.Column("rows_updated", sa.Integer, nullable=False, server_default="0"),
    sa.Column("error", sa.Text),
    #: this machine's clock minus the API's, in seconds, as the run measured it
    sa.Column("clock_skew", sa.Float),
)

#: when a target's older history was last re-checked, per tier ("day", "week")
sync_rechecks = sa.Table(
    "sync_rechecks",
    metadata,
    sa.Column("target", sa.Text, primary_key=True),
    sa.Column("tier", sa.Text, primary_key=True),
    sa.Column("checked_at", Instant, nullable=False),
)

#: the API's item fields, in column order; the upsert takes tuples in this order + bookkeeping
API_FIELDS = (
    "request_id",
    "endpoint_id",
    "runner_id",
    "sent_at",
    "started_at",
    "ended_at",
    "status_code",
    "duration",
    "billable_units",
    "json_input",
    "json_output",
)
ROW_COLUMNS = (*API_FIELDS, "status", "first_seen_at", "last_changed_at")
STATUSES = ("success", "user_error", "error", "unfinished")


def derive_status(ended_at: str | None, status_code: int | None) -> str:
    """success (2xx/3xx), user_error (4xx), error (5xx and anything else), or unfinished."""
    if ended_at is None or status_code is None:
        return "unfinished"
    if 200 <= status_code < 400:
        return "success"
    if 400 <= status_code < 500:
        return "user_error"
    return "error"


# --------------------------------------------------------------------------- connections


def is_url(db: str) -> bool:
    return "://" in db


def sqlite_path(db: str) -> Path | None:
    """The file behind a ``--db`` value, or None for a server database."""
    if not is_url(db):
        return Path(db)
    try:
        url = sa.engine.make_url(db)
    except (sa.exc.ArgumentError, ValueError):
        return None  # not a file; server_engine says what is wrong with the URL
    if url.get_backend_name() == "sqlite" and url.database and url.database != ":memory:":
        return Path(url.database)
    return None


#: bytes per page of a new SQLite database (bench/ingest_bench.py measures it against 4 KiB)
PAGE_SIZE = 16_384


def _sqlite_on_connect(dbapi_conn: sqlite3.Connection, _record: Any) -> None:
    # We issue BEGIN ourselves (see _sqlite_on_begin), so the driver must not.
    dbapi_conn.isolation_level = None
    cur = dbapi_conn.cursor()
    try:
        cur.execute("PRAGMA busy_timeout = 30000")
        # Only a new, empty file takes it, and only before WAL mode is set; a database that
        # exists keeps its page size. 16 KiB instead of SQLite's 4 KiB: a sync's bulk ingest
        # does ~15% less work (fewer B-tree pages to split, read and write; one page per
        # 16,000-byte FTS5 leaf instead of four).
        cur.execute(f"PRAGMA page_size = {PAGE_SIZE}")
        cur.execute("PRAGMA journal_mode = WAL")
        # WAL + NORMAL: a crash or kill of the process loses nothing that was committed; only
        # a power cut may lose the last transactions, and it never corrupts the file.
        cur.execute("PRAGMA synchronous = NORMAL")
        # 16 MiB: as fast as 64 MiB for the sync's writes, and 50 MiB less peak memory
        # (bench/memory_bench.py)
        cur.execute("PRAGMA cache_size = -16384")
        # after each checkpoint the WAL file is cut back to this, so an idle reader's past
        # cannot leave a huge file behind (SQLite's automatic checkpoints run every ~4 MB)
        cur.execute("PRAGMA journal_size_limit = 67108864")
        cur.execute("PRAGMA foreign_keys = ON")
    finally:
        cur.close()


def _sqlite_on_begin(conn: Connection) -> None:
    # Writers take the write lock up front, so a transaction never fails half-way with
    # SQLITE_BUSY on upgrade from a read lock; readers in WAL mode are never blocked by it.
    conn.exec_driver_sql("BEGIN IMMEDIATE")


def make_engine(db: str) -> Engine:
    """An engine for a path or URL; SQLite files are created private to the user."""
    path = sqlite_path(db)
    if path is None:
        return server_engine(db, pool_size=4)
    check_file(path)
    if not path.parent.exists():
        raise StoreError(f"folder {path.parent} does not exist")
    if path.exists() and path.stat().st_size > 0:
        _preflight(path)
    if not path.exists():
        try:
            os.close(os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600))
        except FileExistsError:
            pass
        except OSError as e:
            raise StoreError(f"cannot create {path}: {e.strerror}") from None
    # the path as the URL's database, never parsed out of URL text: in "sqlite:///q?mode=ro#x.db"
    # everything from the "?" on would be read as the URL's query, and "q" opened
    url = sa.engine.URL.create("sqlite", database=str(path))
    engine = sa.create_engine(url, poolclass=sa.pool.QueuePool, pool_size=2)
    event.listen(engine, "connect", _sqlite_on_connect)
    event.listen(engine, "begin", _sqlite_on_begin)
    return engine


#: query-string parameters of a URL that are secrets (libpq's, any case)
_SECRET_PARAMS = frozenset({"password", "sslpassword"})
_MASK = "MIRRORMASKEDSECRET"  # rendered as it is (letters only), then shown as ***


def display_db(db: str) -> str:
    """A ``--db`` value fit for messages: a URL's password masked, ``user:***@`` and
    ``?password=***`` alike."""
    if not is_url(db):
        return db
    try:
        url = sa.engine.make_url(db)
        secrets = {k: _MASK for k in url.query if k.lower() in _SECRET_PARAMS}
        if secrets:
            url = url.update_query_dict(secrets)
        return url.render_as_string(hide_password=True).replace(_MASK, "***")
    except (sa.exc.ArgumentError, ValueError):
        return db.split("://", 1)[0] + "://…"


def server_engine(db: str, **kw: Any) -> Engine:
    """An engine for a database server URL (PostgreSQL through psycopg 3), or a StoreError
    naming what is wrong with the URL."""
    try:
        url = sa.engine.make_url(normalize_url(db))
    except (sa.exc.ArgumentError, ValueError):
        raise ConfigError(
            f"{display_db(db)} is not a database URL: --db takes a SQLite file path, "
            "sqlite:///PATH, or postgresql+psycopg://USER@HOST/DBNAME"
        ) from None
    if url.get_backend_name() != "postgresql":
        raise ConfigError(
            f"unsupported database {url.get_backend_name()!r}: --db takes a SQLite file path, "
            "sqlite:///PATH, or postgresql+psycopg://USER@HOST/DBNAME"
        )
    if url.get_driver_name() != "psycopg":
        raise ConfigError(
            f"driver {url.get_driver_name()!r} is not supported: use postgresql+psycopg://…"
        )
    try:
        import psycopg  # noqa: F401
    except ImportError:
        raise StoreError(
            "PostgreSQL needs the driver: pip install 'fal-mirror[postgresql]' (psycopg 3)"
        ) from None
    kw.setdefault("pool_pre_ping", True)
    engine = sa.create_engine(url, **kw)
    event.listen(engine, "connect", _pg_on_connect)
    return engine


def _pg_on_connect(dbapi_conn: Any, _record: Any) -> None:
    from psycopg.types.string import TextLoader

    # jsonb columns arrive as their text, like SQLite's (mirror parses JSON only where
    # needed); plain json is left to psycopg: SQLAlchemy's reflection reads it as objects
    dbapi_conn.adapters.register_loader("jsonb", TextLoader)
    with dbapi_conn.cursor() as cur:
        # timestamps printed by the server (psql, mirror sql) in UTC, like the stored text
        cur.execute("SET TIME ZONE 'UTC'")
    dbapi_conn.commit()


def _preflight(path: Path) -> None:
    """Look at an existing file read-only before anything writes to it (even the WAL switch).

    A file that is not SQLite, is corrupt, or holds another application's tables is refused
    byte-for-byte untouched.
    """
    try:
        con = connect_readonly(path)
    except sqlite3.Error as e:
        raise StoreError(describe_db_error(e, str(path))) from None
    try:
        names = {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    except sqlite3.DatabaseError as e:
        raise StoreError(describe_db_error(e, str(path))) from None
    finally:
        con.close()
    if names and "alembic_version" not in names:
        shown = ", ".join(sorted(names)[:5])
        raise StoreError(
            f"{path} is not a mirror database (it has tables {shown}); "
            "point --db at a new or existing mirror file"
        )


@contextlib.contextmanager
def translate_errors(path: str) -> Iterator[None]:
    """Turn driver errors about the file into one-line StoreErrors."""
    try:
        yield
    except sa.exc.OperationalError as e:
        raise StoreError(describe_db_error(e.orig, path)) from None
    except sa.exc.DatabaseError as e:
        raise StoreError(describe_db_error(e.orig, path)) from None
    except sqlite3.DatabaseError as e:
        raise StoreError(describe_db_error(e, path)) from None


def describe_db_error(err: BaseException | None, path: str) -> str:
    path = display_db(path)
    # PostgreSQL's own message without its LINE/HINT lines; then one line whatever it was
    primary = getattr(getattr(err, "diag", None), "message_primary", None)
    text = primary or (str(err) if err is not None else "unknown database error")
    text = " ".join(text.split())
    low = text.lower()
    if "database or disk is full" in low or "disk i/o error" in low:
        return f"{path}: disk full or I/O error ({text}); free space and run again, nothing committed is lost"
    if "readonly" in low or "read-only" in low:
        return f"{path}: the database is read-only ({text}); check the file's permissions"
    if "not a database" in low or "malformed" in low or "corrupt" in low:
        return f"{path}: not a mirror database or corrupt ({text}); check the path, or restore a backup"
    if "locked" in low or "busy" in low:
        return (
            f"{path}: the database stayed locked ({text}); another connection held the write "
            "lock or a long transaction open past the busy timeout; run again"
        )
    if "unable to open" in low:
        return f"{path}: cannot open the database ({text})"
    return f"{path}: {text}"


# --------------------------------------------------------------------------- migrations


def _alembic_config(conn: Connection) -> Any:
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(resources.files("mirror.migrations")))
    cfg.attributes["connection"] = conn
    return cfg


def _script_heads() -> tuple[Any, set[str]]:
    from alembic.config import Config
    from alembic.script import ScriptDirectory

    cfg = Config()
    cfg.set_main_option("script_location", str(resources.files("mirror.migrations")))
    script = ScriptDirectory.from_config(cfg)
    known = {rev.revision for rev in script.walk_revisions()}
    return script, known


def current_revision(conn: Connection) -> str | None:
    from alembic.runtime.migration import MigrationContext

    return MigrationContext.configure(conn).get_current_revision()


def schema_state(engine: Engine) -> tuple[str | None, str]:
    """(the database's revision, this version's head); raises if the file is from the future."""
    script, known = _script_heads()
    head = script.get_current_head()
    with engine.connect() as conn:
        rev = current_revision(conn)
        conn.rollback()
    if rev is not None and rev not in known:
        raise SchemaTooNewError(
            f"this database has schema revision {rev}, newer than this mirror knows "
            f"(head {head}); upgrade mirror (pip install -U fal-mirror)"
        )
    return rev, str(head)


def _check_foreign(engine: Engine, rev: str | None, path: str) -> None:
    """Refuse a file that holds tables but is not a mirror database."""
    if rev is not None:
        return
    with engine.connect() as conn:
        names = set(sa.inspect(conn).get_table_names())
        conn.rollback()
    _refuse_foreign(names, path)


def _refuse_foreign(names: set[str], path: str) -> None:
    if names - {"alembic_version"}:
        raise StoreError(
            f"{path} is not a mirror database (it has tables {', '.join(sorted(names)[:5])}); "
            "point --db at a new or existing mirror file"
        )


def upgrade(engine: Engine, db: str, *, lock_wait: float = 10.0) -> bool:
    """Bring the schema to head; True if anything was applied.

    Under the writer lock, after a backup of the file (when it already holds a schema), and
    inside one transaction: a kill during an upgrade leaves the old or the new schema.
    """
    from alembic import command

    with translate_errors(db):
        rev, head = schema_state(engine)
        if rev == head:
            return False
        path = sqlite_path(db)
        if path is None:
            # PostgreSQL: DDL is transactional; a transaction-scoped advisory lock makes
            # several machines upgrading at once take turns, and the last ones find it done.
            # Everything is read again under the lock: what was read before it may have been
            # another machine's migration half-way (tables, then the revision).
            with engine.begin() as conn:
                conn.execute(sa.select(sa.func.pg_advisory_xact_lock(MIGRATION_LOCK_KEY)))
                rev = current_revision(conn)
                if rev == head:
                    return False
                if rev is None:
                    _refuse_foreign(set(sa.inspect(conn).get_table_names()), db)
                command.upgrade(_alembic_config(conn), "head")
            return True
        _check_foreign(engine, rev, db)
        with lock.hold(path, wait=lock_wait):
            rev, head = schema_state(engine)  # another process may have upgraded meanwhile
            if rev == head:
                return False
            if rev is not None:
                backup_sqlite(engine, path.with_name(f"{path.name}.bak-{rev}"))
            with engine.begin() as conn:
                command.upgrade(_alembic_config(conn), "head")
        return True


#: PostgreSQL advisory lock keys (64-bit): one for migrations; sync targets hash their names
MIGRATION_LOCK_KEY = 0x6D6972726F720001  # "mirror" + 1


def backup_sqlite(engine: Engine, dest: Path) -> None:
    """A consistent copy of a live database (SQLite's online backup API), private to the user."""
    tmp = dest.with_name(dest.name + ".tmp")
    fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
    os.close(fd)
    raw = engine.raw_connection()
    try:
        target = sqlite3.connect(tmp)
        try:
            raw.driver_connection.backup(target)  # type: ignore[union-attr]
        finally:
            target.close()
    finally:
        raw.close()
    os.replace(tmp, dest)


# --------------------------------------------------------------------------- the store


_MAX_ROWID = "SELECT max(rowid) FROM requests"
# A batch's own indexing (migration 0005): while sync_batch has its row, inside the upsert's
# transaction only, the insert triggers stand aside and these two statements do their work
# for all the rows the batch inserted (rowid > ?): the same index entries, and the same
# integer sums per hour as the row-by-row trigger of migration 0002, added group by group.
_BATCH_BEGIN = "INSERT OR REPLACE INTO sync_batch (batch) VALUES (1)"
_BATCH_END = "DELETE FROM sync_batch"
_INDEX_NEW = (
    "INSERT INTO requests_fts (rowid, json_input, json_output) "
    "SELECT rowid, json_input, json_output FROM requests WHERE rowid > ?"
)
_SUMMARIZE_NEW = """
INSERT INTO summary_hourly (hour, endpoint_id, status, requests, durations, duration_us,
                            billed, billable_micro)
SELECT substr(ended_at, 1, 13) || ':00:00Z' AS h, endpoint_id, status, count(*),
       count(duration), COALESCE(sum(CAST(round(duration * 1000000) AS INTEGER)), 0),
       count(billable_units), COALESCE(sum(CAST(round(billable_units * 1000000) AS INTEGER)), 0)
FROM requests WHERE rowid > ? AND ended_at IS NOT NULL
GROUP BY h, endpoint_id, status
ON CONFLICT (hour, endpoint_id, status) DO UPDATE SET
    requests = requests + excluded.requests,
    durations = durations + excluded.durations,
    duration_us = duration_us + excluded.duration_us,
    billed = billed + excluded.billed,
    billable_micro = billable_micro + excluded.billable_micro
"""
#: the error logged for a run found ``running`` by the next sync holding the lock
STALE_RUN_ERROR = (
    "the process died without recording the outcome (killed, crashed, or the machine "
    "stopped); found by the next sync. Rows it committed are kept; windows it had not finished are "
    "walked again"
)
#: rows per upsert statement at most (bench/ingest_bench.py: 500-2,000 all do well)
ROWS_PER_STATEMENT = 1_000


def _is_hour(text: str) -> bool:
    """Whether ``YYYY-MM-DDTHH`` names a real hour."""
    try:
        from_text(text + ":00:00Z")
    except ValueError:
        return False
    return True


def _ended_at(row: tuple[Any, ...]) -> str:
    return row[5] or ""


def _chunks(n: int, most: int) -> Iterator[slice]:
    """Slices covering range(n): as many of ``most`` as fit, then the rest in powers of two,
    so that few distinct statements are ever prepared (and SQLite's cache keeps them)."""
    start = 0
    while n - start >= most:
        yield slice(start, start + most)
        start += most
    size = 1 << max(0, (most - 1).bit_length())
    while start < n:
        while size > n - start:
            size >>= 1
        yield slice(start, start + size)
        start += size


class UpsertResult(NamedTuple):
    inserted: int
    updated: int


class Store:
    """A migrated database: the upsert, window state and run log. Not thread-safe: one writer."""

    def __init__(self, engine: Engine, db: str) -> None:
        self.engine = engine
        self.db = db
        self.dialect = engine.dialect.name
        self._upsert_sql: dict[tuple[bool, bool, int, bool], str] = {}
        #: whether the schema has migration 0005's sync_batch (SQLite, at 0005 or later)
        self._batch_indexing: bool | None = None
        #: opened by `open_reader`
        self._reader = False

    @classmethod
    def open(cls, db: str, *, migrate: bool = True) -> Store:
        engine = make_engine(db)
        with translate_errors(db):
            if migrate:
                upgrade(engine, db)
            else:
                rev, head = schema_state(engine)
                if rev != head:
                    raise StoreError(
                        f"{display_db(db)}: schema is at {rev}, expected {head}; run mirror db upgrade"
                    )
        return cls(engine, db)

    @classmethod
    def open_reader(cls, db: str) -> Store:
        """A store that only reads (`mirror verify` without --repair): the readers' engine,
        so that a mirror in a folder this process cannot write is read all the same (see
        `mirror.sqlitefile`); an older schema is brought to head first, as every command does.
        """
        from mirror.query import ensure_schema, reader_engine

        engine = reader_engine(db)
        try:
            ensure_schema(db, engine)
        except BaseException:
            engine.dispose()
            raise
        store = cls(engine, db)
        store._reader = True
        return store

    def close(self) -> None:
        self.engine.dispose()
        path = sqlite_path(self.db) if self._reader else None
        if path is not None:
            from mirror.query import tidy_wal

            tidy_wal(path)  # the -wal/-shm a read-only connection may leave behind

    # -- the upsert -------------------------------------------------------------------

    def _upsert_statement(
        self, payloads: bool, billing: bool, rows: int = 1, *, one_stamp: bool = False
    ) -> str:
        """INSERT … ON CONFLICT DO UPDATE of the fields this sync fetched, only when changed.

        Payloads and billable units are fetched only on request; when a sync did not fetch
        them, stored values are left alone. When the API returns null for one that is stored
        (payloads expire after 30 days at fal; billing is never un-recorded), the stored value
        is kept: the mirror outlives the platform's retention.

        ``rows`` > 1: one statement for that many rows (a multi-row VALUES list).
        ``one_stamp`` (SQLite): every row's ``first_seen_at`` and ``last_changed_at`` are
        parameter ``?1``, bound once, and the rows' own fields follow from ``?2``.
        """
        key = (payloads, billing, rows, one_stamp)
        sql = self._upsert_sql.get(key)
        if sql is not None:
            return sql
        always = ["endpoint_id", "runner_id", "sent_at", "started_at", "ended_at",
                  "status_code", "duration", "status"]  # fmt: skip
        kept = (["json_input", "json_output"] if payloads else []) + (
            ["billable_units"] if billing else []
        )
        sets = [f"{c} = excluded.{c}" for c in always]
        sets += [f"{c} = COALESCE(excluded.{c}, requests.{c})" for c in kept]
        sets.append("last_changed_at = excluded.last_changed_at")
        changed = [f"requests.{c} IS NOT excluded.{c}" for c in always]
        changed += [
            f"(excluded.{c} IS NOT NULL AND requests.{c} IS NOT excluded.{c})" for c in kept
        ]
        if self.dialect == "postgresql":
            changed = [c.replace(" IS NOT ", " IS DISTINCT FROM ") for c in changed]
            values = ", ".join([f"({', '.join(['%s'] * len(ROW_COLUMNS))})"] * rows)
        elif one_stamp:
            n = len(ROW_COLUMNS) - 2
            values = ", ".join(
                "(" + "".join(f"?{2 + i * n + j}, " for j in range(n)) + "?1, ?1)"
                for i in range(rows)
            )
        else:
            values = ", ".join([f"({', '.join(['?'] * len(ROW_COLUMNS))})"] * rows)
        sql = (
            f"INSERT INTO requests ({', '.join(ROW_COLUMNS)}) VALUES {values} "
            f"ON CONFLICT (request_id) DO UPDATE SET {', '.join(sets)} "
            f"WHERE {' OR '.join(changed)}"
        )
        self._upsert_sql[key] = sql
        return sql

    def upsert(
        self,
        conn: Connection,
        rows: Sequence[tuple[Any, ...]],
        *,
        payloads: bool,
        billing: bool,
        now: str,
    ) -> UpsertResult:
        """Upsert API rows (tuples in ``API_FIELDS`` order plus ``status``).

        Returns how many rows were new and how many existing rows actually changed. On
        SQLite (revision 0005) the rows it inserts are indexed and summarized once, at the
        end (``_INDEX_NEW``, ``_SUMMARIZE_NEW``); if it raises, the caller's transaction must
        be rolled back (``engine.begin()`` does), as with any failed write.
        """
        if not rows:
            return UpsertResult(0, 0)
        # last occurrence of an id wins, as if the rows were applied one after another
        by_id = {r[0]: r for r in rows}
        # In ended_at order (unfinished rows first): new rows then land side by side in the
        # time indexes instead of on scattered pages (bench/ingest_bench.py).
        ordered = sorted(by_id.values(), key=_ended_at)
        if self.dialect == "postgresql":
            return self._upsert_pg(conn, ordered, payloads=payloads, billing=billing, now=now)
        # SQLite: many rows per statement, not one statement per row (executemany). Triggers
        # make SQLite open a statement savepoint per statement, and FTS5 writes its pending
        # terms out at every savepoint: row by row that is one tiny segment per row to merge
        # later, and 3x slower ingest with the FTS triggers of migration 0002.
        #
        # Counted without looking the ids up first: each statement's change count is inserted
        # + actually updated rows (an update its WHERE skips counts 0, trigger changes never
        # count). A new row takes rowid max(rowid) + 1 (no AUTOINCREMENT, the upsert deletes
        # nothing), and the transaction holds the write lock, so max(rowid) moves by exactly
        # the number inserted; max(rowid) is one seek.
        most = self._rows_per_statement(conn)
        before = conn.exec_driver_sql(_MAX_ROWID).scalar() or 0
        batch = self._has_batch_indexing(conn)
        changed = 0
        if batch:
            conn.exec_driver_sql(_BATCH_BEGIN)
        try:
            for chunk in _chunks(len(ordered), most):
                n = chunk.stop - chunk.start
                sql = self._upsert_statement(payloads, billing, n, one_stamp=True)
                # the stamp once, then the rows' fields, flattened without a Python loop
                flat = (now, *chain.from_iterable(ordered[chunk]))
                changed += conn.exec_driver_sql(sql, flat).rowcount
            inserted = (conn.exec_driver_sql(_MAX_ROWID).scalar() or 0) - before
            if batch and inserted:
                conn.exec_driver_sql(_INDEX_NEW, (before,))
                conn.exec_driver_sql(_SUMMARIZE_NEW, (before,))
        except BaseException:
            # the caller rolls the transaction back; the gate goes first all the same, so
            # that no commit can ever keep it
            if batch:
                with contextlib.suppress(Exception):
                    conn.exec_driver_sql(_BATCH_END)
            raise
        if batch:
            conn.exec_driver_sql(_BATCH_END)
        return UpsertResult(inserted, changed - inserted)

    def _has_batch_indexing(self, conn: Connection) -> bool:
        """Migration 0005 applied: Store.open makes sure of it, but benchmarks and tests also
        drive the upsert on older revisions."""
        if self._batch_indexing is None:
            self._batch_indexing = (
                conn.exec_driver_sql(
                    "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'sync_batch'"
                ).first()
                is not None
            )
        return self._batch_indexing

    def _rows_per_statement(self, conn: Connection) -> int:
        if self.dialect != "sqlite":
            return ROWS_PER_STATEMENT
        limit = conn.connection.driver_connection.getlimit(  # type: ignore[union-attr]
            sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER
        )
        return max(1, min(ROWS_PER_STATEMENT, limit // len(ROW_COLUMNS)))

    def insert_exact(self, conn: Connection, rows: Sequence[tuple[Any, ...]]) -> None:
        """Rows in ``ROW_COLUMNS`` order, bookkeeping stamps included, stored as they are
        (``mirror copy``): the same multi-row statements as the upsert."""
        for chunk in _chunks(len(rows), self._rows_per_statement(conn)):
            sql = self._upsert_statement(True, True, chunk.stop - chunk.start)
            conn.exec_driver_sql(sql, tuple(chain.from_iterable(rows[chunk])))

    def _upsert_pg(
        self,
        conn: Connection,
        ordered: Sequence[tuple[Any, ...]],
        *,
        payloads: bool,
        billing: bool,
        now: str,
    ) -> UpsertResult:
        """PostgreSQL: multi-row statements too, counted by ``RETURNING (xmax = 0)``.

        A row comes back when it was inserted (``xmax`` 0) or actually updated; one whose
        values did not change is skipped by the upsert's WHERE and returns nothing.
        """
        inserted = updated = 0
        most = ROWS_PER_STATEMENT
        for chunk in _chunks(len(ordered), most):
            sql = self._upsert_statement(payloads, billing, chunk.stop - chunk.start)
            flat = tuple(chain.from_iterable(map(add, ordered[chunk], repeat((now, now)))))
            for (fresh,) in conn.exec_driver_sql(sql + " RETURNING (xmax = 0)", flat):
                if fresh:
                    inserted += 1
                else:
                    updated += 1
        return UpsertResult(inserted, updated)

    # -- targets and windows ------------------------------------------------------------

    def targets(self) -> list[str]:
        with self.engine.connect() as conn:
            out = [
                r[0]
                for r in conn.execute(
                    sa.select(sync_targets.c.target).order_by(sync_targets.c.target)
                )
            ]
            conn.rollback()
        return out

    def add_targets_in(self, conn: Connection, targets: Iterable[str], now: str) -> None:
        have = {r[0] for r in conn.execute(sa.select(sync_targets.c.target))}
        new = [{"target": t, "added_at": now} for t in targets if t not in have]
        if new:
            conn.execute(sync_targets.insert(), new)

    def request_range(
        self,
        conn: Connection,
        targets: Iterable[str],
        now: str,
        *,
        since: str | None,
        default_from: str,
        narrow: bool = False,
    ) -> None:
        """Record what each target is asked to cover, before anything is fetched for it.

        A new target starts at ``since`` or, without it, at ``default_from``. An existing one
        only ever reaches further back (``since`` earlier than its stored start), so a later
        run with a later ``--since`` cannot silently drop what an interrupted one asked for;
        ``narrow`` moves the start to ``since`` on purpose. A target a migrated file knew
        nothing of (NULL) takes what it covers, or ``default_from`` when it covers nothing.
        """
        t = sync_targets.c
        w = sync_windows.c
        for target in targets:
            self._insert_ignore(
                conn,
                sync_targets,
                {"target": target, "added_at": now, "requested_from": since or default_from},
            )
            mine = t.target == target
            if since is not None:
                further = t.requested_from.is_(None) | (t.requested_from > since)
                conn.execute(
                    sync_targets.update()
                    .where(mine, sa.true() if narrow else further)
                    .values(requested_from=since)
                )
            covered = (
                sa.select(sa.func.min(w.window_start)).where(w.target == target).scalar_subquery()
            )
            conn.execute(
                sync_targets.update()
                .where(mine, t.requested_from.is_(None))
                .values(requested_from=sa.func.coalesce(covered, sa.literal(default_from, Instant)))
            )

    def _insert_ignore(self, conn: Connection, table: sa.Table, values: dict[str, Any]) -> None:
        """Insert a row unless its key is taken (another process may register it too)."""
        insert = postgresql.insert if self.dialect == "postgresql" else sqlite_insert
        conn.execute(insert(table).values(**values).on_conflict_do_nothing())

    def forget_if_empty(self, target: str) -> bool:
        """Drop a target that holds no row and no completed window; True if it was dropped."""
        w = sync_windows.c
        with self.engine.begin() as conn:
            held = conn.execute(
                sa.select(
                    sa.exists().where(w.target == target) | sa.exists().where(target_clause(target))
                )
            ).scalar()
            if held:
                return False
            conn.execute(sync_rechecks.delete().where(sync_rechecks.c.target == target))
            gone = conn.execute(sync_targets.delete().where(sync_targets.c.target == target))
        return bool(gone.rowcount)

    def requested_from(self, target: str) -> str | None:
        """Where the target's requested range starts (None: nothing recorded yet)."""
        t = sync_targets.c
        with self.engine.connect() as conn:
            out = conn.execute(
                sa.select(t.requested_from).where(t.target == target)
            ).scalar_one_or_none()
            conn.rollback()
        return out

    def completed_until(self, targets: Iterable[str]) -> str | None:
        """The latest end of any completed interval of these targets (None: none yet)."""
        w = sync_windows.c
        with self.engine.connect() as conn:
            out = conn.execute(
                sa.select(sa.func.max(w.window_end)).where(w.target.in_(list(targets)))
            ).scalar_one_or_none()
            conn.rollback()
        return out

    def completed(self, target: str, conn: Connection | None = None) -> list[tuple[str, str]]:
        """The target's completed intervals, sorted, as canonical text pairs."""
        q = (
            sa.select(sync_windows.c.window_start, sync_windows.c.window_end)
            .where(sync_windows.c.target == target)
            .order_by(sync_windows.c.window_start)
        )
        if conn is not None:
            return [(r[0], r[1]) for r in conn.execute(q)]
        with self.engine.connect() as c:
            out = [(r[0], r[1]) for r in c.execute(q)]
            c.rollback()
        return out

    def mark_complete(self, conn: Connection, target: str, start: str, end: str, now: str) -> None:
        """Record [start, end) complete, merged with every interval it touches or overlaps."""
        w = sync_windows.c
        touching = conn.execute(
            sa.select(w.window_start, w.window_end).where(
                w.target == target, w.window_start <= end, w.window_end >= start
            )
        ).all()
        lo = min([start, *(r[0] for r in touching)])
        hi = max([end, *(r[1] for r in touching)])
        if touching:
            conn.execute(
                sync_windows.delete().where(
                    w.target == target, w.window_start.in_([r[0] for r in touching])
                )
            )
        conn.execute(
            sync_windows.insert().values(
                target=target, window_start=lo, window_end=hi, completed_at=now
            )
        )

    def unfinished(self, target: str, before: str, limit: int) -> list[tuple[str, str, str]]:
        """Unfinished rows of a target sent before ``before``: (request_id, endpoint_id, sent_at)."""
        r = requests.c
        q = (
            sa.select(r.request_id, r.endpoint_id, r.sent_at)
            .where(target_clause(target), r.ended_at.is_(None), r.sent_at < before)
            .order_by(r.sent_at)
            .limit(limit)
        )
        with self.engine.connect() as conn:
            out = [(a, b, c) for a, b, c in conn.execute(q)]
            conn.rollback()
        return out

    def hourly_counts(self, target: str, start: str, end: str) -> dict[str, int]:
        """Rows the mirror holds per hour of ``ended_at`` (hour as ``YYYY-MM-DDTHH``).

        An hour that does not exist (an ``ended_at`` such as ``…T25:…``, stored before
        timestamps were parsed whole) is left out: the counts only shape the windows.
        """
        r = requests.c
        hour = hour_of(r.ended_at)
        q = (
            sa.select(hour, sa.func.count())
            .where(target_clause(target), r.ended_at >= start, r.ended_at < end)
            .group_by(hour)
        )
        with self.engine.connect() as conn:
            out = {h: int(n) for h, n in conn.execute(q) if _is_hour(h)}
            conn.rollback()
        return out

    def rechecked(self, target: str) -> dict[str, str]:
        """tier -> when the target's older history was last re-checked."""
        c = sync_rechecks.c
        with self.engine.connect() as conn:
            out = {
                t: at
                for t, at in conn.execute(sa.select(c.tier, c.checked_at).where(c.target == target))
            }
            conn.rollback()
        return out

    def mark_rechecked(self, target: str, tiers: Iterable[str], now: str) -> None:
        c = sync_rechecks.c
        with self.engine.begin() as conn:
            for tier in tiers:
                conn.execute(sync_rechecks.delete().where(c.target == target, c.tier == tier))
                conn.execute(
                    sync_rechecks.insert().values(target=target, tier=tier, checked_at=now)
                )

    # -- the run log --------------------------------------------------------------------

    def start_run(
        self,
        targets: Sequence[str],
        now: datetime,
        *,
        since: datetime | None = None,
        default_from: datetime | None = None,
        narrow: bool = False,
    ) -> int:
        """Log a new run as ``running``; returns its id.

        With ``default_from``, the targets and the range they are asked to cover are recorded
        in the same transaction (``request_range``), before the run fetches anything.

        On a SQLite file whose writer lock this process holds, no other run can be going on:
        any run still logged ``running`` belongs to a process that died without recording
        its outcome (SIGKILL, a crash, the machine stopping), and is logged ``killed`` now.
        (Not on a server database, where several machines may sync at once.)
        """
        with self.engine.begin() as conn:
            if self.holds_sqlite_lock():
                conn.execute(
                    sync_runs.update()
                    .where(sync_runs.c.outcome == "running")
                    .values(outcome="killed", ended_at=to_text(now), error=STALE_RUN_ERROR)
                )
            if default_from is not None:
                self.request_range(
                    conn,
                    targets,
                    to_text(now),
                    since=to_text(since) if since else None,
                    default_from=to_text(default_from),
                    narrow=narrow,
                )
            res = conn.execute(
                sync_runs.insert().values(
                    started_at=to_text(now), outcome="running", targets=",".join(targets)
                )
            )
            return int(res.inserted_primary_key[0])  # type: ignore[index]

    def holds_sqlite_lock(self) -> bool:
        """Whether this is a SQLite file and this process holds its writer lock."""
        if self.dialect != "sqlite":
            return False
        path = sqlite_path(self.db)
        return path is not None and lock.is_held(path)

    def finish_run(
        self,
        run_id: int,
        now: datetime,
        outcome: str,
        counts: dict[str, int],
        error: str | None,
        clock_skew: float | None = None,
    ) -> None:
        """Record how a run ended. ``error`` is stored with every registered secret redacted
        (``mirror.redact``): it is shown by `mirror status` and Datasette and carried by
        `mirror copy`. Its other characters are kept; what prints it makes them safe."""
        values: dict[str, Any] = {
            "ended_at": to_text(now),
            "outcome": outcome,
            "error": None if error is None else redact(error),
        }
        if clock_skew is not None:
            values["clock_skew"] = clock_skew
        with self.engine.begin() as conn:
            conn.execute(
                sync_runs.update().where(sync_runs.c.id == run_id).values(**values, **counts)
            )

    def last_clock_skew(self) -> float | None:
        """The clock skew the latest run that measured one found (seconds, local - API)."""
        c = sync_runs.c
        with self.engine.connect() as conn:
            out = conn.execute(
                sa.select(c.clock_skew)
                .where(c.clock_skew.is_not(None))
                .order_by(c.id.desc())
                .limit(1)
            ).scalar_one_or_none()
            conn.rollback()
        return out

    def checkpoint(self) -> None:
        """Fold the WAL back into the database and truncate it, if no reader is in the way.

        Never waits: a reader in the middle of a long transaction keeps its view, and the
        next run (or SQLite's automatic checkpoint) finishes the job.
        """
        if self.dialect != "sqlite":
            return
        with contextlib.suppress(sa.exc.DBAPIError, sqlite3.Error):
            raw = self.engine.raw_connection()
            try:
                con = raw.driver_connection
                con.execute("PRAGMA busy_timeout = 0")  # type: ignore[union-attr]
                try:
                    con.execute("PRAGMA wal_checkpoint(TRUNCATE)")  # type: ignore[union-attr]
                finally:
                    con.execute("PRAGMA busy_timeout = 30000")  # type: ignore[union-attr]
            finally:
                raw.close()


def target_clause(target: str) -> sa.ColumnElement[bool]:
    """Rows a target covers: the id itself, and for an app id its routes (``owner/app/…``).

    A range, not LIKE: ids contain ``_`` (a LIKE wildcard), and a range uses the index.
    """
    r = requests.c.endpoint_id
    return sa.or_(r == target, sa.and_(r >= target + "/", r < target + "0"))
