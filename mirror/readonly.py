"""`mirror sql`: run any SQL a user types against the mirror, and be sure it only reads.

Read-only by construction, in layers that each stand on their own, none of which looks at
the statement's text:

1. The file is opened with ``mode=ro``: SQLite itself refuses to write it.
2. An authorizer allows only reading: SELECT, reading columns, functions (except
   ``load_extension``), recursive CTEs, and a short list of PRAGMAs that report without
   setting anything. Everything else is denied, including ATTACH (which also stops
   ``VACUUM INTO``, since SQLite attaches its target first), temp tables and transactions.
3. ``PRAGMA query_only`` is set before the authorizer goes in.
4. A progress handler ends any statement that runs past its time limit, so a recursive CTE
   that never ends cannot hang the terminal or hold a WAL snapshot forever.
5. Python's ``execute`` runs exactly one statement: ``SELECT 1; DROP TABLE x`` is refused.

SQLite-specific; on PostgreSQL the equivalent is a ``READ ONLY`` transaction with
``statement_timeout``, which comes with the PostgreSQL issue.
"""

from __future__ import annotations

import contextlib
import sqlite3
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from mirror.errors import ConfigError, MirrorError
from mirror.query import sqlite_uri, tidy_wal

DEFAULT_TIMEOUT = 10.0

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
    """The authorizer and the clock of one connection; remembers why it said no."""

    def __init__(self, timeout: float) -> None:
        self.timeout = timeout
        self.deadline = float("inf")
        self.denied: str | None = None

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

    def progress(self) -> int:
        return 1 if time.monotonic() > self.deadline else 0


class ReadOnlyDatabase:
    """One guarded connection; use as a context manager, run statements with `execute`."""

    def __init__(self, path: Path, *, timeout: float = DEFAULT_TIMEOUT) -> None:
        if timeout <= 0:
            raise ConfigError("--timeout must be more than 0 seconds")
        if not path.exists():
            raise ConfigError(f"{path} does not exist")
        if path.is_dir():
            raise ConfigError(f"{path} is a directory, not a database file")
        self.path = path
        self.guard = _Guard(timeout)
        try:
            self.conn = sqlite3.connect(sqlite_uri(path, mode="ro"), uri=True)
        except sqlite3.Error as e:
            raise SqlError(f"{path}: cannot open: {e}") from None
        try:
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
        self.conn.set_progress_handler(self.guard.progress, 1000)

    def __enter__(self) -> ReadOnlyDatabase:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.conn.close()
        tidy_wal(self.path)

    def execute(
        self, sql: str, params: Sequence[Any] | Mapping[str, Any] = ()
    ) -> tuple[list[str], Iterator[tuple[Any, ...]]]:
        """(column names, rows); rows stream, and the time limit covers reading them too."""
        self.guard.denied = None
        self.guard.deadline = time.monotonic() + self.guard.timeout
        try:
            cur = self.conn.execute(sql, params)
        except (sqlite3.Error, sqlite3.Warning) as e:
            raise self._error(e) from None
        cols = [d[0] for d in cur.description or ()]
        return cols, self._rows(cur)

    def _rows(self, cur: sqlite3.Cursor) -> Iterator[tuple[Any, ...]]:
        try:
            while True:
                batch = cur.fetchmany(500)
                if not batch:
                    return
                yield from batch
        except sqlite3.Error as e:
            raise self._error(e) from None
        finally:
            cur.close()

    def _error(self, e: BaseException) -> SqlError:
        text = str(e)
        if self.guard.denied or "not authorized" in text:
            what = self.guard.denied or "that statement"
            return SqlError(f"refused: {what} is not allowed; mirror sql only reads")
        if "interrupted" in text:
            return SqlError(
                f"stopped after {self.guard.timeout:g}s (the time limit; raise it with --timeout)"
            )
        if "one statement at a time" in text:
            return SqlError("refused: one statement at a time")
        if "readonly" in text or "read-only" in text:
            return SqlError(f"refused: {text}; mirror sql only reads")
        return SqlError(text)
