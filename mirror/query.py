"""The query layer: filters, request listings, stats and sync status, answered offline.

Everything here reads through a connection handed in and never imports click: the CLI
(``mirror.commands_query``) only parses flags into a `Filters` and prints what comes back.

- **Values are always bound parameters.** Filters are built with SQLAlchemy Core on the
  ``requests`` table of ``mirror.schema``; column names come from the fixed `COLUMNS` list.
- **Percentiles are continuous** (linear interpolation), PostgreSQL's ``percentile_cont``:
  with ``n`` sorted durations ``v[0..n-1]`` and ``h = p/100 * (n-1)``, the p-th percentile
  is ``v[floor(h)] + (h - floor(h)) * (v[ceil(h)] - v[floor(h)])``, in float64 and in
  PostgreSQL's own order of operations, so both backends give bit-identical figures. On
  SQLite durations are fetched (along the covering index ``ix_requests_endpoint_ended``,
  which holds every column stats needs) and picked in Python: that beat SQL window functions
  (docs/benchmarks.md, Queries). On PostgreSQL stats are one ``GROUP BY`` with
  ``percentile_cont(ARRAY[...]) WITHIN GROUP (ORDER BY duration)``.
- **Readers never take a lock.** On SQLite the file is opened read-only (``mode=ro``) in
  WAL mode, so a `mirror query` runs while cron syncs into the same file; on PostgreSQL
  every transaction is ``READ ONLY`` and ``REPEATABLE READ`` (one snapshot, like SQLite's).
- **Dialect-specific SQL lives in one place**: the section "dialects" at the end (the
  full-text search clause, the PostgreSQL stats statement), plus the ``hour_of`` / ``day_of``
  functions of ``mirror.schema`` and the read-only engines of ``mirror.db``. Everything else
  is portable Core.
"""

from __future__ import annotations

import contextlib
import itertools
import math
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from itertools import groupby, pairwise
from operator import itemgetter
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from mirror.db import ensure_schema, reader_engine, sqlite_path, tidy_wal, translate_errors
from mirror.errors import ConfigError, StoreError
from mirror.rollups import PERCENTILES, key_exprs, summary_statement
from mirror.schema import (
    HISTORIES,
    ROW_COLUMNS,
    STATUSES,
    oversized_requests,
    requests,
    sync_runs,
    sync_targets,
    sync_windows,
)
from mirror.timeparse import to_text, utcnow

#: every column a listing may show, in table order; nothing else is ever put in SQL
COLUMNS: tuple[str, ...] = (*ROW_COLUMNS, "history")
DEFAULT_COLUMNS = ("request_id", "endpoint_id", "status", "status_code", "duration", "ended_at")
PAYLOAD_COLUMNS = ("json_input", "json_output")
SORTS = ("ended_at", "sent_at", "duration")
TIME_FIELDS = ("ended_at", "sent_at")
GROUPS = ("endpoint", "status", "history", "hour", "day")
#: the fields of one stats row after its group keys, in output order
STATS_FIELDS = (
    "requests", "success", "user_error", "error", "unfinished", "error_rate",
    "user_error_rate", "p50", "p90", "p95", "p99", "max", "billable_units",
)  # fmt: skip
#: the same fields, most telling first: what a table too narrow for all of them keeps
STATS_RANKED = (
    "requests", "error_rate", "p50", "p95", "billable_units", "p99", "error",
    "user_error_rate", "max", "user_error", "unfinished", "success", "p90",
)  # fmt: skip


