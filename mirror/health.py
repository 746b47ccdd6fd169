"""How the mirror is doing, for people and for monitoring: a `Health` snapshot and its problems.

`read_health` reads, in one read-only transaction, what `mirror status` shows per target
(``mirror.query.sync_status``), the run log (``sync_runs``), rows left unfinished for long
and the database's size. `problems` turns a snapshot into one line per thing that is wrong,
against `Thresholds`: `mirror status --check` prints them, `mirror report` shows them,
and ``mirror.metrics`` exports the snapshot's figures. Nothing here prints or knows click.

What counts as a problem:

- **stale**: the last successful sync ended longer ago than ``max_age``; by default three
  times the usual interval between runs (the median gap between the starts of the last
  runs in the log), at least `MIN_MAX_AGE`; with fewer than two runs logged, `FALLBACK_MAX_AGE`.
- **behind**: a target's completed windows end longer than ``max_age`` ago (one target can
  fall behind while the others sync: a key that lost access to it, say).
- **gaps**: a stretch of a target's requested range that no sync has completed.
- **failing**: the last ``max_failures`` finished runs all ended other than ``ok``.
- **stuck rows**: requests still unfinished ``unfinished_age`` after they were sent.
- **cost**: billing events refused (the key lacks ADMIN scope) or their last sync failed;
  their completed windows ending longer than ``max_age`` ago (cost behind); fal's usage
  totals differing from the billing events held (``mirror.cost_status``). Nothing while no
  sync has tried to mirror cost, nor once the last sync left it out (``--no-cost``: the
  user's choice); a mirror whose cost was mirrored and then stopped says so in the healthy
  line instead.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from itertools import pairwise

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from mirror.cost_status import CostStatus, cost_status
from mirror.db import sqlite_path
from mirror.query import TargetStatus, endpoint_clause, open_reader, sync_status
from mirror.schema import requests, sync_runs
from mirror.timeparse import from_text, to_text

#: runs of the log read for the usual interval and the failing streak
RECENT_RUNS = 21
#: the default --max-age is never below this (runs started by hand close together would
#: otherwise make it seconds)
MIN_MAX_AGE = timedelta(minutes=5)
#: the default --max-age while the log has fewer than two runs to measure an interval from
FALLBACK_MAX_AGE = timedelta(hours=24)
DEFAULT_MAX_FAILURES = 3
DEFAULT_UNFINISHED_AGE = timedelta(hours=6)
#: outcomes of runs that have ended (``running`` is a run going on, or one killed that the
#: next sync on the file will log as ``killed``)
FINISHED = ("ok", "failed", "interrupted", "killed")


@dataclass(frozen=True)
class Run:
    """One row of the run log."""

    id: int
    started_at: str
    ended_at: str | None
    outcome: str
    targets: tuple[str, ...]
    pages: int
    api_calls: int
    rows_inserted: int
    rows_updated: int
    error: str | None

    @property
    def seconds(self) -> float | None:
        if self.ended_at is None:
            return None
        return (from_text(self.ended_at) - from_text(self.started_at)).total_seconds()


@dataclass(frozen=True)
class Thresholds:
    """When the mirror counts as unhealthy; ``max_age`` None: from the run log (see module)."""

    max_age: timedelta | None = None
    max_failures: int = DEFAULT_MAX_FAILURES
    unfinished_age: timedelta = DEFAULT_UNFINISHED_AGE


@dataclass
class Health:
    now: datetime
    targets: list[TargetStatus]
    #: the latest runs, newest first (at most `RECENT_RUNS`)
    runs: list[Run]
    #: the latest run that ended ``ok``, however old
    last_success: Run | None
    #: per target: requests unfinished since before ``now - unfinished_age``, and the
    #: oldest one's ``sent_at``
    stuck: dict[str, tuple[int, str]] = field(default_factory=dict)
    #: bytes the database takes: the SQLite file and its WAL, or PostgreSQL's database
    size_bytes: int | None = None
    unfinished_age: timedelta = DEFAULT_UNFINISHED_AGE
    #: whether cost is mirrored (None: not read)
    cost: CostStatus | None = None

    @property
    def last_run(self) -> Run | None:
        """The latest run that has ended."""
        return next((r for r in self.runs if r.outcome in FINISHED), None)

    @property
    def usual_interval(self) -> timedelta | None:
        """The median gap between the starts of the latest runs; None below two runs."""
        starts = [from_text(r.started_at) for r in self.runs]
        gaps = [(a - b).total_seconds() for a, b in pairwise(starts)]
        return timedelta(seconds=statistics.median(gaps)) if gaps else None

    def default_max_age(self) -> timedelta:
        usual = self.usual_interval
        if usual is None:
            return FALLBACK_MAX_AGE
        return max(3 * usual, MIN_MAX_AGE)

    @property
    def failing_streak(self) -> int:
        """How many of the latest finished runs ended other than ``ok``, in a row."""
        n = 0
        for r in self.runs:
            if r.outcome == "running":
                continue
            if r.outcome == "ok":
                break
            n += 1
        return n

    def lag(self, target: TargetStatus) -> timedelta | None:
        """How far behind now the target's completed windows end; None before the first."""
        if target.covered_to is None:
            return None
        return max(self.now - from_text(target.covered_to), timedelta(0))


