"""`mirror sql`: run any SQL a user types against the mirror, and be sure it only reads.

Read-only by construction, in layers that each stand on their own, none of which looks at
the statement's text:

1. The file is opened with ``mode=ro`` (`mirror.sqlitefile.connect_readonly`): SQLite itself
   refuses to write it.
2. An authorizer allows only reading: SELECT, reading columns, functions (except
   ``load_extension``), recursive CTEs, and a short list of PRAGMAs that report without
   setting anything. Everything else is denied, including ATTACH (which also stops
   ``VACUUM INTO``, since SQLite attaches its target first), temp tables and transactions.
3. ``PRAGMA query_only`` is set before the authorizer goes in.
4. Python's ``execute`` runs exactly one statement: ``SELECT 1; DROP TABLE x`` is refused.

And bounded, so that no statement can hang the terminal, hold a WAL snapshot forever or take
the machine's memory:

- Time: a timer thread interrupts the statement (``sqlite3_interrupt``) when its time limit
  is up, reading its rows included. The clock runs outside the statement: SQLite's progress
  handler counts VM steps, and one function call (a 100 MB ``printf``) is a single step.
- One value: no string or blob may be read or built past `MAX_VALUE_BYTES`
  (``SQLITE_LIMIT_LENGTH``): ``hex(randomblob(499999999))`` is refused, not 2.4 GB. (SQLite's
  ``printf`` past the limit gives NULL, after the work: the clock stops that one.)
- All values together: SQLite's heap is capped at `HEAP_LIMIT_BYTES` (``hard_heap_limit``,
  process-wide and only ever lowered: `mirror sql` runs one statement and exits).
- Ctrl-C and SIGTERM: `interrupt` (called by the CLI's signal handler) stops the statement
  the same way, and it ends with ``KeyboardInterrupt`` rather than an error.

On PostgreSQL (`PgReadOnlyDatabase`) the layers are the server's own:

1. The session's ``default_transaction_read_only`` is on, and the statement runs inside a
   ``BEGIN READ ONLY`` transaction that has already taken its snapshot, so it cannot turn
   itself read-write (``SET TRANSACTION READ WRITE``, ``set_config(...)``: PostgreSQL
   refuses that after the first query). Every write, DDL, ``nextval`` and ``SELECT ... FOR
   UPDATE`` fails with PostgreSQL's "cannot execute ... in a read-only transaction". The
   transaction is always rolled back, never committed.
2. The statement is parsed and described (the extended protocol's Parse/Describe) before
   it runs: more than one statement is refused by the server's parser, and a statement
   that returns no rows (``COPY ... TO PROGRAM``, ``DO``, ``SET``, ``COMMIT``, DDL, ``LISTEN``)
   is refused without running. ``COPY`` in particular is not stopped by a read-only
   transaction, which is why this layer exists.
3. ``statement_timeout`` is the time limit, set for this transaction only (``SET LOCAL``).

What a read-only transaction does not stop is what only a privileged role may do anyway
(``pg_terminate_backend``, server file functions such as ``lo_export``): point ``mirror
sql`` and dashboards at a role that may only read (the README shows one).
"""

from __future__ import annotations

import contextlib
import sqlite3
import threading
import uuid
from collections.abc import Generator, Iterator, Mapping, Sequence
from datetime import date, datetime, timedelta
from datetime import time as dtime
from decimal import Decimal
from pathlib import Path
from typing import Any

from mirror.db import tidy_wal
from mirror.errors import ConfigError, MirrorError
from mirror.sqlitefile import check_file, connect_readonly
from mirror.timeparse import to_text

DEFAULT_TIMEOUT = 10.0
#: the longest string or blob a statement may read or build: well above any stored payload,
#: small enough that building one takes a fraction of a second
MAX_VALUE_BYTES = 64 << 20
#: SQLite's heap, all connections of the process together
HEAP_LIMIT_BYTES = 512 << 20
#: VM steps between calls of the progress handler, where Python runs signal handlers
_PROGRESS_STEPS = 1000