@dataclass(frozen=True, kw_only=True)
class Filters:
    """Which requests a question is about; every field narrows, an empty one does not.

    ``since`` is inclusive and ``until`` exclusive, both on ``time_field`` (``ended_at``
    unless asked otherwise, so unfinished requests drop out of any time range). An endpoint
    that is an app id (``owner/app``) also matches its routes (``owner/app/...``), as in sync.
    ``search`` is full-text over the payloads: every word must occur, in any order.
    ``histories``: which of fal's histories (``HISTORIES``: the calls to the user's own
    apps, ``serverless``, or the key's calls to hosted models, ``model``); empty: both.
    """

    endpoints: tuple[str, ...] = ()
    histories: tuple[str, ...] = ()
    statuses: tuple[str, ...] = ()
    status_codes: tuple[int, ...] = ()
    request_ids: tuple[str, ...] = ()
    since: datetime | None = None
    until: datetime | None = None
    time_field: str = "ended_at"
    min_duration: float | None = None
    max_duration: float | None = None
    search: str | None = None

    def __post_init__(self) -> None:
        for name in ("endpoints", "histories", "statuses", "status_codes", "request_ids"):
            object.__setattr__(self, name, tuple(getattr(self, name)))
        unknown = [h for h in self.histories if h not in HISTORIES]
        if unknown:
            raise ConfigError(f"unknown history {unknown[0]!r}; use one of {', '.join(HISTORIES)}")
        bad = [s for s in self.statuses if s not in STATUSES]
        if bad:
            raise ConfigError(f"unknown status {bad[0]!r}; use one of {', '.join(STATUSES)}")
        if self.time_field not in TIME_FIELDS:
            raise ConfigError(f"cannot filter on {self.time_field!r}; use ended_at or sent_at")
        check_time_range(self.since, self.until)
        lo, hi = self.min_duration, self.max_duration
        if lo is not None and hi is not None and hi < lo:
            raise ConfigError("--max-duration must not be below --min-duration")
        if self.search is not None and not self.search.split():
            raise ConfigError("--search needs at least one word")


def check_time_range(since: datetime | None, until: datetime | None) -> None:
    """A filter's ``since`` and ``until``: timezone-aware (a caller's `ValueError`), and
    ``until`` after ``since`` (`ConfigError`)."""
    for name, v in (("since", since), ("until", until)):
        if v is not None and v.tzinfo is None:
            raise ValueError(f"{name} must be timezone-aware")
    if since and until and until <= since:
        raise ConfigError("--until must be after --since")


def where_clauses(
    filters: Filters, dialect: str, *, endpoint_ids: Sequence[str] | None = None
) -> list[sa.ColumnElement[bool]]:
    """The filters as Core expressions (all values bound).

    ``endpoint_ids``: the endpoints' ids as `resolve_endpoints` found them, which the
    planner can use with the time range; without them, the endpoints as ranges.
    """
    r = requests.c
    out: list[sa.ColumnElement[bool]] = []
    if filters.endpoints:
        if endpoint_ids is None:
            out.append(endpoint_clause(r.endpoint_id, filters.endpoints))
        else:
            out.append(r.endpoint_id.in_(endpoint_ids))
    if filters.histories:
        out.append(r.history.in_(filters.histories))
    if filters.statuses:
        status = _status_column(dialect, steer=bool(filters.endpoints))
        out.append(status.in_(filters.statuses))
    if filters.status_codes:
        out.append(r.status_code.in_(filters.status_codes))
    if filters.request_ids:
        out.append(r.request_id.in_(filters.request_ids))
    t = r[filters.time_field]
    if filters.since is not None:
        out.append(t >= to_text(filters.since))
    if filters.until is not None:
        out.append(t < to_text(filters.until))
    if filters.min_duration is not None:
        out.append(r.duration >= filters.min_duration)
    if filters.max_duration is not None:
        out.append(r.duration <= filters.max_duration)
    if filters.search is not None:
        out.append(_search_clause(dialect, filters.search))
    return out


def endpoint_clause(column: Any, endpoints: Iterable[str]) -> sa.ColumnElement[bool]:
    """Rows of any of the endpoints; an app id also covers its routes (``owner/app/…``).

    The same reading as ``mirror.schema.target_clause`` (which sync uses), for any column: a
    range rather than LIKE, since ids contain ``_`` and a range uses the index.
    """
    return sa.or_(
        *(sa.or_(column == e, sa.and_(column >= e + "/", column < e + "0")) for e in endpoints)
    )


_NEXT_ID = sa.text(
    """
    WITH RECURSIVE ids(id) AS (
        SELECT min(endpoint_id) FROM requests WHERE endpoint_id >= :lo AND endpoint_id < :hi
        UNION ALL
        SELECT (SELECT min(endpoint_id) FROM requests WHERE endpoint_id > ids.id AND endpoint_id < :hi)
        FROM ids WHERE ids.id IS NOT NULL
    )
    SELECT id FROM ids WHERE id IS NOT NULL
    """
)