def read_health(
    conn: Connection,
    db: str,
    *,
    now: datetime,
    unfinished_age: timedelta = DEFAULT_UNFINISHED_AGE,
) -> Health:
    """The snapshot of a mirror open on ``conn`` (``db``: its ``--db``, for the file size)."""
    c = sync_runs.c
    cols = (c.id, c.started_at, c.ended_at, c.outcome, c.targets, c.pages, c.api_calls,
            c.rows_inserted, c.rows_updated, c.error)  # fmt: skip
    recent = [
        _run(row) for row in conn.execute(sa.select(*cols).order_by(c.id.desc()).limit(RECENT_RUNS))
    ]
    ok = conn.execute(
        sa.select(*cols).where(c.outcome == "ok").order_by(c.id.desc()).limit(1)
    ).first()
    targets = sync_status(conn, to_text(now))
    health = Health(
        now=now,
        targets=targets,
        runs=recent,
        last_success=_run(ok) if ok is not None else None,
        size_bytes=_size(conn, db),
        unfinished_age=unfinished_age,
        cost=cost_status(conn),
    )
    cutoff = to_text(now - unfinished_age)
    r = requests.c
    for t in targets:
        n, oldest = conn.execute(
            sa.select(sa.func.count(), sa.func.min(r.sent_at)).where(
                endpoint_clause(r.endpoint_id, [t.target]),
                r.ended_at.is_(None),
                r.sent_at < cutoff,
            )
        ).one()
        if n:
            health.stuck[t.target] = (int(n), oldest)
    return health


def snapshot(
    db: str, *, now: datetime, unfinished_age: timedelta = DEFAULT_UNFINISHED_AGE
) -> Health:
    """`read_health` of the mirror ``db``, opened read-only (as every reader opens it)."""
    with open_reader(db) as conn:
        return read_health(conn, db, now=now, unfinished_age=unfinished_age)


def _run(row: Sequence[object]) -> Run:
    (id_, started, ended, outcome, targets, pages, calls, ins, upd, error) = row
    return Run(
        id=int(id_),  # type: ignore[call-overload]
        started_at=str(started),
        ended_at=None if ended is None else str(ended),
        outcome=str(outcome),
        targets=tuple(str(targets).split(",")) if targets else (),
        pages=int(pages or 0),  # type: ignore[call-overload]
        api_calls=int(calls or 0),  # type: ignore[call-overload]
        rows_inserted=int(ins or 0),  # type: ignore[call-overload]
        rows_updated=int(upd or 0),  # type: ignore[call-overload]
        error=None if error is None else str(error),
    )


def _size(conn: Connection, db: str) -> int | None:
    path = sqlite_path(db)
    if path is not None:
        files = [path, path.with_name(path.name + "-wal")]
        return sum(p.stat().st_size for p in files if p.exists())
    if conn.dialect.name == "postgresql":
        return int(
            conn.execute(sa.text("SELECT pg_database_size(current_database())")).scalar_one()
        )
    return None