#: PRAGMAs that only report; those in _SETTABLE are allowed only without a value
_READ_PRAGMAS = frozenset(
    {
        "table_info", "table_xinfo", "table_list", "index_list", "index_info", "index_xinfo",
        "foreign_key_list", "function_list", "module_list", "pragma_list", "collation_list",
        "compile_options", "database_list", "user_version", "schema_version",
        "application_id", "page_count", "page_size", "freelist_count", "encoding",
        "journal_mode", "data_version", "quick_check", "integrity_check", "foreign_key_check",
    }
)  # fmt: skip
_SETTABLE = frozenset(
    {"user_version", "schema_version", "application_id", "page_size", "journal_mode", "encoding"}
)
#: virtual tables are connected on first use, which the authorizer sees as a write to the
#: schema table: these (and the file's own, such as requests_fts) are connected beforehand
#: (the checks are left out: even LIMIT 0 might run them over the whole file)
_EPONYMOUS = (
    "json_each",
    "json_tree",
    *(f"pragma_{p}" for p in sorted(_READ_PRAGMAS - _SETTABLE) if not p.endswith("_check")),
)

_ACTION_NAMES = {
    getattr(sqlite3, f"SQLITE_{n}"): n.lower().replace("_", " ")
    for n in [
        "CREATE_INDEX",
        "CREATE_TABLE",
        "CREATE_TEMP_INDEX",
        "CREATE_TEMP_TABLE",
        "CREATE_TEMP_TRIGGER",
        "CREATE_TEMP_VIEW",
        "CREATE_TRIGGER",
        "CREATE_VIEW",
        "DELETE",
        "DROP_INDEX",
        "DROP_TABLE",
        "DROP_TEMP_INDEX",
        "DROP_TEMP_TABLE",
        "DROP_TEMP_TRIGGER",
        "DROP_TEMP_VIEW",
        "DROP_TRIGGER",
        "DROP_VIEW",
        "INSERT",
        "PRAGMA",
        "READ",
        "SELECT",
        "TRANSACTION",
        "UPDATE",
        "ATTACH",
        "DETACH",
        "ALTER_TABLE",
        "REINDEX",
        "ANALYZE",
        "CREATE_VTABLE",
        "DROP_VTABLE",
        "FUNCTION",
        "SAVEPOINT",
        "RECURSIVE",
    ]
    if hasattr(sqlite3, f"SQLITE_{n}")
}


class SqlError(MirrorError):
    """A statement refused, failed or stopped; the database is as it was."""

    kind = "sql"


class _Guard:
    """The authorizer and the clock of one connection; remembers why it said no, and why a
    statement was stopped ("time" or "signal")."""

    def __init__(self, conn: sqlite3.Connection, timeout: float) -> None:
        self.conn = conn
        self.timeout = timeout
        self.denied: str | None = None
        self.stopped: str | None = None
        # re-entrant: a signal handler runs in the main thread, maybe while it holds the lock
        self._lock = threading.RLock()
        self._running = False
        self._closed = False
        self._timer: threading.Timer | None = None

    def authorize(
        self, action: int, arg1: str | None, arg2: str | None, _db: str | None, _src: str | None
    ) -> int:
        if action in (sqlite3.SQLITE_SELECT, sqlite3.SQLITE_READ, sqlite3.SQLITE_RECURSIVE):
            return sqlite3.SQLITE_OK
        if action == sqlite3.SQLITE_FUNCTION:
            if (arg2 or "").lower() == "load_extension":
                return self._deny("load_extension()")
            return sqlite3.SQLITE_OK
        if action == sqlite3.SQLITE_PRAGMA:
            name = (arg1 or "").lower()
            if name in _READ_PRAGMAS and (arg2 is None or name not in _SETTABLE):
                return sqlite3.SQLITE_OK
            return self._deny(f"PRAGMA {name}" + (f" = {arg2}" if arg2 is not None else ""))
        if action == sqlite3.SQLITE_ATTACH:
            return self._deny("ATTACH (and VACUUM INTO, which attaches its target)")
        if (arg1 or "").startswith(("sqlite_master", "sqlite_temp_master", "sqlite_schema")):
            # DDL is first seen as a write to the schema table
            return self._deny("changing the schema (CREATE, DROP, ALTER)")
        return self._deny(_ACTION_NAMES.get(action, f"action {action}").upper())

    def _deny(self, what: str) -> int:
        self.denied = self.denied or what
        return sqlite3.SQLITE_DENY

    def start(self) -> None:
        """A statement begins: its clock starts."""
        self.finish()  # an earlier statement's clock, if its rows were never read to the end
        with self._lock:
            self.denied = None
            self._running = True
            if self.stopped == "time":  # an earlier statement's
                self.stopped = None
            if self.stopped is not None:  # a signal came first: the progress handler stops it
                return
            self._timer = threading.Timer(self.timeout, self.stop, args=("time",))
            self._timer.daemon = True
            self._timer.start()

    def finish(self) -> None:
        """The statement is over (done, failed or abandoned): its clock stops."""
        with self._lock:
            self._running = False
            timer, self._timer = self._timer, None
        if timer is not None:
            timer.cancel()
            timer.join()  # outside the lock, which a timer firing just now waits for

    def close(self) -> None:
        self.finish()
        with self._lock:
            self._closed = True

    def stop(self, why: str) -> None:
        """Stop the running statement (from the timer thread or a signal handler)."""
        with self._lock:
            if self.stopped is None:
                self.stopped = why
            if self._running and not self._closed:
                self.conn.interrupt()

    def progress(self) -> int:
        # also where Python runs a signal handler while a long statement holds the thread
        return 1 if self.stopped is not None else 0