def resolve_endpoints(conn: Connection, endpoints: Iterable[str]) -> tuple[str, ...]:
    """The endpoint ids stored for some endpoints or app ids (an app's routes included).

    ``endpoint_id IN (...)`` lets the planner combine the endpoint index with a time range,
    which it will not do for the OR of an id and a range of routes. The routes are found by
    a loose index scan: one index seek per distinct id, however many rows each has.
    """
    out: dict[str, None] = {}
    for e in endpoints:
        out[e] = None
        for (rid,) in conn.execute(_NEXT_ID, {"lo": e + "/", "hi": e + "0"}):
            out[rid] = None
    return tuple(out)


def check_columns(columns: Iterable[str]) -> tuple[str, ...]:
    cols = tuple(columns)
    unknown = [c for c in cols if c not in COLUMNS]
    if unknown:
        raise ConfigError(f"unknown column {unknown[0]!r}; choose from {', '.join(COLUMNS)}")
    if not cols:
        raise ConfigError("no columns chosen")
    return cols


def select_statement(
    filters: Filters,
    *,
    columns: Sequence[str] = DEFAULT_COLUMNS,
    sort: str = "ended_at",
    descending: bool = True,
    limit: int | None = None,
    offset: int = 0,
    dialect: str = "sqlite",
    endpoint_ids: Sequence[str] | None = None,
) -> sa.Select[Any]:
    """The listing as one statement: rows in a total order (ties broken by request_id).

    Rows without a value in the sort column (unfinished ones, for ``ended_at``) come last in
    either direction, stated explicitly because SQLite and PostgreSQL disagree by default.
    """
    cols = check_columns(columns)
    if sort not in SORTS:
        raise ConfigError(f"cannot sort by {sort!r}; use one of {', '.join(SORTS)}")
    if limit is not None and limit < 0:
        raise ConfigError("--limit must not be negative")
    if offset < 0:
        raise ConfigError("--offset must not be negative")
    key = requests.c[sort]
    tie = requests.c.request_id
    order = (key.desc(), tie.desc()) if descending else (key.asc(), tie.asc())
    stmt = (
        sa.select(*(requests.c[c] for c in cols))
        .where(*where_clauses(filters, dialect, endpoint_ids=endpoint_ids))
        .order_by(order[0].nulls_last(), order[1])
    )
    if limit is not None:
        stmt = stmt.limit(limit)
    if offset:
        stmt = stmt.offset(offset)
    return stmt


def select_requests(conn: Connection, filters: Filters, **kw: Any) -> Iterator[tuple[Any, ...]]:
    """The matching requests, streamed as tuples in ``columns`` order; ``kw``: the listing's
    keywords of `select_statement` (``columns``, ``sort``, ``descending``, ``limit``,
    ``offset``)."""
    for row in conn.execute(listing_statement(conn, filters, **kw)):
        yield tuple(row)


def listing_statement(conn: Connection, filters: Filters, **kw: Any) -> sa.Select[Any]:
    """The statement `select_requests` runs (endpoints resolved on ``conn``)."""
    ids = resolve_endpoints(conn, filters.endpoints) if filters.endpoints else None
    return select_statement(filters, dialect=conn.dialect.name, endpoint_ids=ids, **kw)


# --------------------------------------------------------------------------- stats


def percentile_cont(sorted_values: Sequence[float], p: int) -> float | None:
    """The p-th percentile (0 <= p <= 100) of ascending values, by linear interpolation.

    PostgreSQL's ``percentile_cont(p / 100.0)``, bit for bit: ``h = q * (n - 1)`` with
    ``q = p / 100``, and between the neighbours ``lo = floor(h)`` and ``hi = ceil(h)`` the
    value ``v[lo] + ((h - lo) * (v[hi] - v[lo]))`` (``float8_lerp``: the same float64
    operations in the same order); when ``h`` is whole, ``v[h]`` itself.
    """
    n = len(sorted_values)
    if n == 0:
        return None
    h = (p / 100) * (n - 1)
    lo = math.floor(h)
    hi = math.ceil(h)
    loval = sorted_values[lo]
    if hi == lo:
        return loval
    return loval + ((h - lo) * (sorted_values[hi] - loval))