def problems(health: Health, thresholds: Thresholds = Thresholds()) -> list[str]:
    """One line per thing that is wrong with the mirror; empty when it is healthy."""
    out: list[str] = []
    now = health.now
    if not health.targets:
        return ["no sync targets: nothing is mirrored yet (mirror sync --endpoint ID)"]
    max_age = thresholds.max_age or health.default_max_age()
    how = "--max-age" if thresholds.max_age else "the default --max-age, 3x the usual interval"
    ok = health.last_success
    if ok is None:
        out.append("no sync has succeeded yet")
    else:
        age = now - from_text(ok.ended_at or ok.started_at)
        if age > max_age:
            out.append(
                f"last successful sync ended {describe_age(age)} ago "
                f"({minute(ok.ended_at)}), over {how} ({describe_age(max_age)})"
            )
    streak = health.failing_streak
    if streak >= thresholds.max_failures:
        last = health.last_run
        error = f": {last.error}" if last is not None and last.error else ""
        out.append(
            f"the last {streak} runs did not succeed (the latest {last.outcome if last else '?'}{error})"
        )
    for t in health.targets:
        lag = health.lag(t)
        if lag is not None and lag > max_age and ok is not None:
            out.append(
                f"{t.target}: covered only up to {minute(t.covered_to)}, {describe_age(lag)} behind, "
                f"over {how} ({describe_age(max_age)})"
            )
        if t.gaps:
            first = t.gaps[0]
            more = f" (and {len(t.gaps) - 1} more)" if len(t.gaps) > 1 else ""
            out.append(f"{t.target}: gap in coverage {minute(first[0])} … {minute(first[1])}{more}")
        if t.target in health.stuck:
            n, oldest = health.stuck[t.target]
            out.append(
                f"{t.target}: {n} request{'s' if n != 1 else ''} unfinished for over "
                f"{describe_age(health.unfinished_age)} (the oldest sent {minute(oldest)})"
            )
    if health.cost is not None:
        out += _cost_problems(health.cost, now, max_age, how)
    return out


def _cost_problems(cost: CostStatus, now: datetime, max_age: timedelta, how: str) -> list[str]:
    if cost.state == "skipped":  # the user's choice (--no-cost): said by the healthy line
        return []
    if cost.state == "refused":
        return [f"cost is not being mirrored: {cost.reason}"]
    out = []
    if cost.state == "failed":
        out.append(f"cost: the last sync of billing events failed: {cost.reason}")
    if cost.covered_to is not None and cost.state != "never":
        lag = now - from_text(cost.covered_to)
        if lag > max_age:
            out.append(
                f"cost: billing events covered only up to {minute(cost.covered_to)}, "
                f"{describe_age(lag)} behind, over {how} ({describe_age(max_age)})"
            )
    if cost.usage_differences:
        out.append(
            f"cost: fal's usage totals differ from the billing events held on "
            f"{cost.usage_differences} day(s) and endpoint(s) (table usage_checks)"
        )
    return out


def healthy_line(health: Health) -> str:
    """What `mirror status --check` says when it finds nothing wrong."""
    n = len(health.targets)
    ok = health.last_success
    when = (
        f"; last successful sync ended {describe_age(health.now - from_text(ok.ended_at))} ago"
        if ok is not None and ok.ended_at
        else ""
    )
    cost = health.cost
    stopped = f"; cost {cost.stopped()}" if cost and cost.state == "skipped" and cost.ok_at else ""
    return f"ok: {n} target{'s' if n != 1 else ''}{when}{stopped}"


def minute(ts: str | None) -> str:
    """A stored timestamp to the minute, as `mirror status` shows it."""
    return f"{ts[:16]}Z" if ts else "?"


def describe_age(d: timedelta) -> str:
    """``3d 4h``, ``2h 5m``, ``12m``, ``40s``: the two largest units."""
    s = int(d.total_seconds())
    days, s = divmod(s, 86400)
    hours, s = divmod(s, 3600)
    minutes, s = divmod(s, 60)
    parts = [(days, "d"), (hours, "h"), (minutes, "m"), (s, "s")]
    while len(parts) > 1 and parts[0][0] == 0:
        parts.pop(0)
    shown = [f"{n}{u}" for n, u in parts[:2] if n]
    return " ".join(shown) or "0s"