class ReadOnlyDatabase:
    """One guarded connection; use as a context manager, run statements with `execute`."""

    def __init__(
        self,
        path: Path,
        *,
        timeout: float = DEFAULT_TIMEOUT,
        max_value_bytes: int = MAX_VALUE_BYTES,
        heap_limit: int = HEAP_LIMIT_BYTES,
    ) -> None:
        if timeout <= 0:
            raise ConfigError("--timeout must be more than 0 seconds")
        if not path.exists():
            raise ConfigError(f"{path} does not exist")
        if path.is_dir():
            raise ConfigError(f"{path} is a directory, not a database file")
        check_file(path)
        self.path = path
        self.max_value_bytes = max_value_bytes
        self.heap_limit = heap_limit
        try:
            self.conn = connect_readonly(path)
        except sqlite3.Error as e:
            raise SqlError(f"{path}: cannot open: {e}") from None
        self.guard = _Guard(self.conn, timeout)
        self._streams: list[Generator[tuple[Any, ...], None, None]] = []
        try:
            self.conn.setlimit(sqlite3.SQLITE_LIMIT_LENGTH, max_value_bytes)
            self.conn.execute(f"PRAGMA hard_heap_limit = {int(heap_limit)}")
            self.conn.execute("PRAGMA busy_timeout = 5000")
            self.conn.execute("PRAGMA query_only = 1")
            virtual = [
                r[0]
                for r in self.conn.execute(
                    "SELECT name FROM sqlite_master WHERE type = 'table' "
                    "AND sql LIKE 'CREATE VIRTUAL TABLE%'"
                )
            ]
            for name in (*_EPONYMOUS, *virtual):
                with contextlib.suppress(sqlite3.Error):
                    quoted = '"' + name.replace('"', '""') + '"'
                    self.conn.execute(f"SELECT * FROM {quoted} LIMIT 0").fetchall()
        except sqlite3.DatabaseError as e:
            self.conn.close()
            raise SqlError(f"{path}: not a database or unreadable: {e}") from None
        self.conn.set_authorizer(self.guard.authorize)
        self.conn.set_progress_handler(self.guard.progress, _PROGRESS_STEPS)

    def __enter__(self) -> ReadOnlyDatabase:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        for rows in self._streams:  # their cursors close before the connection does
            rows.close()
        self.guard.close()
        self.conn.close()
        tidy_wal(self.path)

    @property
    def timeout(self) -> float:
        return self.guard.timeout

    def interrupt(self) -> None:
        """Stop the statement now, from a signal handler or another thread: it ends with
        ``KeyboardInterrupt`` (a statement not yet started is stopped as it starts)."""
        self.guard.stop("signal")

    def execute(
        self, sql: str, params: Sequence[Any] | Mapping[str, Any] = ()
    ) -> tuple[list[str], Iterator[tuple[Any, ...]]]:
        """(column names, rows); rows stream, and the time limit covers reading them too."""
        self.guard.start()
        try:
            cur = self.conn.execute(sql, params)
        except (sqlite3.Error, sqlite3.Warning, MemoryError) as e:
            self.guard.finish()
            raise self._error(e) from None
        except BaseException:
            self.guard.finish()
            raise
        cols = [d[0] for d in cur.description or ()]
        rows = self._rows(cur)
        self._streams.append(rows)
        return cols, rows

    def _rows(self, cur: sqlite3.Cursor) -> Generator[tuple[Any, ...], None, None]:
        try:
            while True:
                batch = cur.fetchmany(500)
                if not batch:
                    return
                yield from batch
        except (sqlite3.Error, MemoryError) as e:
            raise self._error(e) from None
        finally:
            self.guard.finish()
            cur.close()

    def _error(self, e: BaseException) -> BaseException:
        """The error to raise for a failed statement: a SqlError, or KeyboardInterrupt when a
        signal stopped it."""
        text = str(e)
        if self.guard.stopped == "signal":
            return KeyboardInterrupt()
        if self.guard.denied or "not authorized" in text:
            what = self.guard.denied or "that statement"
            return SqlError(f"refused: {what} is not allowed; mirror sql only reads")
        if "interrupted" in text:
            return SqlError(
                f"stopped after {self.guard.timeout:g}s (the time limit; raise it with --timeout)"
            )
        if isinstance(e, MemoryError):
            return SqlError(
                f"stopped: the statement needed more than {_mib(self.heap_limit)} of memory "
                "(mirror sql's limit)"
            )
        if "string or blob too big" in text:
            return SqlError(
                f"stopped: a value would be larger than {_mib(self.max_value_bytes)} "
                "(mirror sql's limit for one string or blob)"
            )
        if "one statement at a time" in text:
            return SqlError("refused: one statement at a time")
        if "readonly" in text or "read-only" in text:
            return SqlError(f"refused: {text}; mirror sql only reads")
        return SqlError(text)