def micro_units(value: float) -> int:
    """``CAST(round(value * 1000000) AS INTEGER)`` exactly as SQLite computes it.

    Billable units are summed as integer millionths, the way ``summary_hourly`` keeps them,
    so a sum is exact whichever way it is taken (rows or summary) and in whatever order.
    SQLite's ``round`` rounds halves away from zero (Python's rounds them to even).
    """
    r = value * 1000000
    return int(r + 0.5) if r >= 0 else -int(-r + 0.5)


def named_groups(by: Iterable[str], known: Sequence[str], what: str = "group") -> tuple[str, ...]:
    """``by`` if each is one of ``known`` and named once; else `ConfigError` ("cannot
    ``what`` by ...")."""
    groups = tuple(by)
    for g in groups:
        if g not in known:
            raise ConfigError(f"cannot {what} by {g!r}; use {', '.join(known)}")
    if len(set(groups)) != len(groups):
        raise ConfigError("each --by group may be named once")
    return groups


def check_groups(by: Iterable[str]) -> tuple[str, ...]:
    groups = named_groups(by, GROUPS)
    if "hour" in groups and "day" in groups:
        raise ConfigError("group by hour or by day, not both")
    return groups


def _stream_order(by: Sequence[str], exprs: list[Any], t: Any) -> list[Any]:
    """Row order that keeps groups contiguous, in ascending key order.

    When the last key is a time bucket, ordering by the raw timestamp keeps each bucket
    contiguous and lets ``--by endpoint,day`` walk the covering index
    ``(endpoint_id, ended_at, ...)`` with no sort at all.
    """
    order = list(exprs)
    if by and by[-1] in ("hour", "day"):
        order[-1] = t
    return order


def stats_statement(
    filters: Filters, by: Sequence[str], dialect: str, *, endpoint_ids: Sequence[str] | None = None
) -> sa.Select[Any]:
    """Every matching row's group keys, status, duration and units, in group order."""
    r = requests.c
    t = r[filters.time_field]
    exprs = key_exprs(by, r.endpoint_id, r.status, t, r.history)
    return (
        sa.select(*(e.label(g) for e, g in zip(exprs, by, strict=True)), r.status, r.duration,
                  r.billable_units)
        .where(*where_clauses(filters, dialect, endpoint_ids=endpoint_ids))
        .order_by(*_stream_order(by, exprs, t))
    )  # fmt: skip


class _Group:
    """What stats accumulates for one group before the figures are worked out."""

    __slots__ = ("counts", "durations", "units")

    def __init__(self) -> None:
        self.counts = dict.fromkeys(STATUSES, 0)
        self.durations: list[float] = []
        self.units = 0

    def row(self, groups: Sequence[str], key: tuple[Any, ...]) -> dict[str, Any]:
        counts = self.counts
        durations = self.durations
        durations.sort()
        return stats_row(
            groups,
            key,
            counts,
            [percentile_cont(durations, p) for p in PERCENTILES],
            durations[-1] if durations else None,
            self.units,
        )


def stats_row(
    groups: Sequence[str],
    key: tuple[Any, ...],
    counts: dict[str, int],
    percentiles: Sequence[float | None],
    longest: float | None,
    units_micro: int,
) -> dict[str, Any]:
    """One output row of `stats`, from what either backend worked out for the group."""
    finished = counts["success"] + counts["user_error"] + counts["error"]
    out: dict[str, Any] = dict(zip(groups, key, strict=True))
    out["requests"] = sum(counts.values())
    out.update(counts)
    out["error_rate"] = counts["error"] / finished if finished else None
    out["user_error_rate"] = counts["user_error"] / finished if finished else None
    for p, value in zip(PERCENTILES, percentiles, strict=True):
        out[f"p{p}"] = value
    out["max"] = longest
    out["billable_units"] = units_micro / 1_000_000
    return out


