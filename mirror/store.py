"""The store: a migrated database's writes and sync state.

The upsert of rows (``mirror.records.Row``) into ``requests`` (many rows per statement; on
SQLite a batch's full-text index and hourly summary are written once, at its end) and what
a run counts of it (``Tally``), the state that lets a sync carry on where the last one
stopped (targets, the range each is asked to cover, its completed windows, re-checks), and
the run log. The tables are described in ``mirror.schema``; connecting and migrating is
``mirror.db``'s.
"""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from itertools import chain, repeat
from operator import add
from typing import Any, NamedTuple

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.engine import Connection, Engine

from mirror import lock
from mirror.db import (
    BUSY_TIMEOUT_MS,
    display_db,
    ensure_schema,
    make_engine,
    reader_engine,
    reading,
    schema_state,
    sqlite_path,
    tidy_wal,
    translate_errors,
    upgrade,
    writing,
)
from mirror.errors import StoreError
from mirror.records import Row, upsert_fields
from mirror.redact import redact
from mirror.rollups import batch_statements
from mirror.schema import (
    BILLING_EVENT_FIELDS,
    HISTORIES,
    ROW_COLUMNS,
    STORED_COLUMNS,
    Instant,
    hour_of,
    prices,
    requests,
    sync_rechecks,
    sync_runs,
    sync_targets,
    sync_windows,
    target_clause,
)
from mirror.timeparse import from_text, to_text

_MAX_ROWID = "SELECT max(rowid) FROM requests"
# A batch's own indexing (migration 0005): while sync_batch has its row, inside the upsert's
# transaction only, the insert triggers stand aside and the upsert does their work for all
# the rows the batch inserted (rowid > ?): the same index entries (this statement), and the
# same rollups (``mirror.rollups.batch_statements``).
_BATCH_BEGIN = "INSERT OR REPLACE INTO sync_batch (batch) VALUES (1)"
_BATCH_END = "DELETE FROM sync_batch"
_INDEX_NEW = (
    "INSERT INTO requests_fts (rowid, json_input, json_output) "
    "SELECT rowid, json_input, json_output FROM requests NOT INDEXED WHERE rowid > ?"
)
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


def _ended_at(row: Row) -> str:
    return row.ended_at or ""


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


@dataclass(kw_only=True)
class Tally:
    """What a run (a sync, or verify's check of one target) cost and wrote: the API calls it
    made, and the rows its upserts inserted and updated."""

    api_calls: int = 0
    inserted: int = 0
    updated: int = 0

    def wrote(self, result: UpsertResult | Tally) -> None:
        """Count the rows an upsert (or another run) inserted and updated."""
        self.inserted += result.inserted
        self.updated += result.updated


