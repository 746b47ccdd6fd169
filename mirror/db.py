"""Connecting to a mirror database: URLs and paths, engines, errors, and the schema's upgrades.

- **URLs and paths.** ``--db`` is a SQLite file path, ``sqlite:///PATH``, or a PostgreSQL
  URL (psycopg 3); `display_db` masks a URL's password wherever one is shown.
- **Engines.** Writers' engines (`make_engine`) set SQLite's PRAGMAs and take the write lock
  at BEGIN; readers' engines (`reader_engine`) never write and never take a lock. On
  PostgreSQL both print timestamps in UTC and hand ``jsonb`` over as its text.
- **Errors.** Driver errors about the database become one-line ``StoreError`` messages.
- **Migrations.** The schema (``mirror.schema``) is created and changed only by the Alembic
  revisions in ``migrations/`` (shipped as ``mirror.migrations``), brought to head by
  `upgrade`: under the writer lock (an advisory lock on PostgreSQL), after a backup of a
  SQLite file, in one transaction.
- **Files.** The backup of a live SQLite file, and tidying the ``-wal``/``-shm`` files a
  read-only open leaves behind.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
from collections.abc import Iterator
from importlib import resources
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.engine import Connection, Engine

from mirror import interrupts, lock
from mirror.errors import ConfigError, SchemaTooNewError, StoreError
from mirror.sqlitefile import check_file, connect_readonly, sqlite_uri

# --------------------------------------------------------------------------- URLs and paths


def is_postgresql(db: str) -> bool:
    return is_url(db) and sa.engine.make_url(normalize_url(db)).get_backend_name() == "postgresql"


def normalize_url(db: str) -> str:
    """``postgresql://`` and ``postgres://`` mean psycopg 3, the driver mirror ships with."""
    for prefix in ("postgresql://", "postgres://"):
        if db.startswith(prefix):
            return "postgresql+psycopg://" + db[len(prefix) :]
    return db


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


# --------------------------------------------------------------------------- engines

#: how long a connection waits for another's lock before "database is locked" (ms)
BUSY_TIMEOUT_MS = 30_000

#: bytes per page of a new SQLite database (bench/ingest_bench.py measures it against 4 KiB)
PAGE_SIZE = 16_384


def sqlite_on_connect(dbapi_conn: sqlite3.Connection, _record: Any) -> None:
    # We issue BEGIN ourselves (see _sqlite_on_begin), so the driver must not.
    dbapi_conn.isolation_level = None
    cur = dbapi_conn.cursor()
    try:
        cur.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
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


@contextlib.contextmanager
def reading(engine: Engine) -> Iterator[Connection]:
    """A connection for one short read, rolled back at its end.

    On SQLite every transaction of a writer's engine takes the write lock (BEGIN
    IMMEDIATE, above), reads too. A Ctrl-C raised in the middle of SQLAlchemy's bookkeeping
    could leave the connection checked out with that lock held, and what the command
    records next (a sync's outcome) would wait for it in vain; so the read runs whole
    (``interrupts.deferred``).
    """
    with interrupts.deferred(), engine.connect() as conn:
        try:
            yield conn
        finally:
            conn.rollback()


@contextlib.contextmanager
def writing(engine: Engine) -> Iterator[Connection]:
    """A connection for one short write, committed whole at its end (or rolled back), an
    interrupt meanwhile raised after it (see ``reading``)."""
    with interrupts.deferred(), engine.begin() as conn:
        yield conn


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
    event.listen(engine, "connect", sqlite_on_connect)
    event.listen(engine, "begin", _sqlite_on_begin)
    return engine


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


def reader_engine(db: str, *, busy_timeout_ms: int = BUSY_TIMEOUT_MS) -> Engine:
    """An engine that only reads; for a SQLite file that must already exist.

    Opening never creates a database: ``mode=ro`` refuses a missing file, and a path that
    does not exist is reported before SQLite is asked at all.
    """
    path = sqlite_path(db)
    if path is None:
        return _pg_reader(db)
    if not path.exists():
        raise ConfigError(f"{db} does not exist; run mirror sync --db {db} first")
    if path.is_dir():
        raise ConfigError(f"{db} is a directory, not a database file")
    check_file(path)
    return _sqlite_reader(path, busy_timeout_ms)


