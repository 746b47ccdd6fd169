"""`mirror copy`: move a whole mirror between databases (SQLite <-> PostgreSQL, or alike).

Everything a sync needs to carry on where the source left off comes along: every row of
``requests`` (``first_seen_at`` / ``last_changed_at`` and the ``history`` it is of kept as
they are), what requests cost (``billing_events``, and ``prices``, a history nothing could
fetch again) and the sync state (``sync_targets``, ``sync_windows``, ``sync_runs`` with their
ids, ``sync_rechecks``) and what walks learned of requests too big for a page
(``sync_page_limits``, ``oversized_requests``), so the destination never re-downloads history
nor meets those pages' refusals again, and what the sync keeps about mirroring cost
(``cost_windows``, ``cost_state``, ``usage_checks``). Derived tables
(``summary_hourly``, ``duration_histogram``, the full-text index) are not copied: the
destination's own triggers
build them as the rows go in.

Rules, in the order they are checked (every refusal is one line and exit 2, with both
databases left as they were):

- the source must exist and be a mirror database at this version's schema (an older one:
  ``mirror db upgrade --db SOURCE`` first; copy never writes to the source);
- source and destination must be different databases;
- the destination must be **empty**: no requests, billing events, prices or sync state (a
  new file, a new PostgreSQL database, or one only migrated). There is no merge: copying
  into a mirror that has rows of its own would mix two histories' sync state.

The source is read in one consistent view: a SQLite source is held with the writer lock
(a running sync makes copy exit 75, like a second sync) inside one read transaction; a
PostgreSQL source is read in one ``REPEATABLE READ READ ONLY`` transaction, so syncs may go
on writing it and the copy is the mirror as of the moment it started. Rows stream in
batches (a server-side cursor on PostgreSQL), so memory stays flat however large the
mirror. The destination is written in **one transaction**: a copy that fails or is killed
leaves it empty, and running it again starts over.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from mirror import lock, schema
from mirror.db import (
    display_db,
    is_url,
    make_engine,
    normalize_url,
    schema_state,
    sqlite_path,
    translate_errors,
    upgrade,
)
from mirror.errors import ConfigError, StoreError
from mirror.schema import STORED_COLUMNS, requests
from mirror.store import Store

#: rows read from the source per round trip (and held in memory at once)
BATCH_ROWS = 5_000
#: copied after the requests, in this order, row for row: what requests cost, then the
#: sync state
TABLES = (
    schema.billing_events, schema.prices, schema.sync_targets, schema.sync_windows,
    schema.sync_runs, schema.sync_rechecks, schema.sync_page_limits, schema.oversized_requests,
    schema.cost_windows, schema.cost_state, schema.usage_checks,
)  # fmt: skip
MIRROR_TABLES = (requests, *TABLES)


class CopyRefused(ConfigError):
    """A copy that cannot start: nothing was written anywhere (exit 2)."""

    kind = "cannot copy"


@dataclass
class CopyReport:
    source: str
    dest: str
    counts: dict[str, int]
    seconds: float = 0.0

    def summary(self) -> str:
        c = self.counts

        def n(k: str, word: str) -> str:
            return f"{c[k]} {word}{'' if c[k] == 1 else 's'}"

        return (
            f"copied {n('requests', 'request')}, {n('sync_targets', 'target')}, "
            f"{n('sync_windows', 'completed window')}, {n('sync_runs', 'run')}, "
            f"{n('sync_rechecks', 're-check mark')}, {n('billing_events', 'billing event')} "
            f"and {n('prices', 'price')} from {self.source} to {self.dest} in {self.seconds:.1f}s"
        )


def _check_address(db: str, role: str) -> None:
    """A path or a URL of a backend mirror speaks, or a one-line refusal."""
    if not db.strip():
        raise CopyRefused(f"--{role} is empty: give a SQLite file path or a database URL")
    if not is_url(db):
        return
    try:
        url = sa.engine.make_url(normalize_url(db))
    except sa.exc.ArgumentError:
        raise CopyRefused(f"--{role} {display_db(db)} is not a database URL") from None
    backend = url.get_backend_name()
    if backend not in ("sqlite", "postgresql"):
        raise CopyRefused(
            f"--{role} {display_db(db)}: unsupported database {backend!r}; give a SQLite file "
            "path, sqlite:///PATH or postgresql://USER@HOST/DBNAME"
        )
    if backend == "postgresql" and not url.database:
        raise CopyRefused(f"--{role} {display_db(db)} names no database (…/DBNAME)")


def _same_database(a: str, b: str) -> bool:
    pa, pb = sqlite_path(a), sqlite_path(b)
    if pa is not None or pb is not None:
        return pa is not None and pb is not None and pa.resolve() == pb.resolve()
    ua, ub = (sa.engine.make_url(normalize_url(x)) for x in (a, b))
    return (ua.host, ua.port, ua.database, ua.query.get("host")) == (
        ub.host,
        ub.port,
        ub.database,
        ub.query.get("host"),
    )


def _open(db: str, role: str) -> Engine:
    try:
        return make_engine(db)
    except StoreError as e:
        raise CopyRefused(f"--{role}: {e}") from None


def _has_rows(conn: Connection) -> list[str]:
    """The mirror tables of a database that hold rows (tables it lacks count as empty)."""
    names = set(sa.inspect(conn).get_table_names())
    out = []
    for t in MIRROR_TABLES:
        if (
            t.name in names
            and conn.execute(sa.select(sa.literal(1)).select_from(t).limit(1)).first()
        ):
            out.append(t.name)
    return out


def copy_mirror(
    source: str,
    dest: str,
    *,
    batch: int = BATCH_ROWS,
    progress: Callable[[str, int], None] | None = None,
) -> CopyReport:
    """Copy the mirror at ``source`` into the empty database ``dest`` (see the module doc)."""
    _check_address(source, "from")
    _check_address(dest, "to")
    src_path, dest_path = sqlite_path(source), sqlite_path(dest)
    if src_path is not None and not (src_path.is_file() and src_path.stat().st_size > 0):
        what = "is not a file" if src_path.exists() and not src_path.is_file() else "does not exist"
        if src_path.is_file():
            what = "is empty, not a mirror database"
        raise CopyRefused(f"--from {source} {what}")
    if _same_database(source, dest):
        raise CopyRefused(f"--from and --to are the same database ({display_db(source)})")
    t0 = time.monotonic()
    with ExitStack() as stack:
        if src_path is not None:
            # a sync writing the source would make the copy a mix of two moments
            stack.enter_context(lock.hold(src_path))
        src_engine = _open(source, "from")
        stack.callback(src_engine.dispose)
        try:
            with translate_errors(display_db(source)):
                rev, head = schema_state(src_engine)
        except StoreError as e:  # unreachable, no such database, not a database
            raise CopyRefused(f"--from: {e}") from None
        if rev is None:
            raise CopyRefused(f"--from {display_db(source)} is not a mirror database (no schema)")
        if rev != head:
            raise CopyRefused(
                f"--from {display_db(source)} has schema revision {rev}, this mirror copies "
                f"{head}: run mirror db upgrade --db SOURCE first"
            )
        if dest_path is not None:
            stack.enter_context(lock.hold(dest_path))
        dest_engine = _open(dest, "to")
        stack.callback(dest_engine.dispose)
        with translate_errors(display_db(dest)):
            # refused before anything is written, even the migration
            with dest_engine.connect() as conn:
                busy = _has_rows(conn)
                conn.rollback()
            if busy:
                raise CopyRefused(
                    f"--to {display_db(dest)} is not empty (it has rows in {', '.join(busy)}); "
                    "copy only into a new, empty database"
                )
        try:
            upgrade(dest_engine, dest)
        except StoreError as e:  # not a mirror, or a newer one: nothing was written
            raise CopyRefused(f"--to: {e}") from None
        with (
            translate_errors(display_db(source)),
            _snapshot(src_engine) as src,
            translate_errors(display_db(dest)),
            dest_engine.begin() as out,
        ):
            counts = _copy_all(src, out, Store(dest_engine, dest), batch, progress, dest)
    return CopyReport(display_db(source), display_db(dest), counts, time.monotonic() - t0)


@contextmanager
def _snapshot(engine: Engine) -> Iterator[Connection]:
    """One read transaction: REPEATABLE READ on PostgreSQL (one snapshot for every table);
    on SQLite the writer lock is held already and one transaction sees one state."""
    with engine.connect() as conn:
        if engine.dialect.name == "postgresql":
            conn = conn.execution_options(isolation_level="REPEATABLE READ")
            conn.exec_driver_sql("SET TRANSACTION READ ONLY")
        else:
            conn.exec_driver_sql("SELECT 1")  # opens the transaction (mirror.db._sqlite_on_begin)
        try:
            yield conn
        finally:
            conn.rollback()


def _copy_all(
    src: Connection,
    out: Connection,
    store: Store,
    batch: int,
    progress: Callable[[str, int], None] | None,
    dest: str,
) -> dict[str, int]:
    if store.dialect == "postgresql":
        # the emptiness check again, now excluding every writer until this commits
        names = ", ".join(t.name for t in MIRROR_TABLES)
        out.exec_driver_sql(f"LOCK TABLE {names} IN EXCLUSIVE MODE")
    busy = _has_rows(out)
    if busy:
        raise CopyRefused(
            f"--to {display_db(dest)} got rows in {', '.join(busy)} meanwhile; copy only into a "
            "new, empty database"
        )
    counts = {"requests": _copy_requests(src, out, store, batch, progress)}
    for table in TABLES:
        n = 0
        cols = list(table.c)
        q = sa.select(*cols).execution_options(yield_per=batch)
        for part in src.execute(q).partitions():
            out.execute(table.insert(), [dict(zip(table.c.keys(), r, strict=True)) for r in part])
            n += len(part)
            if progress:
                progress(table.name, n)
        counts[table.name] = n
    if store.dialect == "postgresql":
        # ids were copied as they are: the next run's id must come after them
        out.exec_driver_sql(
            "SELECT setval(pg_get_serial_sequence('sync_runs', 'id'), "
            "COALESCE((SELECT max(id) FROM sync_runs), 0) + 1, false)"
        )
    return counts


def _copy_requests(
    src: Connection,
    out: Connection,
    store: Store,
    batch: int,
    progress: Callable[[str, int], None] | None,
) -> int:
    """Rows as they are, bookkeeping stamps and history included, through the store's
    multi-row inserts (the destination's triggers keep the summary and the full-text
    index)."""
    cols = [requests.c[name] for name in STORED_COLUMNS]
    q = sa.select(*cols).execution_options(yield_per=batch)
    n = 0
    for part in src.execute(q).partitions():
        rows = [tuple(r) for r in part]
        store.insert_exact(out, rows)
        n += len(rows)
        if progress:
            progress("requests", n)
    return n


__all__ = ["BATCH_ROWS", "CopyRefused", "CopyReport", "copy_mirror"]