def stats(conn: Connection, filters: Filters, *, by: Sequence[str] = ()) -> list[dict[str, Any]]:
    """Counts, rates, duration percentiles and billable units, per group of ``by``.

    ``by`` is any of ``endpoint``, ``status``, ``history`` (``serverless`` or ``model``)
    and one of ``hour`` / ``day`` (of the filter's time field; unfinished requests have
    no ``ended_at`` and fall in a null bucket). Groups come in ascending key order, null
    first. Rates are of *finished* requests:
    ``error_rate = error / (success + user_error + error)``. Percentiles (continuous, as
    PostgreSQL's ``percentile_cont``; see `percentile_cont`) and ``max`` are over the
    requests that have a duration. ``billable_units`` is summed exactly,
    to a millionth of a unit (see `micro_units`). With no ``by``, one row for all matching
    requests (zero counts when none match).

    When the filters and groups line up with ``summary_hourly`` (endpoint, status, and
    whole hours of ``ended_at``; it has no history), counts and units come from it and
    only durations are read from the covering index: several times faster on millions of
    rows, and the same answer. Both
    reads happen in one transaction, so a sync writing meanwhile cannot skew them.

    On PostgreSQL the whole answer is one aggregate statement (`pg_stats_statement`).
    """
    groups = check_groups(by)
    ids = resolve_endpoints(conn, filters.endpoints) if filters.endpoints else None
    if conn.dialect.name == "postgresql":
        return _pg_stats(conn, filters, groups, ids)
    acc: dict[tuple[Any, ...], _Group] = {}
    if summary_applies(conn, filters) and "history" not in groups:  # the summary has none
        _from_summary(conn, filters, groups, acc, ids)
        if filters.since is None and filters.until is None:
            # the summary counts requests once they end; add the rest from their own rows
            _from_rows(conn, filters, groups, acc, ids, extra=requests.c.ended_at.is_(None))
    else:
        _from_rows(conn, filters, groups, acc, ids)
    if not acc and not groups:
        acc[()] = _Group()
    return [acc[k].row(groups, k) for k in sorted(acc, key=_key_order)]


def _key_order(key: tuple[Any, ...]) -> tuple[tuple[bool, Any], ...]:
    """Ascending group keys, null first, by code point (whatever the database's collation)."""
    return tuple((v is not None, v) for v in key)


def _from_rows(
    conn: Connection,
    filters: Filters,
    groups: Sequence[str],
    acc: dict[tuple[Any, ...], _Group],
    ids: Sequence[str] | None,
    *,
    extra: sa.ColumnElement[bool] | None = None,
) -> None:
    stmt = stats_statement(filters, groups, conn.dialect.name, endpoint_ids=ids)
    if extra is not None:
        stmt = stmt.where(extra)
    k = len(groups)
    keyfn = itemgetter(*range(k)) if k else (lambda _row: ())
    status_of, duration_of, units_of = itemgetter(k), itemgetter(k + 1), itemgetter(k + 2)
    for key, rows_iter in groupby(_raw_rows(conn, stmt), key=keyfn):
        key = key if k > 1 else (key,) if k == 1 else ()
        rows = list(rows_iter)
        g = acc.get(key) or acc.setdefault(key, _Group())
        for status in map(status_of, rows):
            g.counts[status] = g.counts.get(status, 0) + 1
        g.durations += [d for d in map(duration_of, rows) if d is not None]
        g.units += sum(micro_units(u) for u in map(units_of, rows) if u is not None)


def summary_applies(conn: Connection, f: Filters) -> bool:
    def whole_hour(dt: datetime | None) -> bool:
        return dt is None or (dt.minute, dt.second, dt.microsecond) == (0, 0, 0)

    return (
        conn.dialect.name == "sqlite"
        and f.time_field == "ended_at"
        and whole_hour(f.since)
        and whole_hour(f.until)
        and not (f.status_codes or f.request_ids or f.search or f.histories)
        and f.min_duration is None
        and f.max_duration is None
    )


def _from_summary(
    conn: Connection,
    f: Filters,
    groups: Sequence[str],
    acc: dict[tuple[Any, ...], _Group],
    ids: Sequence[str] | None,
) -> None:
    stmt = summary_statement(
        groups, endpoint_ids=ids, statuses=f.statuses, since=f.since, until=f.until
    )
    k = len(groups)
    sizes: dict[tuple[Any, ...], int] = {}
    for row in conn.execute(stmt):
        key = tuple(row[:k])
        g = acc.get(key) or acc.setdefault(key, _Group())
        g.counts[row[k]] = g.counts.get(row[k], 0) + int(row[k + 1])
        g.units += int(row[k + 3])
        sizes[key] = sizes.get(key, 0) + int(row[k + 2])
    # the durations of the same rows, group after group in ascending key order
    durations = durations_statement(f, groups, ids)
    cur = _raw_rows(conn, durations)
    for key in sorted(sizes):
        n = sizes[key]
        if n:
            acc[key].durations += [d for (d,) in itertools.islice(cur, n)]