def _mib(n: int) -> str:
    return f"{n / (1 << 20):g} MiB"


# --------------------------------------------------------------------------- PostgreSQL

#: SQLSTATEs with their own message
_PG_TIMEOUT = "57014"  # query_canceled (statement_timeout)
_PG_READ_ONLY = "25006"  # read_only_sql_transaction
_PG_PRIVILEGE = "42501"  # insufficient_privilege


class PgReadOnlyDatabase:
    """One read-only PostgreSQL session; use as a context manager, run statements with
    `execute` (see the module docstring for what keeps it read-only)."""

    def __init__(self, db: str, *, timeout: float = DEFAULT_TIMEOUT) -> None:
        from mirror.db import display_db, make_engine, normalize_url

        if timeout <= 0:
            raise ConfigError("--timeout must be more than 0 seconds")
        self.timeout = timeout
        self.shown = display_db(normalize_url(db))
        self.engine = make_engine(db)
        try:
            self.raw = self.engine.raw_connection()
        except Exception as e:  # SQLAlchemy's or, from the connect hook, psycopg's own
            self.engine.dispose()
            raise SqlError(
                f"{self.shown}: cannot connect: {_first_line(getattr(e, 'orig', None) or e)}"
            ) from None
        conn = self.raw.driver_connection
        assert conn is not None  # a pooled connection that was just opened
        self.conn: Any = conn
        try:
            self.conn.rollback()
            self.conn.autocommit = True
            self.conn.execute("SET default_transaction_read_only = on")
            self.conn.autocommit = False
            self.conn.read_only = True  # psycopg begins with BEGIN READ ONLY
        except Exception as e:
            self.close()
            raise SqlError(
                f"{self.shown}: cannot set up a read-only session: {_first_line(e)}"
            ) from None

    def __enter__(self) -> PgReadOnlyDatabase:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.conn.rollback()
        with contextlib.suppress(Exception):
            self.raw.close()
        self.engine.dispose()

    def execute(
        self, sql: str, params: Mapping[str, Any] | None = None
    ) -> tuple[list[str], Iterator[tuple[Any, ...]]]:
        """(column names, rows); rows stream, and the time limit covers reading them too."""
        import psycopg

        query, dollar, values = _pg_statement(sql, params or {})
        conn = self.conn
        try:
            conn.rollback()
            ms = max(1, round(self.timeout * 1000))
            # SET LOCAL by set_config; this SELECT also takes the transaction's snapshot, so
            # the statement can no longer make the transaction read-write
            conn.execute("SELECT set_config('statement_timeout', %s, true)", (f"{ms}ms",))
            described = _describe(conn.pgconn, dollar)
            if described == 0:
                raise SqlError(
                    f"refused: {_verb(sql)} returns no rows; mirror sql only reads "
                    "(SELECT, WITH, VALUES, TABLE, EXPLAIN, SHOW)"
                )
            cur = conn.cursor()
            rows = cur.stream(query, values)
            first = next(rows, None)  # errors of the statement itself surface here
        except SqlError:
            conn.rollback()
            raise
        except psycopg.Error as e:
            conn.rollback()
            raise self._error(e) from None
        cols = [d.name for d in cur.description or ()]
        return cols, self._rows(cur, first, rows)

    def _rows(
        self, cur: Any, first: tuple[Any, ...] | None, rows: Iterator[tuple[Any, ...]]
    ) -> Iterator[tuple[Any, ...]]:
        import psycopg

        try:
            if first is None:
                return
            yield tuple(map(_plain, first))
            for row in rows:
                yield tuple(map(_plain, row))
        except psycopg.Error as e:
            raise self._error(e) from None
        finally:
            with contextlib.suppress(Exception):
                cur.close()
            with contextlib.suppress(Exception):
                self.conn.rollback()

    def _error(self, e: BaseException) -> SqlError:
        state = getattr(e, "sqlstate", None)
        text = _first_line(e)
        if state == _PG_TIMEOUT:
            return SqlError(
                f"stopped after {self.timeout:g}s (the time limit; raise it with --timeout)"
            )
        if "cannot insert multiple commands" in text:
            return SqlError("refused: one statement at a time")
        if state == _PG_READ_ONLY or "read-only" in text or "read-write" in text:
            return SqlError(f"refused: {text}; mirror sql only reads")
        if state == _PG_PRIVILEGE:
            return SqlError(f"refused: {text}")
        return SqlError(text)