class Store:
    """A migrated database: the upsert, window state and run log. Not thread-safe: one writer."""

    def __init__(self, engine: Engine, db: str) -> None:
        self.engine = engine
        self.db = db
        self.dialect = engine.dialect.name
        self._upsert_sql: dict[tuple[bool, bool, int, bool, str], str] = {}
        self._events_sql: dict[int, str] = {}
        #: what a batch runs after its rows, on a schema with migration 0005's sync_batch
        #: (SQLite, at 0005 or later): the full-text index, then the rollups; None: not known
        self._batch_work: tuple[str, ...] | None = None
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
        engine = reader_engine(db)
        try:
            ensure_schema(db, engine)
        except BaseException:
            engine.dispose()
            raise
        store = cls(engine, db)
        store._reader = True
        return store

    def reading(self) -> contextlib.AbstractContextManager[Connection]:
        """A connection for one short read (``mirror.db.reading``)."""
        return reading(self.engine)

    def writing(self) -> contextlib.AbstractContextManager[Connection]:
        """A connection for one short write (``mirror.db.writing``)."""
        return writing(self.engine)

    def close(self) -> None:
        self.engine.dispose()
        path = sqlite_path(self.db) if self._reader else None
        if path is not None:
            tidy_wal(path)  # the -wal/-shm a read-only connection may leave behind

    # -- the upsert -------------------------------------------------------------------

    def _upsert_statement(
        self,
        payloads: bool,
        billing: bool,
        rows: int = 1,
        *,
        one_stamp: bool = False,
        history: str = "serverless",
    ) -> str:
        """INSERT … ON CONFLICT DO UPDATE of the fields this sync fetched, only when changed,
        by the upsert's field rules (``mirror.records.upsert_fields``): a field not fetched
        is left alone, and a payload or billing value the API returns null for is kept.

        ``rows`` > 1: one statement for that many rows (a multi-row VALUES list).
        ``one_stamp`` (SQLite): every row's ``first_seen_at`` and ``last_changed_at`` are
        parameter ``?1``, bound once, and the rows' own fields follow from ``?2``.
        ``history``: what a new row's ``history`` is (a constant of ``HISTORIES``, so
        written into the statement); an existing row keeps its own.
        """
        if history not in HISTORIES:
            raise ValueError(f"unknown history {history!r}")
        key = (payloads, billing, rows, one_stamp, history)
        sql = self._upsert_sql.get(key)
        if sql is not None:
            return sql
        always, kept = upsert_fields(payloads=payloads, billing=billing)
        sets = [f"{c} = excluded.{c}" for c in always]
        sets += [f"{c} = COALESCE(excluded.{c}, requests.{c})" for c in kept]
        sets.append("last_changed_at = excluded.last_changed_at")
        changed = [f"requests.{c} IS NOT excluded.{c}" for c in always]
        changed += [
            f"(excluded.{c} IS NOT NULL AND requests.{c} IS NOT excluded.{c})" for c in kept
        ]
        # the default needs no column; the other history is a constant of every new row
        columns, extra = ROW_COLUMNS, ""
        if history != "serverless":
            columns, extra = (*ROW_COLUMNS, "history"), f", '{history}'"
        if self.dialect == "postgresql":
            changed = [c.replace(" IS NOT ", " IS DISTINCT FROM ") for c in changed]
            values = ", ".join([f"({', '.join(['%s'] * len(ROW_COLUMNS))}{extra})"] * rows)
        elif one_stamp:
            n = len(Row._fields)
            values = ", ".join(
                "(" + "".join(f"?{2 + i * n + j}, " for j in range(n)) + f"?1, ?1{extra})"
                for i in range(rows)
            )
        else:
            values = ", ".join([f"({', '.join(['?'] * len(ROW_COLUMNS))}{extra})"] * rows)
        sql = (
            f"INSERT INTO requests ({', '.join(columns)}) VALUES {values} "
            f"ON CONFLICT (request_id) DO UPDATE SET {', '.join(sets)} "
            f"WHERE {' OR '.join(changed)}"
        )
        self._upsert_sql[key] = sql
        return sql

    def upsert(
        self,
        conn: Connection,
        rows: Sequence[Row],
        *,
        payloads: bool,
        billing: bool,
        now: str,
        history: str = "serverless",
    ) -> UpsertResult:
        """Upsert rows (``mirror.records.Row``) fetched with or without payloads and billing.
        ``history``: which of fal's histories new rows are of (``requests.history``).

        Returns how many rows were new and how many existing rows actually changed. On
        SQLite (revision 0005) the rows it inserts are indexed and summarized once, at the
        end (``_INDEX_NEW``, ``mirror.rollups.batch_statements``); if it raises, the caller's transaction must
        be rolled back (``engine.begin()`` does), as with any failed write.
        """
        if not rows:
            return UpsertResult(0, 0)
        # last occurrence of an id wins, as if the rows were applied one after another
        by_id = {r.request_id: r for r in rows}
        # In ended_at order (unfinished rows first): new rows then land side by side in the
        # time indexes instead of on scattered pages (bench/ingest_bench.py).
        ordered = sorted(by_id.values(), key=_ended_at)
        if self.dialect == "postgresql":
            return self._upsert_pg(
                conn, ordered, payloads=payloads, billing=billing, now=now, history=history
            )
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
        work = self._batch_statements(conn)
        batch = bool(work)
        changed = 0
        if batch:
            conn.exec_driver_sql(_BATCH_BEGIN)
        try:
            for chunk in _chunks(len(ordered), most):
                n = chunk.stop - chunk.start
                sql = self._upsert_statement(payloads, billing, n, one_stamp=True, history=history)
                # the stamp once, then the rows' fields, flattened without a Python loop
                flat = (now, *chain.from_iterable(ordered[chunk]))
                changed += conn.exec_driver_sql(sql, flat).rowcount
            inserted = (conn.exec_driver_sql(_MAX_ROWID).scalar() or 0) - before
            if inserted:
                for statement in work:
                    conn.exec_driver_sql(statement, (before,))
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

    def _batch_statements(self, conn: Connection) -> tuple[str, ...]:
        """What a batch does itself: nothing before migration 0005 (Store.open migrates to
        head, but benchmarks and tests also drive the upsert on older revisions)."""
        if self._batch_work is None:
            gate = conn.exec_driver_sql(
                "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'sync_batch'"
            ).first()
            self._batch_work = (_INDEX_NEW, *batch_statements(conn)) if gate else ()
        return self._batch_work

    def _rows_per_statement(self, conn: Connection, width: int = len(ROW_COLUMNS)) -> int:
        """Rows of ``width`` values one statement may carry (SQLite caps its parameters)."""
        if self.dialect != "sqlite":
            return ROWS_PER_STATEMENT
        limit = conn.connection.driver_connection.getlimit(  # type: ignore[union-attr]
            sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER
        )
        return max(1, min(ROWS_PER_STATEMENT, limit // width))

    def insert_exact(self, conn: Connection, rows: Sequence[tuple[Any, ...]]) -> None:
        """Rows in ``STORED_COLUMNS`` order, bookkeeping stamps and history included, stored
        as they are into a table that does not hold them (``mirror copy``): multi-row
        INSERTs, as many rows per statement as the upsert carries."""
        width = len(STORED_COLUMNS)
        mark = "%s" if self.dialect == "postgresql" else "?"
        one = f"({', '.join([mark] * width)})"
        for chunk in _chunks(len(rows), self._rows_per_statement(conn, width)):
            values = ", ".join([one] * (chunk.stop - chunk.start))
            sql = f"INSERT INTO requests ({', '.join(STORED_COLUMNS)}) VALUES {values}"
            conn.exec_driver_sql(sql, tuple(chain.from_iterable(rows[chunk])))

    def _upsert_pg(
        self,
        conn: Connection,
        ordered: Sequence[Row],
        *,
        payloads: bool,
        billing: bool,
        now: str,
        history: str,
    ) -> UpsertResult:
        """PostgreSQL: multi-row statements too, counted by ``RETURNING (xmax = 0)``.

        A row comes back when it was inserted (``xmax`` 0) or actually updated; one whose
        values did not change is skipped by the upsert's WHERE and returns nothing.
        """
        inserted = updated = 0
        most = ROWS_PER_STATEMENT
        for chunk in _chunks(len(ordered), most):
            sql = self._upsert_statement(
                payloads, billing, chunk.stop - chunk.start, history=history
            )
            flat = tuple(chain.from_iterable(map(add, ordered[chunk], repeat((now, now)))))
            for (fresh,) in conn.exec_driver_sql(sql + " RETURNING (xmax = 0)", flat):
                if fresh:
                    inserted += 1
                else:
                    updated += 1
        return UpsertResult(inserted, updated)

    # -- billing events and prices ------------------------------------------------------

    def _events_statement(self, rows: int) -> str:
        """INSERT … ON CONFLICT DO UPDATE of ``rows`` billing events, only when changed
        (fal may correct a charge; an event seen again as it was is left alone)."""
        sql = self._events_sql.get(rows)
        if sql is not None:
            return sql
        cols = [f'"{c}"' for c in (*BILLING_EVENT_FIELDS, "first_seen_at", "last_changed_at")]
        fields = cols[1 : len(BILLING_EVENT_FIELDS)]
        distinct = "IS DISTINCT FROM" if self.dialect == "postgresql" else "IS NOT"
        mark = "%s" if self.dialect == "postgresql" else "?"
        if self.dialect == "postgresql":
            values = ", ".join([f"({', '.join([mark] * len(cols))})"] * rows)
        else:
            n = len(BILLING_EVENT_FIELDS)
            values = ", ".join(
                "(" + "".join(f"?{2 + i * n + j}, " for j in range(n)) + "?1, ?1)"
                for i in range(rows)
            )
        sets = [f"{c} = excluded.{c}" for c in fields]
        changed = [f"billing_events.{c} {distinct} excluded.{c}" for c in fields]
        sql = (
            f"INSERT INTO billing_events ({', '.join(cols)}) VALUES {values} "
            f"ON CONFLICT (request_id) DO UPDATE SET {', '.join(sets)}, "
            f'"last_changed_at" = excluded."last_changed_at" WHERE {" OR ".join(changed)}'
        )
        self._events_sql[rows] = sql
        return sql

    def upsert_billing_events(
        self, conn: Connection, events: Sequence[tuple[Any, ...]], *, now: str
    ) -> UpsertResult:
        """Upsert billing events (tuples in ``BILLING_EVENT_FIELDS`` order, e.g.
        ``mirror.billing_api.BillingEvent``): how many were new, how many changed.

        Keyed by ``request_id``: an event stored again is one row, the last occurrence of
        an id in ``events`` wins, and one seen again unchanged keeps its ``last_changed_at``.
        Many rows per statement, as the request upsert.
        """
        if not events:
            return UpsertResult(0, 0)
        by_id = {e[0]: tuple(e) for e in events}
        ordered = sorted(by_id.values(), key=lambda e: e[2])  # side by side in the time index
        width = len(BILLING_EVENT_FIELDS) + 2
        if self.dialect == "postgresql":
            inserted = updated = 0
            for chunk in _chunks(len(ordered), ROWS_PER_STATEMENT):
                sql = self._events_statement(chunk.stop - chunk.start)
                flat = tuple(chain.from_iterable(map(add, ordered[chunk], repeat((now, now)))))
                for (fresh,) in conn.exec_driver_sql(sql + " RETURNING (xmax = 0)", flat):
                    inserted += fresh
                    updated += not fresh
            return UpsertResult(inserted, updated)
        # rowids only grow here (no AUTOINCREMENT, nothing deleted) and the transaction
        # holds the write lock: max(rowid) moves by the number inserted
        before = conn.exec_driver_sql("SELECT max(rowid) FROM billing_events").scalar() or 0
        changed = 0
        for chunk in _chunks(len(ordered), self._rows_per_statement(conn, width)):
            sql = self._events_statement(chunk.stop - chunk.start)
            flat = (now, *chain.from_iterable(ordered[chunk]))
            changed += conn.exec_driver_sql(sql, flat).rowcount
        after = conn.exec_driver_sql("SELECT max(rowid) FROM billing_events").scalar() or 0
        return UpsertResult(after - before, changed - (after - before))

    def record_prices(
        self, conn: Connection, quotes: Iterable[tuple[str, str, float, str]], seen_at: str
    ) -> int:
        """Snapshot prices, (endpoint_id, unit, unit_price, currency) each, seen at
        ``seen_at``; returns how many rows were added.

        An endpoint whose latest stored price is the same only has that row's
        ``checked_at`` moved on; a new or changed price is a new row, so the history of
        prices is never rewritten. A ``seen_at`` earlier than what is stored (a clock gone
        back) never places a price before the one already known: the new row starts just
        after the latest check instead.
        """
        quotes = list({q[0]: q for q in quotes}.values())
        if not quotes:
            return 0
        p = prices.c
        latest_seen = (
            sa.select(p.endpoint_id, sa.func.max(p.seen_at).label("seen_at"))
            .where(p.endpoint_id.in_([q[0] for q in quotes]))
            .group_by(p.endpoint_id)
            .subquery()
        )
        latest = {
            r.endpoint_id: r
            for r in conn.execute(
                sa.select(prices).join(
                    latest_seen,
                    sa.and_(
                        p.endpoint_id == latest_seen.c.endpoint_id,
                        p.seen_at == latest_seen.c.seen_at,
                    ),
                )
            )
        }
        added = 0
        for endpoint_id, unit, unit_price, currency in quotes:
            known = latest.get(endpoint_id)
            if known is not None and (known.unit, known.unit_price, known.currency) == (
                unit,
                unit_price,
                currency,
            ):
                conn.execute(
                    prices.update()
                    .where(p.endpoint_id == endpoint_id, p.seen_at == known.seen_at)
                    .values(checked_at=max(known.checked_at, seen_at))
                )
                continue
            at = seen_at
            if known is not None and at <= known.checked_at:
                at = to_text(from_text(known.checked_at) + timedelta(microseconds=1))
            self._insert_ignore(
                conn,
                prices,
                {"endpoint_id": endpoint_id, "seen_at": at, "unit": unit,
                 "unit_price": unit_price, "currency": currency, "checked_at": at},
            )  # fmt: skip
            added += 1
        return added

    # -- targets and windows ------------------------------------------------------------

    def targets(self) -> list[str]:
        with self.reading() as conn:
            out = [
                r[0]
                for r in conn.execute(
                    sa.select(sync_targets.c.target).order_by(sync_targets.c.target)
                )
            ]
        return out

    def target_histories(self) -> dict[str, str]:
        """Every stored target and the history it is (``HISTORIES``), in target order."""
        c = sync_targets.c
        with self.reading() as conn:
            out = {t: h for t, h in conn.execute(sa.select(c.target, c.history).order_by(c.target))}
        return out

    def request_range(
        self,
        conn: Connection,
        targets: Iterable[str],
        now: str,
        *,
        since: str | None,
        default_from: str,
        narrow: bool = False,
        histories: Mapping[str, str] | None = None,
    ) -> None:
        """Record what each target is asked to cover, before anything is fetched for it.

        A new target starts at ``since`` or, without it, at ``default_from``. An existing one
        only ever reaches further back (``since`` earlier than its stored start), so a later
        run with a later ``--since`` cannot silently drop what an interrupted one asked for;
        ``narrow`` moves the start to ``since`` on purpose. A target a migrated file knew
        nothing of (NULL) takes what it covers, or ``default_from`` when it covers nothing.
        ``histories``: the history of each new target not of the default (``serverless``);
        a stored target keeps the history it was added with.
        """
        t = sync_targets.c
        w = sync_windows.c
        for target in targets:
            self._insert_ignore(
                conn,
                sync_targets,
                {
                    "target": target,
                    "added_at": now,
                    "requested_from": since or default_from,
                    "history": (histories or {}).get(target, "serverless"),
                },
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
        with self.writing() as conn:
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
        with self.reading() as conn:
            out = conn.execute(
                sa.select(t.requested_from).where(t.target == target)
            ).scalar_one_or_none()
        return out

    def completed_until(self, targets: Iterable[str]) -> str | None:
        """The latest end of any completed interval of these targets (None: none yet)."""
        w = sync_windows.c
        with self.reading() as conn:
            out = conn.execute(
                sa.select(sa.func.max(w.window_end)).where(w.target.in_(list(targets)))
            ).scalar_one_or_none()
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
        with self.reading() as c:
            out = [(r[0], r[1]) for r in c.execute(q)]
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
        with self.reading() as conn:
            out = [(a, b, c) for a, b, c in conn.execute(q)]
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
        with self.reading() as conn:
            out = {h: int(n) for h, n in conn.execute(q) if _is_hour(h)}
        return out

    def rechecked(self, target: str) -> dict[str, str]:
        """tier -> when the target's older history was last re-checked."""
        c = sync_rechecks.c
        with self.reading() as conn:
            out = {
                t: at
                for t, at in conn.execute(sa.select(c.tier, c.checked_at).where(c.target == target))
            }
        return out

    def mark_rechecked(self, target: str, tiers: Iterable[str], now: str) -> None:
        c = sync_rechecks.c
        with self.writing() as conn:
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
        histories: Mapping[str, str] | None = None,
    ) -> int:
        """Log a new run as ``running``; returns its id.

        With ``default_from``, the targets and the range they are asked to cover are recorded
        in the same transaction (``request_range``), before the run fetches anything.

        On a SQLite file whose writer lock this process holds, no other run can be going on:
        any run still logged ``running`` belongs to a process that died without recording
        its outcome (SIGKILL, a crash, the machine stopping), and is logged ``killed`` now.
        (Not on a server database, where several machines may sync at once.)
        """
        with self.writing() as conn:
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
                    histories=histories,
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
        with self.writing() as conn:
            conn.execute(
                sync_runs.update().where(sync_runs.c.id == run_id).values(**values, **counts)
            )

    def last_clock_skew(self) -> float | None:
        """The clock skew the latest run that measured one found (seconds, local - API)."""
        c = sync_runs.c
        with self.reading() as conn:
            out = conn.execute(
                sa.select(c.clock_skew)
                .where(c.clock_skew.is_not(None))
                .order_by(c.id.desc())
                .limit(1)
            ).scalar_one_or_none()
        return out

    def checkpoint(self) -> None:
        """Fold the WAL back into the database and truncate it, once the readers still
        reading an older state are done; gives up after a second.

        A short wait for readers such as a `sqlite3` shell leaves the file's closing nothing
        to copy: closing the last connection checkpoints what is left while it holds the
        file exclusively, and a reader with no busy timeout that opens the file meanwhile is
        turned away ("database is locked"). A reader in the middle of a long transaction
        keeps its view, and the next run (or SQLite's automatic checkpoint) finishes the job.
        """
        if self.dialect != "sqlite":
            return
        with contextlib.suppress(sa.exc.DBAPIError, sqlite3.Error):
            raw = self.engine.raw_connection()
            try:
                con = raw.driver_connection
                con.execute("PRAGMA busy_timeout = 1000")  # type: ignore[union-attr]
                try:
                    con.execute("PRAGMA wal_checkpoint(TRUNCATE)")  # type: ignore[union-attr]
                finally:
                    con.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")  # type: ignore[union-attr]
            finally:
                raw.close()