def durations_statement(
    f: Filters, groups: Sequence[str], ids: Sequence[str] | None
) -> sa.Select[Any]:
    """The durations behind the summary's rows, in group order (read from the covering index)."""
    r = requests.c
    t = r.ended_at
    exprs = key_exprs(groups, r.endpoint_id, r.status, t, r.history)
    return (
        sa.select(r.duration)
        .where(
            *where_clauses(f, "sqlite", endpoint_ids=ids), t.is_not(None), r.duration.is_not(None)
        )
        .order_by(*_stream_order(groups, exprs, t))
    )


def _raw_rows(conn: Connection, stmt: sa.Select[Any]) -> Iterator[tuple[Any, ...]]:
    """The driver's own rows: SQLAlchemy's Row objects cost more than the query on 1M rows."""
    sql, params = statement_sql(conn, stmt)
    result = conn.exec_driver_sql(sql, params if isinstance(params, dict) else tuple(params))
    cursor = result.cursor
    if cursor is None:
        return iter(())
    rows: Iterator[tuple[Any, ...]] = iter(cursor)  # type: ignore[call-overload]
    if conn.dialect.name == "postgresql":
        # timestamptz arrives as datetime here (no SQLAlchemy type in between): the text
        return (tuple(_canonical(v) for v in row) for row in rows)
    return rows


def _canonical(value: Any) -> Any:
    """A driver value as SQLite would give it: aware datetimes as the canonical UTC text."""
    if isinstance(value, datetime) and value.tzinfo is not None:
        return to_text(value)
    return value


def statement_sql(conn: Connection, stmt: sa.Select[Any]) -> tuple[str, Any]:
    """A statement as the driver receives it: SQL text and its parameters (a list for
    SQLite's positional ``?``, a dict for psycopg's named ``%(name)s``).

    Also for ``EXPLAIN QUERY PLAN`` in the tests and the benchmark, which must see the very
    SQL that listings and stats run.
    """
    compiled = stmt.compile(conn, compile_kwargs={"render_postcompile": True})
    if compiled.positiontup is None:
        return str(compiled), dict(compiled.params)
    return str(compiled), [compiled.params[k] for k in compiled.positiontup]


# --------------------------------------------------------------------------- sync status


@dataclass
class TargetStatus:
    """What the mirror holds for one sync target, and how complete it is."""

    target: str
    rows: int
    unfinished: int
    oldest_ended_at: str | None
    newest_ended_at: str | None
    covered_from: str | None
    covered_to: str | None
    gaps: list[tuple[str, str]] = field(default_factory=list)
    #: where the range the target was asked to cover starts
    requested_from: str | None = None
    last_run_outcome: str | None = None
    last_run_started_at: str | None = None
    last_run_ended_at: str | None = None
    last_run_error: str | None = None
    #: this machine's clock minus the API's, seconds, as the last run that measured it saw
    clock_skew: float | None = None
    #: requests stored without payloads because a page of one was over the body cap with
    #: them (``oversized_requests``): request_id, endpoint_id, sent_at, page_bytes,
    #: cap_bytes, first_seen_at, last_seen_at; oldest first
    oversized: list[dict[str, Any]] = field(default_factory=list)
    #: which of fal's histories the target is (``sync_targets.history``)
    history: str = "serverless"

    def as_dict(self) -> dict[str, Any]:
        return {
            "target": self.target,
            "history": self.history,
            "rows": self.rows,
            "unfinished": self.unfinished,
            "oldest_ended_at": self.oldest_ended_at,
            "newest_ended_at": self.newest_ended_at,
            "requested_from": self.requested_from,
            "covered_from": self.covered_from,
            "covered_to": self.covered_to,
            "gaps": [list(g) for g in self.gaps],
            "last_run": self.last_run_outcome,
            "last_run_started_at": self.last_run_started_at,
            "last_run_ended_at": self.last_run_ended_at,
            "last_run_error": self.last_run_error,
            "clock_skew": self.clock_skew,
            "oversized": self.oversized,
        }