def _sqlite_reader(path: Path, busy_timeout_ms: int) -> Engine:
    def connect() -> sqlite3.Connection:
        return connect_readonly(path, check_same_thread=False)

    engine = sa.create_engine("sqlite+pysqlite://", creator=connect, poolclass=sa.pool.NullPool)

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: sqlite3.Connection, _record: Any) -> None:
        # we issue BEGIN ourselves: the driver would not for SELECTs, leaving each statement
        # its own snapshot
        dbapi_conn.isolation_level = None
        # waits out the rare moments a WAL reader can be turned away (a checkpoint's restart)
        dbapi_conn.execute(f"PRAGMA busy_timeout = {int(busy_timeout_ms)}")

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        # a deferred (read) transaction: every statement until rollback sees one snapshot,
        # and in WAL mode it never waits for, nor blocks, a writer
        conn.exec_driver_sql("BEGIN")

    return engine


def _pg_reader(db: str) -> Engine:
    """A PostgreSQL engine whose every transaction is READ ONLY and REPEATABLE READ.

    The same engine setup as the writers' (timestamps in UTC, JSON as its text), and one
    snapshot per transaction: `stats` and `status` read several statements that must agree.
    """
    engine = make_engine(db)

    @event.listens_for(engine, "connect")
    def _read_only(dbapi_conn: Any, _record: Any) -> None:
        with dbapi_conn.cursor() as cur:
            cur.execute(
                "SET SESSION CHARACTERISTICS AS TRANSACTION ISOLATION LEVEL REPEATABLE READ, "
                "READ ONLY"
            )
        dbapi_conn.commit()

    return engine


# --------------------------------------------------------------------------- errors


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


def alembic_config(conn: Connection) -> Any:
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(resources.files("mirror.migrations")))
    cfg.attributes["connection"] = conn
    return cfg


def script_heads() -> tuple[Any, set[str]]:
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


#: the newest revision in ``migrations/versions`` (a test holds it to Alembic's head): a
#: database already there is recognized with one query, without loading Alembic and its
#: scripts, which would cost every cron run ~0.15 s of CPU before its first call
HEAD_REVISION = "0015"


def _stored_revision(conn: Connection) -> str | None:
    """The revision the database records (Alembic's one-row ``alembic_version``), or None
    when it records none."""
    if not sa.inspect(conn).has_table("alembic_version"):
        return None
    revs = [r for (r,) in conn.exec_driver_sql("SELECT version_num FROM alembic_version")]
    return revs[0] if len(revs) == 1 else current_revision(conn)


def schema_state(engine: Engine) -> tuple[str | None, str]:
    """(the database's revision, this version's head); raises if the file is from the future."""
    with engine.connect() as conn:
        rev = _stored_revision(conn)
        conn.rollback()
    if rev == HEAD_REVISION:
        return rev, HEAD_REVISION
    script, known = script_heads()
    head = script.get_current_head()
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
    with translate_errors(db):
        rev, head = schema_state(engine)
        if rev == head:
            return False
        from alembic import command

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
                command.upgrade(alembic_config(conn), "head")
            return True
        _check_foreign(engine, rev, db)
        with lock.hold(path, wait=lock_wait):
            rev, head = schema_state(engine)  # another process may have upgraded meanwhile
            if rev == head:
                return False
            if rev is not None:
                backup_sqlite(engine, path.with_name(f"{path.name}.bak-{rev}"))
            with engine.begin() as conn:
                command.upgrade(alembic_config(conn), "head")
        return True


#: PostgreSQL advisory lock keys (64-bit): one for migrations; sync targets hash their names
MIGRATION_LOCK_KEY = 0x6D6972726F720001  # "mirror" + 1


def ensure_schema(db: str, engine: Engine) -> None:
    """Refuse a file that is not a mirror; bring an older mirror's schema to head first.

    The upgrade is what every mirror command does (under the writer lock, after a backup);
    an up-to-date file is never written.
    """
    with translate_errors(db):
        rev, head = schema_state(engine)
    if rev is None:
        raise StoreError(f"{display_db(db)} is not a mirror database (no schema); check --db")
    if rev != head:
        writer = make_engine(db)
        try:
            upgrade(writer, db)
        finally:
            writer.dispose()


# --------------------------------------------------------------------------- files


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


def tidy_wal(path: Path) -> None:
    """Remove the ``-wal``/``-shm`` files a read-only open left behind, when nobody uses them.

    A read-only connection to a WAL database creates those two files but may not delete them
    when it closes. When they did not exist before, the last connection to close should have
    removed them; a short read-write open (which reads nothing and writes nothing: the WAL is
    empty) lets SQLite do that itself, and does nothing at all while a sync has the file open.
    """
    wal = path.with_name(path.name + "-wal")
    if not wal.exists() or wal.stat().st_size != 0:
        return
    with contextlib.suppress(sqlite3.Error, OSError):
        con = sqlite3.connect(sqlite_uri(path, mode="rw"), uri=True, timeout=0.1)
        try:
            con.execute("PRAGMA query_only = 1")
            con.execute("SELECT count(*) FROM sqlite_master").fetchall()
        finally:
            con.close()