def _describe(pgconn: Any, sql: bytes) -> int:
    """How many columns the statement returns, from Parse + Describe (nothing runs).

    More than one statement is a parse error ("cannot insert multiple commands into a
    prepared statement"), raised as the server's error.
    """
    import psycopg
    from psycopg import pq

    for step in (lambda: pgconn.prepare(b"", sql), lambda: pgconn.describe_prepared(b"")):
        res = step()
        if res.status != pq.ExecStatus.COMMAND_OK:
            raise psycopg.errors.lookup(
                (res.error_field(pq.DiagnosticField.SQLSTATE) or b"XX000").decode()
            )(
                (res.error_field(pq.DiagnosticField.MESSAGE_PRIMARY) or b"error").decode(
                    "utf-8", "replace"
                )
            )
    return int(res.nfields)


def _pg_statement(sql: str, params: Mapping[str, Any]) -> tuple[str, bytes, Any]:
    """The statement for psycopg, the same for Parse ($n placeholders), and the values.

    Without parameters the text goes to the server as it is. With them, ``:name`` is bound
    the way SQLAlchemy's ``text()`` reads it (``::int`` casts stay casts).
    """
    if not params:
        return sql, sql.encode(), None
    import sqlalchemy as sa
    from sqlalchemy.dialects.postgresql import psycopg as pg

    stmt = sa.text(sql)
    names = set(stmt._bindparams)
    missing = sorted(names - set(params))
    if missing:
        raise SqlError(f"no value for :{missing[0]}; pass one with -p {missing[0]} VALUE")
    # untyped: psycopg sends text as "unknown" and the server infers its type, as SQLite's
    # affinity would (a typed bind would compare integer = varchar)
    stmt = stmt.bindparams(
        *(sa.bindparam(k, v, type_=sa.types.NullType()) for k, v in params.items() if k in names)
    )
    pyformat = stmt.compile(dialect=pg.dialect())
    dollar = stmt.compile(dialect=pg.dialect(paramstyle="numeric_dollar"))
    return str(pyformat), str(dollar).encode(), pyformat.params


def _verb(sql: str) -> str:
    """The statement's first word, for messages only (nothing is decided on the text)."""
    for line in sql.splitlines():
        word = line.strip().split(None, 1)
        if word and not word[0].startswith("--"):
            return word[0].upper().rstrip(";")
    return "the statement"


def _plain(value: Any) -> Any:
    """A PostgreSQL value as SQLite would show it: timestamps as the stored text shape,
    numerics as numbers; what the output cannot print, as text."""
    if value is None or isinstance(value, (str, int, float, bytes, list)):
        return value
    if isinstance(value, datetime):
        return to_text(value) if value.tzinfo is not None else value.isoformat()
    if isinstance(value, Decimal):
        # an integer sum (count, sum of bigint) as an integer; a scaled numeric (round(x, 6),
        # avg) as a float, which is what SQLite gives for both
        exponent = value.as_tuple().exponent
        if isinstance(exponent, int) and exponent >= 0 and abs(value) < 2**63:
            return int(value)
        return float(value)
    if isinstance(value, (date, dtime)):
        return value.isoformat()
    if isinstance(value, timedelta):
        return value.total_seconds()
    if isinstance(value, memoryview):
        return bytes(value)
    if isinstance(value, uuid.UUID):
        return str(value)
    return str(value)


def _first_line(e: BaseException | None) -> str:
    diag = getattr(e, "diag", None)
    primary = getattr(diag, "message_primary", None) if diag is not None else None
    if primary:
        return str(primary)
    text = str(e) if e is not None else "unknown error"
    return (text.strip().splitlines() or ["unknown error"])[0]