def sync_status(conn: Connection, now: str | None = None) -> list[TargetStatus]:
    """Per sync target: rows, time span, completed windows and their gaps, the last run.

    A gap is any stretch of the requested range (from ``requested_from`` to the end of the
    last completed window) that no sync has completed: between completed windows, and
    before the first one when a backfill stopped short of its start. A target with a
    requested start but no completed window at all is one gap, up to ``now``. Oversized
    requests are a target's as its rows are (its own endpoint id and its routes).
    """
    r = requests.c
    w = sync_windows.c
    c = sync_runs.c
    t_ = sync_targets.c
    targets = conn.execute(
        sa.select(t_.target, t_.requested_from, t_.history).order_by(t_.target)
    ).all()
    runs = conn.execute(
        sa.select(c.targets, c.outcome, c.started_at, c.ended_at, c.error).order_by(c.id.desc())
    ).all()
    skew = conn.execute(
        sa.select(c.clock_skew).where(c.clock_skew.is_not(None)).order_by(c.id.desc()).limit(1)
    ).scalar_one_or_none()
    out = []
    for t, requested, history in targets:
        n, oldest, newest = conn.execute(
            sa.select(sa.func.count(), sa.func.min(r.ended_at), sa.func.max(r.ended_at)).where(
                endpoint_clause(r.endpoint_id, [t])
            )
        ).one()
        unfinished = conn.execute(
            sa.select(sa.func.count())
            .select_from(requests)
            .where(endpoint_clause(r.endpoint_id, [t]), r.ended_at.is_(None))
        ).scalar_one()
        windows = conn.execute(
            sa.select(w.window_start, w.window_end).where(w.target == t).order_by(w.window_start)
        ).all()
        gaps = [(a[1], b[0]) for a, b in pairwise(windows) if a[1] < b[0]]
        o = oversized_requests.c
        big = conn.execute(
            sa.select(oversized_requests)
            .where(endpoint_clause(o.endpoint_id, [t]))
            .order_by(o.sent_at, o.request_id)
        )
        if requested is not None and windows and requested < windows[0][0]:
            gaps.insert(0, (requested, windows[0][0]))
        elif requested is not None and not windows:
            gaps.append((requested, now or to_text(utcnow())))
        st = TargetStatus(
            target=t,
            rows=int(n),
            unfinished=int(unfinished),
            oldest_ended_at=oldest,
            newest_ended_at=newest,
            covered_from=windows[0][0] if windows else None,
            covered_to=windows[-1][1] if windows else None,
            gaps=gaps,
            requested_from=requested,
            clock_skew=skew,
            oversized=[dict(b._mapping) for b in big],
            history=history,
        )
        for run in runs:
            if t in run.targets.split(","):
                st.last_run_outcome = run.outcome
                st.last_run_started_at = run.started_at
                st.last_run_ended_at = run.ended_at
                st.last_run_error = run.error
                break
        out.append(st)
    return out


# --------------------------------------------------------------------------- opening


@contextlib.contextmanager
def open_reader(db: str) -> Iterator[Connection]:
    """A read-only connection to a mirror at schema head; driver errors become one line."""
    engine = reader_engine(db)
    try:
        ensure_schema(db, engine)
        with translate_errors(db), engine.connect() as conn:
            yield conn
    finally:
        engine.dispose()
        path = sqlite_path(db)
        if path is not None:
            tidy_wal(path)


# --------------------------------------------------------------------------- dialects
# Everything below knows which database it talks to.


def _status_column(dialect: str, *, steer: bool) -> Any:
    """``status``, or on SQLite ``+status`` when an endpoint is filtered too.

    SQLite plans without statistics (no one runs ANALYZE on a mirror), and given endpoint,
    status and a time range it may pick ``(status, ended_at)``, scanning every endpoint's
    errors. The unary plus keeps the term off that index, so the endpoint index
    ``(endpoint_id, ended_at, ..., status, ...)`` is used and status is checked inside it.
    """
    if dialect == "sqlite" and steer:
        return sa.literal_column("+requests.status", sa.Text)
    return requests.c.status


#: the searched document on PostgreSQL: exactly the expression of the GIN index
#: ``ix_requests_search`` (migration 0002), so that the planner uses the index
PG_SEARCH_DOCUMENT = (
    "to_tsvector('simple'::regconfig, "
    "COALESCE(json_input::text, '') || ' ' || COALESCE(json_output::text, ''))"
)


def _search_clause(dialect: str, text: str) -> Any:
    """Every word of ``text`` must occur in the payloads, each word as a phrase.

    SQLite: an FTS5 query (`fts_query`). PostgreSQL: one ``phraseto_tsquery('simple',
    word)`` per word, joined by ``&&`` and matched against `PG_SEARCH_DOCUMENT`, so the GIN
    index answers it. As in FTS5, a word without any token (``--``) is ignored next to
    other words, and alone matches nothing.
    """
    if dialect == "sqlite":
        return sa.text(
            "requests.rowid IN (SELECT rowid FROM requests_fts WHERE requests_fts MATCH :fts_query)"
        ).bindparams(fts_query=fts_query(text))
    if dialect != "postgresql":
        raise StoreError(f"full-text search is not available on {dialect}")
    phrases = [
        sa.func.phraseto_tsquery(
            sa.literal_column("'simple'::regconfig"), sa.bindparam(f"search_{i}", word, sa.Text)
        )
        for i, word in enumerate(text.split())
    ]
    tsquery: Any = phrases[0]
    for q in phrases[1:]:
        tsquery = tsquery.op("&&")(q)
    return sa.literal_column(PG_SEARCH_DOCUMENT).op("@@")(tsquery)


def fts_query(text: str) -> str:
    """User words -> an FTS5 query that cannot be a syntax error: every word, quoted.

    Each word becomes a phrase (``"foo-bar"`` matches the tokens foo, bar in a row), and all
    of them must occur; FTS5 operators typed by the user are matched as plain words.
    """
    return " ".join('"' + w.replace('"', '""') + '"' for w in text.split())


def _pg_micro(x: Any) -> Any:
    """`micro_units` in SQL: the expression of the summary trigger (migration 0002)."""
    half = sa.case((x < 0, sa.literal_column("-0.5")), else_=sa.literal_column("0.5"))
    return sa.cast(sa.func.trunc(x * 1000000 + half), sa.BigInteger)


def pg_stats_statement(
    filters: Filters, by: Sequence[str], *, endpoint_ids: Sequence[str] | None = None
) -> sa.Select[Any]:
    """Stats as one PostgreSQL aggregate: per group, the count of each status, the
    percentiles (``percentile_cont``), the longest duration and the summed micro-units."""
    from sqlalchemy.dialects import postgresql

    r = requests.c
    exprs = key_exprs(by, r.endpoint_id, r.status, r[filters.time_field], r.history)
    fractions = postgresql.array(
        [sa.literal(p / 100, sa.Float) for p in PERCENTILES], type_=sa.Float
    )
    percentiles = sa.func.percentile_cont(fractions, type_=postgresql.ARRAY(sa.Float))
    return (
        sa.select(
            *(e.label(g) for e, g in zip(exprs, by, strict=True)),
            *(sa.func.count().filter(r.status == s) for s in STATUSES),
            percentiles.within_group(r.duration),
            sa.func.max(r.duration),
            sa.func.sum(_pg_micro(r.billable_units)),
        )
        .where(*where_clauses(filters, "postgresql", endpoint_ids=endpoint_ids))
        .group_by(*exprs)
    )


def _pg_stats(
    conn: Connection, filters: Filters, groups: Sequence[str], ids: Sequence[str] | None
) -> list[dict[str, Any]]:
    k = len(groups)
    out = []
    for row in conn.execute(pg_stats_statement(filters, groups, endpoint_ids=ids)):
        key = tuple(row[:k])
        counts = {s: int(n) for s, n in zip(STATUSES, row[k : k + len(STATUSES)], strict=True)}
        pcts, longest, units = row[k + len(STATUSES) :]
        units = int(units) if isinstance(units, (int, Decimal)) else 0
        out.append(
            stats_row(groups, key, counts, pcts or [None] * len(PERCENTILES), longest, units)
        )
    out.sort(key=lambda r: _key_order(tuple(r[g] for g in groups)))
    return out
