"""The sync engine: plan windows, walk their pages in parallel, write them in one place.

Data flows one way: worker threads each walk one window (page after page along the
cursor) and put validated pages on a bounded queue; the calling thread is the only writer.
It drains the queue in batches, upserts each batch in one transaction, and records a
window complete in the same transaction as the window's last page. So a crash or kill at
any point re-walks at most the windows that were in flight, and the state never claims a
window whose rows are not committed.

Correct under every reading of the API that fal leaves open (docs/fal-api.md, "The readings mirror must be correct under"):

- *Which timestamp the window filters on.* Windows end at the moment the sync started and
  are walked again from the last completed point minus the lookback, so requests that
  arrive or end late are picked up whether the filter is ``ended_at``, ``sent_at`` or
  ``started_at``. Rows seen unfinished (possible unless the filter is ``ended_at``) are kept
  and, once they fall behind the re-walked range, refreshed one by one by ``request_id``
  until they end.
- *Sort direction and null placement.* Pages are offset-based, so rows moving while a
  window is walked can shift a page boundary. A row that moves from the part already read
  into the part not yet read is then read twice; every skip implies such a move (rows are
  never deleted), so a walk that sees any ``request_id`` twice is repeated, and its window
  is only marked complete after a walk without repeats.
- *Dense windows.* After a window's first page the density is estimated from the page's
  ``ended_at`` span; a window that would take more than ``walk_rows`` rows is split (its
  first page is still stored), so no walk is long. A window planned where the mirror holds
  nothing (a backfill) that needs more than one page is cut instead by the server's hourly
  request counts (one analytics call, of the target's history), so a dense hour its first page did
  not see does not cost a long walk read twice; the counts only shape the windows, every
  window is still walked to its end. Without counts, a walk whose later pages turn dense
  is cut there (``mirror.cuts``): the part read is complete, the rest spread over walkers.
- *Two histories.* A target is an app of the key's account or one of fal's hosted models
  (``SyncOptions.histories``, ``mirror.histories``): the same walk, through the list and
  analytics operations of its history, its rows stored with that history.

A window's walk (the cursor and its rules, the list call with its billing fallback, pages
over the body cap asked for in smaller ones, the re-walk of a window whose rows moved), the
stop signal and the notes are ``mirror.walk``'s, shared with verify; what a row is,
``mirror.records``'s; the analytics calls are ``FalClient.hourly_counts``. Walkers hand
the writer their rows (and those read without payloads, which it records:
``mirror.oversize``), and the end of each task with what failed it or the work it leaves
(a dense window's parts), through one queue; only the calling thread submits work and
writes.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import math
import queue
import random
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from operator import attrgetter
from typing import Protocol

import sqlalchemy as sa

from mirror import cost_sync, histories, interrupts, oversize
from mirror.api import ANALYTICS_PATHS, FalClient
from mirror.cuts import FilterProbe, Reach, plan_cut
from mirror.errors import ApiError, AuthError, MirrorError
from mirror.records import Row
from mirror.redact import redact
from mirror.serverclock import NOTABLE_SKEW, SkewEstimate, describe
from mirror.steady import Steady
from mirror.store import Store, Tally, UpsertResult
from mirror.timeparse import from_text, to_text, utcnow
from mirror.walk import (
    Lister,
    Notes,
    PageLimits,
    Step,
    Stop,
    Stopped,
    WindowWalk,
    until_stable,
)
from mirror.windows import Window, ceil_s, floor_s, pack, plan, split

log = logging.getLogger("mirror.sync")

#: rows per writer transaction at most; gains flatten beyond ~10,000 (docs/benchmarks.md)
BATCH_ROWS = 10_000
#: decoded pages waiting for the writer, at most. When the writer is the bottleneck (no API
#: latency) each of its transactions takes what has piled up: 16 pages gave ~1,600-row
#: transactions, 32 give ~3,200 and a 200,000-request backfill 9% more items/s (fewer
#: FTS5 segments to merge, fewer commits), 64 only 2% more again for 12 MiB more peak RSS
#: (docs/benchmarks.md). Each page is ~100 rows, ~120 KB decoded.
QUEUE_PAGES = 32
#: a walk longer than this many pages without end is abandoned and its window split
MAX_WALK_PAGES = 50
#: on PostgreSQL, a process takes another target only while fewer tasks than this are
#: outstanding: the walkers the pacer starts with, whatever ``max_concurrency`` allows
TAKE_ROOM = 4


@dataclass
class SyncOptions:
    targets: Sequence[str]
    since: datetime | None = None
    until: datetime | None = None
    lookback: timedelta = timedelta(hours=2)
    payloads: bool = True
    billing: bool = True
    #: how far back the first sync of a target goes without --since
    first_since: timedelta = timedelta(days=1)
    #: the longest window planned; a dense one is split by history or by its first page
    window: timedelta = timedelta(days=1)
    walk_rows: int = 2_000
    max_concurrency: int = 16
    unfinished_limit: int = 500
    rewalks: int = 2
    #: re-check older history on a schedule (RECHECK_TIERS), analytics first
    recheck: bool = True
    #: walk of the lookback narrowed by analytics to what may have changed (``mirror.steady``);
    #: off: walked whole on every run (``--full-lookback``)
    steady: bool = True
    #: with ``since``: move the targets' stored start forward to it (on purpose), instead
    #: of only ever reaching further back
    narrow: bool = False
    #: the history of each target that is not ``serverless`` (a hosted model: ``model``),
    #: which says through which operations it is listed and counted
    histories: Mapping[str, str] = field(default_factory=dict)
    #: then mirror billing events, prices and usage totals (``mirror.cost_sync``); on, as
    #: `mirror sync` without ``--no-cost``
    cost: bool = True


#: (tier, how far back it reaches, how often it runs): the platform backfills requests into
#: hours long past (docs/fal-api.md, "Late records"); these re-checks find them at the cost of one analytics
#: call per target and tier, plus a walk of each hour whose request count differs.
RECHECK_TIERS = (
    ("day", timedelta(days=1), timedelta(hours=1)),
    ("week", timedelta(days=7), timedelta(days=1)),
)


@dataclass
class WindowCounts:
    """A sync's windows: planned (a split window's parts included), completed, and walked
    without completing because their rows kept moving (walked again next run)."""

    planned: int = 0
    done: int = 0
    unstable: int = 0


@dataclass
class SyncReport(Tally):
    run_id: int
    targets: list[str]
    started_at: datetime
    windows: WindowCounts = field(default_factory=WindowCounts)
    pages: int = 0
    refreshed: int = 0
    rechecked_hours: int = 0
    recheck_calls: int = 0
    notes: list[str] = field(default_factory=list)
    #: targets another process held (PostgreSQL scale-out): left to it, not a failure
    left_to_others: list[str] = field(default_factory=list)
    outcome: str = "running"
    error: str | None = None
    seconds: float = 0.0
    #: this machine's clock minus the API's, in seconds (None: no answer carried a date)
    clock_skew: float | None = None
    #: what the run did about cost (None: not asked to, or it did not get that far)
    cost: cost_sync.CostReport | None = None

    def summary(self) -> str:
        n = len(self.targets) - len(self.left_to_others)
        line = (
            f"synced {n} target{'s' if n != 1 else ''}: "
            f"{self.inserted} new, {self.updated} updated, {self.windows.done} windows "
            f"in {self.pages} pages ({self.api_calls} calls) in {self.seconds:.1f}s"
        )
        if self.rechecked_hours:
            line += f"; re-checked {self.rechecked_hours} older hours ({self.recheck_calls} calls)"
        if self.windows.unstable:
            line += f"; {self.windows.unstable} windows kept changing and will be walked again"
        if self.cost is not None and self.cost.refused is None:
            line += f"; {self.cost.summary()}"
        if self.left_to_others:
            k = len(self.left_to_others)
            line += (
                f"; {k} target{'s' if k != 1 else ''} left to other mirror sync processes "
                f"that were syncing {'them' if k != 1 else 'it'} ({', '.join(self.left_to_others)})"
            )
        return line


class ProgressListener(Protocol):
    """Told the run's counts so far after each batch of pages is written (the CLI's live
    line, ``mirror.progress``). Called from the writer's thread: it must return at once."""

    def __call__(self, report: SyncReport) -> None: ...


@dataclass(frozen=True)
class _Walk:
    target: str
    window: Window
    #: cut to about one walk by the server's hourly counts: split by its first page only if
    #: that page shows it far denser than the counts said
    sized: bool = False
    #: planned without any count (the mirror held no row in it): a walk of more than a page
    #: asks the server's hourly counts how to cut it (``Syncer._by_counts``)
    blind: bool = False


@dataclass(frozen=True)
class _Refresh:
    target: str
    rows: tuple[tuple[str, str, str], ...]  # (request_id, endpoint_id, sent_at)
    until: datetime


# events on the queue, walkers -> writer
@dataclass(frozen=True)
class Rows:
    """Rows of one page for the writer (and with ``complete``, the window they finish;
    ``too_big``: those of its rows read without payloads, recorded with them)."""

    target: str
    rows: list[Row]
    billing: bool
    complete: Window | None = None
    too_big: tuple[oversize.TooBig, ...] = ()


@dataclass(frozen=True)
class _Finished:
    """A task's end: what failed it (``error``: the run fails), or what it leaves to do, the
    walks a dense window was split into (``more``), or a window whose rows kept moving
    (``unstable``: walked again next run)."""

    target: str
    more: tuple[_Walk, ...] = ()
    unstable: bool = False
    error: BaseException | None = None
    #: the task completed part of its window and left ``more`` for the rest (a cut)
    cut: bool = False


# --------------------------------------------------------------------------- scale-out
#
# On PostgreSQL several `mirror sync` processes (on different machines) may share one
# database. Each target is walked by one process at a time: a process holds a session-level
# advisory lock per target it walks, on a connection of its own, from before it plans the
# target's windows (so it sees every window a previous holder completed) until the run ends
# (so a process that comes to the target later in the same wave finds it held, instead of
# re-walking its lookback tail). The server drops the locks when the process dies. A target
# another process holds is skipped; it is tried once more when this process has nothing
# else to do, and then, if still held, left to that process (reported, not a failure).
#
# On SQLite the file lock (mirror.lock) already serialises whole runs: every target is
# "taken" at once and nothing changes.

#: namespace of the per-target advisory lock keys (the migration lock is 0x6D6972726F720001)
_TARGET_KEY_SALT = b"mirror-sync-target\x00"
#: a writer transaction PostgreSQL aborted to break a deadlock (or a serialization
#: failure) is run again, up to this many attempts in all
WRITE_ATTEMPTS = 8
_RETRYABLE_SQLSTATES = frozenset({"40P01", "40001"})


def target_lock_key(target: str) -> int:
    """A stable signed 64-bit advisory lock key for a target name (same on every machine)."""
    digest = hashlib.blake2b(_TARGET_KEY_SALT + target.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big", signed=True)


class TargetLocks:
    """Per-target PostgreSQL session advisory locks, on a dedicated unpooled connection.

    ``try_take`` never waits. ``close`` releases every lock (closing the connection, which
    the server also does when the process dies). On SQLite every target is free.
    """

    def __init__(self, store: Store) -> None:
        self.enabled = store.dialect == "postgresql"
        self._url = store.engine.url
        self._engine: sa.Engine | None = None
        self._conn: sa.Connection | None = None
        self.held: set[str] = set()

    def _connection(self) -> sa.Connection:
        if self._conn is None:
            # NullPool: closing really closes, so no lock can outlive us in a pool
            self._engine = sa.create_engine(
                self._url, poolclass=sa.pool.NullPool, isolation_level="AUTOCOMMIT"
            )
            self._conn = self._engine.connect()
        return self._conn

    def try_take(self, target: str) -> bool:
        if not self.enabled or target in self.held:
            self.held.add(target)
            return True
        got = (
            self._connection()
            .execute(sa.select(sa.func.pg_try_advisory_lock(target_lock_key(target))))
            .scalar()
        )
        if got:
            self.held.add(target)
        return bool(got)

    def release(self, target: str) -> None:
        if target not in self.held:
            return
        self.held.discard(target)
        if self.enabled and self._conn is not None:
            self._conn.execute(sa.select(sa.func.pg_advisory_unlock(target_lock_key(target))))

    def close(self) -> None:
        self.held.clear()
        conn, self._conn = self._conn, None
        engine, self._engine = self._engine, None
        try:
            if conn is not None:
                with contextlib.suppress(Exception):
                    conn.execute(sa.select(sa.func.pg_advisory_unlock_all()))
                conn.close()
        finally:
            if engine is not None:
                engine.dispose()


def _retryable(e: BaseException) -> bool:
    orig = getattr(e, "orig", None)
    return getattr(orig, "sqlstate", None) in _RETRYABLE_SQLSTATES


_HOUR = timedelta(hours=1)

#: a dense window at least this long is split by the server's hourly counts (analytics)
ANALYTICS_SPLIT_MIN = timedelta(hours=2)
#: a window sized by those counts is split by its first page only beyond this many walks
#: (one page's span is a noisy estimate; MAX_WALK_PAGES still bounds the walk)
SIZED_SLACK = 2


def analytics_hourly(
    client: FalClient,
    target: str,
    lo: datetime,
    hi: datetime,
    *,
    max_pages: int = 10,
    history: str = "serverless",
) -> dict[datetime, int]:
    """The server's request count per UTC hour of ``[lo, hi)``, for planning only.

    An estimate: the windows are still walked to their end and split by what their pages
    show, so a count that is wrong (or a bucket counted by another timestamp) costs pages,
    never rows. Refused or unusable analytics give ``{}`` (plan as without counts); a
    garbled or repeated cursor, or ``max_pages``, ends the paging with the counts so far.
    """
    out: dict[datetime, int] = {}
    try:
        for key, n in client.hourly_counts(
            target,
            lo,
            hi,
            strict=False,
            max_pages=max_pages,
            attempts=3,
            path=ANALYTICS_PATHS[history],
        ):
            h = from_text(key + ":00:00Z")
            out[h] = out.get(h, 0) + n
    except (MirrorError, Stopped) as e:
        # the walks that follow meet (and report) whatever made analytics fail
        log.info("%s: analytics not used for planning (%s)", target, e or "stopped")
        return {}
    return out


def plan_target(
    store: Store,
    target: str,
    opts: SyncOptions,
    now: datetime,
    *,
    gaps_only: bool = False,
    blind: set[Window] | None = None,
) -> tuple[list[Window], datetime]:
    """The windows to walk for a target, and where its re-walked tail starts.

    ``gaps_only``: trust every completed interval (no lookback re-walk), for a target
    another process was syncing during this run: only what it left undone is walked.
    ``blind``: filled with the windows planned where the mirror holds no row at all.
    """
    completed = [(from_text(a), from_text(b)) for a, b in store.completed(target)]
    end = min(opts.until, now) if opts.until else now
    start = requested_start(store, target, opts, now, completed)
    recheck_from: datetime | None
    if completed and gaps_only:
        recheck_from = None
        tail = end
    elif completed:
        last = max(b for _, b in completed)
        recheck_from = last - opts.lookback
        tail = min(recheck_from, end) if recheck_from else end
    else:
        recheck_from = None
        tail = start
    windows = plan(start, end, completed, recheck_from=recheck_from, size=opts.window)
    if windows:
        counts = store.hourly_counts(target, to_text(windows[0].start), to_text(windows[-1].end))
        hourly = {from_text(h + ":00:00Z"): n for h, n in counts.items()}
        windows = [
            p
            for w in windows
            for p in pack(w, hourly, target_rows=opts.walk_rows, max_len=opts.window)
        ]
        if blind is not None:
            held = sorted(hourly)
            blind.update(
                w
                for w in windows
                if not any(w.start - _HOUR < h < w.end for h in held)  # no held hour overlaps
            )
    return windows, tail


def requested_start(
    store: Store,
    target: str,
    opts: SyncOptions,
    now: datetime,
    completed: Sequence[tuple[datetime, datetime]],
) -> datetime:
    """Where a target's planning starts: the start stored with it, which every run asked for.

    A run records its ``--since`` (or a first sync's default) with the target before it
    fetches anything (``Store.request_range``), so a run that ends before the oldest
    windows complete leaves that start behind for the next one to plan from. A ``--since``
    reaching further back than the stored start is honoured too (a caller that did not
    record it); a later one never shrinks the range (``SyncOptions.narrow`` does, on purpose).
    """
    stored = store.requested_from(target)
    if stored is not None:
        start = from_text(stored)
        if opts.since is not None and (opts.narrow or opts.since < start):
            start = opts.since
        return start
    if opts.since is not None:
        return opts.since
    return min(a for a, _ in completed) if completed else now - opts.first_since


def _complete_part(w: Window, present: datetime | None) -> Window | None:
    """The part of a fully walked window that is complete: none of it past the API's present.

    ``present`` is the ``Date`` of the walk's first answer (None: the API gave none, and the
    local clock, which the window's end came from, is all there is). A request that ends
    later than that can still appear in the part after it, so that part is left for the
    next run, whatever this machine's clock said when the window was planned.
    """
    if present is None or present >= w.end:
        return w
    if present <= w.start:
        log.info("window %s lies after the API's present (%s): not complete yet", w, present)
        return None
    return Window(w.start, present)


def estimate_parts(rows: Sequence[Row], window: Window, walk_rows: int) -> int | None:
    """How many parts a window should be split into, judging by its first (full) pages.

    The rows' ``ended_at`` values tell how much of the window they span. Order is detected
    from the rows themselves, since fal does not document the sort direction. None: they all
    ended in one second, a tie group that says nothing of the rest of the window (split by
    it, a sparse window would be cut into dozens of near-empty walks); read the next page.
    """
    ends = [r.ended_at for r in rows if r.ended_at is not None]
    length = window.length.total_seconds()
    if len(ends) < 2:
        return 2
    if ends[0][:19] == ends[-1][:19]:
        return None
    if ends[0] >= ends[-1]:  # newest first: the page covers [oldest on page, end)
        span = (window.end - from_text(ends[-1])).total_seconds()
    else:  # oldest first: the page covers [start, newest on page)
        span = (from_text(ends[-1]) - window.start).total_seconds()
    span = min(max(span, 0.001), length)
    estimate = len(rows) * length / span
    if estimate <= walk_rows:
        return 1
    # aim each child at a full walk: fewer windows, fewer partial last pages
    parts = math.ceil(estimate / walk_rows)
    # children shorter than a minute are rarely worth their extra first page
    return max(2, min(parts, 64, max(2, int(length // 60))))


class Syncer:
    def __init__(
        self,
        store: Store,
        client: FalClient,
        opts: SyncOptions,
        *,
        clock: Callable[[], datetime] = utcnow,
        progress: ProgressListener | None = None,
        wait: Callable[[float], None] = time.sleep,
    ) -> None:
        self._wait = wait
        self.store = store
        self._stop = Stop()
        #: the caller's client, waiting between attempts only until the run stops
        self.client = client.with_sleep(self._stop.sleep)
        self.opts = opts
        self.clock = clock
        self.progress = progress
        self._q: queue.Queue[object] = queue.Queue(
            maxsize=max(QUEUE_PAGES, 2 * opts.max_concurrency)
        )
        self._writer_gone = threading.Event()
        #: targets whose analytics answer was refused or empty: split by first pages only
        self._no_analytics: set[str] = set()
        #: targets whose calls the API refused as not this key's (403)
        self._refused: set[str] = set()
        self._skew = SkewEstimate()
        self._notes = Notes(log)
        with store.reading() as conn:
            known = oversize.load_stretches(conn, opts.targets)
        self._lister = Lister(
            self.client,
            payloads=opts.payloads,
            billing=opts.billing,
            stop=self._stop,
            notes=self._notes,
            without_billing="continuing without billable_units",
            skew=self._skew,
            clock=clock,
            limits=PageLimits(known),
            histories=opts.histories,
        )
        self._probe = FilterProbe(self._lister)
        #: tasks submitted and not finished, as the writer last counted them (walkers read
        #: it to tell whether others are idle)
        self._tasks = 0
        self._locks = TargetLocks(store)
        self._steady = Steady(store, self.client, self._notes, opts.histories)
        #: targets not yet tried, and those another process held when tried (PostgreSQL)
        self._untried: list[str] = list(dict.fromkeys(opts.targets))
        self._held_elsewhere: list[str] = []
        self._retried = False

    # -- worker side ------------------------------------------------------------------

    def _put(self, ev: object) -> None:
        wait = False
        while True:
            if self._writer_gone.is_set():
                raise Stopped
            if self._stop.is_set() and not isinstance(ev, _Finished):
                raise Stopped
            try:
                self._q.put(ev, block=wait, timeout=0.2)
                return
            except queue.Full:
                if not wait:  # the writer is behind: fewer walkers at work, for now
                    self.client.backlog(behind=True)
                    wait = True

    def _work(self, task: _Walk | _Refresh) -> None:
        """Run one task in a worker thread. Its rows go to the writer as they come; its end,
        with what failed it or the work it leaves (a dense window's parts), goes last, as one
        event."""
        more: tuple[_Walk, ...] = ()
        unstable = cut = False
        error: BaseException | None = None
        try:
            if isinstance(task, _Refresh):
                self._refresh(task)
            else:
                (parts, cut), stable = until_stable(
                    lambda: self._walk_once(task),
                    1 + self.opts.rewalks,
                    f"{task.target} {task.window}",
                    log,
                )
                more, unstable = tuple(parts), not stable
        except Stopped:
            pass
        except BaseException as e:
            error = e
            self._stop.set()  # the other walkers stop at their next call
        finally:
            # (put even once the run stops, for as long as the writer takes events)
            with contextlib.suppress(Stopped):
                self._put(_Finished(task.target, more, unstable, error, cut))

    def _walk_once(self, task: _Walk) -> tuple[tuple[list[_Walk], bool], bool]:
        """One walk of the task's window, each page handed to the writer as it comes: ((the
        walks it was split or cut into, if it was dense; whether it was cut, its part read
        marked complete), whether no id was read twice)."""
        w, target = task.window, task.target
        pieces = self._lister.limits.cut(target, w.start, w.end)
        if len(pieces) > 1:  # only the stretches that need small pages are walked in them
            log.info("%s %s: cut in %d where pages must be smaller", target, w, len(pieces))
            return ([replace(task, window=Window(a, b)) for a, b in pieces], False), True
        walk = WindowWalk(self._lister, target, w.start, w.end, turn=self.client.turn)
        reach = Reach(w)
        #: the rows read while the window's density is still unknown (None: it is known)
        sizing: list[Row] | None = []
        with contextlib.closing(walk.pages()) as pages:
            for step in pages:
                page = step.page
                if step.number == 1:  # (again after a page over the cap)
                    reach, sizing = Reach(w), []
                reach.add(page.rows)
                if sizing is not None:
                    sizing += page.rows
                cut = self._cut(task, step, reach)
                if cut is not None:
                    read, rest = cut
                    self._put(
                        Rows(
                            target,
                            page.rows,
                            step.billing,
                            _complete_part(read, walk.present),
                            step.too_big,
                        )
                    )
                    return (rest, True), True
                parts = self._parts(task, step, sizing)
                if parts is None:  # a tie group so far: the next page tells more
                    parts = []
                else:
                    sizing = None
                if parts:
                    log.info("%s %s: dense, split into %d windows", target, w, len(parts))
                    self._put(Rows(target, page.rows, step.billing, too_big=step.too_big))
                    return (parts, False), True
                done = None
                if not page.has_more and not step.repeated:
                    # the API's present when the walk began: nothing after it is complete yet
                    done = _complete_part(w, walk.present)
                self._put(Rows(target, page.rows, step.billing, done, step.too_big))
        return ([], False), not walk.repeated

    def _cut(self, task: _Walk, step: Step, reach: Reach) -> tuple[Window, list[_Walk]] | None:
        """After a page past the first: the part read whole and the walks the rest is cut
        into, if the rest looks like more than a walk (``mirror.cuts``); None: walk on."""
        page = step.page
        if step.number < 2 or step.repeated or not page.has_more:
            return None
        idle = max(0, self.client.pacer.limit - self._tasks)
        cut = plan_cut(reach, self.opts.walk_rows, idle)
        if cut is None or not self._probe.on_ended_at(task.target, page.rows):
            return None
        log.info(
            "%s %s: denser than planned after %d pages (%.1f requests/s); %s read, the rest "
            "cut into %d windows",
            task.target, task.window, step.number, reach.rate or 0.0, cut.done, len(cut.rest),
        )  # fmt: skip
        walks = [
            _Walk(task.target, piece, sized=i < cut.near, blind=task.blind and i >= cut.near)
            for i, piece in enumerate(cut.rest)
        ]
        return cut.done, walks

    def _parts(self, task: _Walk, step: Step, sizing: Sequence[Row] | None) -> list[_Walk] | None:
        """The walks a window is split into after this page of its walk (none: walk on).

        Once ``sizing`` (the rows read so far, None once sized) tells the density: as many
        as it says, or as the server's hourly counts say for a window planned blind; None
        while they are one tie group; after ``MAX_WALK_PAGES``: four.
        """
        w, page = task.window, step.page
        # (an empty page says nothing of the window's density: its cursor is followed, and
        # the walk refuses a run of them)
        if not (page.has_more and page.rows and w.length > timedelta(seconds=1)):
            return []
        if step.number >= MAX_WALK_PAGES:
            return [_Walk(task.target, c) for c in split(w, 4)]
        if sizing is None:
            return []
        parts = estimate_parts(sizing, w, self.opts.walk_rows * (SIZED_SLACK if task.sized else 1))
        if parts is None:
            return None
        if task.blind:
            # more than a page over hours: the server's hourly counts say how to cut it,
            # whatever its first page happened to see
            by_counts = self._by_counts(task.target, w)
            if by_counts is not None:
                return [_Walk(task.target, c, sized=True) for c in by_counts]
        return [_Walk(task.target, c) for c in split(w, parts)] if parts > 1 else []

    def _by_counts(self, target: str, w: Window) -> list[Window] | None:
        """A window of more than a page cut by the server's hourly counts, if it needs it.

        A window split evenly by its first page's density keeps a dense hour that page did
        not see inside one child, whose walk then runs long (MAX_WALK_PAGES) and is split
        again, reading those rows twice. One analytics call gives the counts per hour, and
        ``pack`` cuts the window so each child is about one walk (None: one walk is enough,
        the window is too short for hourly counts, or analytics is refused). Counts are an
        estimate only: every child is still walked to its end, and split by its own first
        page should that show it far denser.
        """
        if w.length < ANALYTICS_SPLIT_MIN or target in self._no_analytics:
            return None
        hourly = analytics_hourly(
            self.client, target, w.start, w.end, history=self._lister.history_of(target)
        )
        if not hourly:
            self._no_analytics.add(target)
            return None
        if sum(hourly.values()) <= self.opts.walk_rows:
            return None
        children = pack(w, hourly, target_rows=self.opts.walk_rows, max_len=w.length)
        return children if len(children) > 1 else None

    def _refresh(self, task: _Refresh) -> None:
        """Ask again, by id, for rows last seen unfinished that no window walk covers."""
        unreadable: list[tuple[str, str]] = []
        for request_id, _endpoint_id, sent_at in task.rows:
            try:
                start = floor_s(from_text(sent_at) - timedelta(hours=1))
            except (ValueError, OverflowError):
                # stored before timestamps were parsed whole: no window can be asked for
                unreadable.append((request_id, sent_at))
                continue
            if start >= task.until:
                continue
            with self.client.turn():
                rows, billing, _, big = self._lister.look_up(
                    task.target, request_id, start, task.until
                )
                if rows:
                    self._put(Rows(task.target, rows, billing, too_big=big))
        if unreadable:
            rid, sent_at = unreadable[0]
            self._notes.add(
                f"{len(unreadable)} unfinished requests of {task.target} have a sent_at "
                f"that is not a time (e.g. {rid}: {sent_at!r}), stored by an older mirror; "
                "they cannot be refreshed: delete them (mirror verify --repair adds back "
                "what fal still lists)"
            )

    # -- writer side ------------------------------------------------------------------

    def run(self) -> SyncReport:
        opts = self.opts
        started = self.clock()
        # Windows are whole seconds and the last one ends at the next whole second, reached
        # before any call: so every request that ended before the sync started is covered.
        # With --until in the past no window reaches beyond it, and there is nothing to wait
        # for (a backfill starts at once). A clock the last run found behind the API's is
        # moved forward by that much, so the run reaches the API's present; one found ahead
        # is left alone: what is marked complete is bounded by the API's own clock anyway
        # (_complete_part), and a window that reaches past its present costs nothing. A
        # clock behind what earlier runs completed (by the API's clock) is behind the API's
        # too: the run reaches at least that far, so it walks its tail and measures the skew
        # instead of finding nothing to walk, run after run.
        behind = min(self.store.last_clock_skew() or 0.0, 0.0)
        present = started - timedelta(seconds=behind)
        now = ceil_s(present)
        reached = self.store.completed_until(opts.targets)
        if reached is not None and from_text(reached) > now:
            now = ceil_s(from_text(reached))
        horizon = min(now, opts.until) if opts.until else now
        if present < horizon <= ceil_s(present):
            self._wait((horizon - present).total_seconds())
        report = SyncReport(run_id=0, targets=list(opts.targets), started_at=started)
        report.notes = self._notes.texts
        t0 = time.monotonic()
        tails: dict[str, datetime] = {}
        error: BaseException | None = None
        pool: ThreadPoolExecutor | None = None
        try:
            # An interrupt from here on is recorded as such: one landing while the run is
            # being logged waits for its commit (so the run has an id to finish), and
            # planning is inside the try too.
            # the targets and the range asked for are recorded with the run, before any
            # call: a run that ends early leaves them for the next to finish
            with interrupts.deferred():
                report.run_id = self.store.start_run(
                    opts.targets,
                    started,
                    since=floor_s(opts.since) if opts.since else None,
                    default_from=now - opts.first_since,
                    narrow=opts.narrow,
                    histories=opts.histories,
                )
            pool = ThreadPoolExecutor(
                max_workers=opts.max_concurrency, thread_name_prefix="mirror-walk"
            )
            outstanding = self._claim(pool, report, now, tails, 0)
            while outstanding:
                self._tasks = outstanding
                batch = self._drain()
                for ev in batch:
                    if isinstance(ev, _Finished):
                        outstanding -= 1
                        if ev.error is not None:
                            error = error or ev.error
                            if self._refuses(ev.target, ev.error):
                                self._refused.add(ev.target)
                        if ev.unstable:
                            report.windows.unstable += 1
                        if ev.more and not self._stop.is_set():
                            # a dense window's parts, walked as the window would have been
                            for task in ev.more:
                                pool.submit(self._work, task)
                            outstanding += len(ev.more)
                            # a cut completed part of its window; a split none of it
                            report.windows.planned += len(ev.more) - (0 if ev.cut else 1)
                self._write(batch, report, now)
                if error is None and not self._stop.is_set():
                    outstanding += self._claim(pool, report, now, tails, outstanding)
                if self.progress:
                    report.pages = self.client.stats.pages
                    report.api_calls = self.client.stats.attempts
                    self.progress(report)
            if error is None and opts.recheck:
                self._recheck(report, now, tails)
            if error is None and opts.cost and not self._stop.is_set():
                report.cost = cost_sync.sync_cost(
                    self.store, self.client, now=horizon,
                    default_from=now - opts.first_since, note=self._notes.add,
                )  # fmt: skip
            elif error is None and not opts.cost and not self._stop.is_set():
                cost_sync.skip_cost(self.store, horizon)
        except BaseException as e:
            error = error or e
            self._stop.set()
        finally:
            try:
                self._stop.set()
                self._writer_gone.set()
                if pool is not None:
                    pool.shutdown(
                        wait=not isinstance(error, KeyboardInterrupt), cancel_futures=True
                    )
            except KeyboardInterrupt as e:  # while waiting for the workers: stop waiting
                error = error or e
            # the outcome is decided and committed whole; an interrupt meanwhile comes after
            with interrupts.deferred():
                with contextlib.suppress(Exception):
                    self._locks.close()  # every write is committed or abandoned by now
                report.pages = self.client.stats.pages
                report.api_calls = self.client.stats.attempts
                report.seconds = time.monotonic() - t0
                report.clock_skew = self._skew.seconds()
                self._note_skew(report.clock_skew)
                self._keep_page_limits(now)
                if isinstance(error, ApiError) and self._refused:
                    try:
                        error = self._forget_refused(error)
                    except Exception as e:  # the refusal is what the user must hear
                        log.warning("could not drop the refused targets: %s", e)
                if isinstance(error, KeyboardInterrupt):
                    report.outcome = "interrupted"
                elif error is not None:
                    report.outcome = "failed"
                else:
                    report.outcome = "ok"
                report.error = (
                    redact(str(error))
                    if error is not None and not isinstance(error, KeyboardInterrupt)
                    else None
                )
                if report.run_id:  # 0: the run was never logged
                    self._finish(report)
        if error is not None:
            raise error
        self.store.checkpoint()
        return report

    def _claim(
        self,
        pool: ThreadPoolExecutor,
        report: SyncReport,
        now: datetime,
        tails: dict[str, datetime],
        outstanding: int,
    ) -> int:
        """Take targets and submit their work while the pool has room; returns tasks submitted.

        SQLite: every target at once (the file lock already excludes other writers).
        PostgreSQL: one target after another, taken only when fewer than ``TAKE_ROOM``
        tasks are outstanding (or ``max_concurrency``, if lower), so that processes started
        together spread the targets between them instead of the first one taking all. A
        target is planned only after its lock is taken, so it sees every window a previous
        holder completed.
        """
        room = min(self.opts.max_concurrency, TAKE_ROOM) if self._locks.enabled else math.inf
        submitted = 0
        while self._untried and outstanding + submitted < room:
            target = self._untried.pop(0)
            if not self._locks.try_take(target):
                log.info("%s: another mirror sync holds it; trying the others first", target)
                self._held_elsewhere.append(target)
                continue
            for task in self._plan_one(target, report, now, tails, gaps_only=False):
                pool.submit(self._work, task)
                submitted += 1
        if (
            not self._untried
            and outstanding + submitted == 0
            and self._held_elsewhere
            and not self._retried
        ):
            # Nothing left to do here: once more, the targets other processes held. One that
            # is free now was finished (or abandoned) by its holder during this run: walk
            # only the gaps it left, not the lookback it re-walked already.
            self._retried = True
            for target in self._held_elsewhere:
                if not self._locks.try_take(target):
                    report.left_to_others.append(target)
                    continue
                for task in self._plan_one(target, report, now, tails, gaps_only=True):
                    pool.submit(self._work, task)
                    submitted += 1
            if report.left_to_others:
                self._notes.add(
                    f"{len(report.left_to_others)} of {len(self.opts.targets)} targets were "
                    "being synced by other mirror sync processes and were left to them: "
                    + ", ".join(report.left_to_others)
                )
        return submitted

    def _plan_one(
        self,
        target: str,
        report: SyncReport,
        now: datetime,
        tails: dict[str, datetime],
        *,
        gaps_only: bool,
    ) -> list[_Walk | _Refresh]:
        opts = self.opts
        blind: set[Window] = set()
        windows, tail = plan_target(self.store, target, opts, now, gaps_only=gaps_only, blind=blind)
        tails[target] = tail
        by_id: list[tuple[str, str, str]] = []
        if opts.steady and not gaps_only:
            narrowed = self._steady.narrow(
                target, windows, tail, now, billing=self._lister.billing_for(target)
            )
            windows, by_id = narrowed.windows, narrowed.by_id
        tasks: list[_Walk | _Refresh] = [_Walk(target, w, blind=w in blind) for w in windows]
        for i in range(0, len(by_id), 50):
            tasks.append(_Refresh(target, tuple(by_id[i : i + 50]), now))
        report.refreshed += len(by_id)
        report.windows.planned += len(windows)
        if not gaps_only:  # a process that held the target refreshed its unfinished rows
            stale = self.store.unfinished(target, to_text(tail), opts.unfinished_limit)
            for i in range(0, len(stale), 50):
                tasks.append(_Refresh(target, tuple(stale[i : i + 50]), now))
            report.refreshed += len(stale)
        return tasks

    def _recheck(self, report: SyncReport, now: datetime, tails: dict[str, datetime]) -> None:
        """Re-check older history when a tier is due, through ``mirror.verify`` with repair.

        A target's first sync has just walked everything, so its tiers start out checked.
        """
        from mirror.verify import verify

        stamp = to_text(now)
        for target in self.opts.targets:
            if target in report.left_to_others:
                continue  # its holder re-checks it
            last = self.store.rechecked(target)
            if not last:
                self.store.mark_rechecked(target, [t for t, _, _ in RECHECK_TIERS], stamp)
                continue
            due = [
                (tier, reach)
                for tier, reach, every in RECHECK_TIERS
                if tier not in last or now - from_text(last[tier]) >= every
            ]
            if not due:
                continue
            lo = now - max(reach for _, reach in due)
            hi = tails.get(target, now)
            if lo < hi:
                result = verify(
                    self.store,
                    self.client,
                    targets=[target],
                    since=lo,
                    until=hi,
                    repair=True,
                    use_analytics=True,
                    payloads=self.opts.payloads,
                    billing=self._lister.billing_for(target),
                    clock=lambda: now,
                    limits=self._lister.limits,
                    histories=self.opts.histories,
                )
                for t in result.targets:
                    report.rechecked_hours += t.hours
                    report.recheck_calls += t.api_calls
                    report.wrote(t)
                    if t.inserted or t.updated:
                        self._notes.add(
                            f"re-check of {target}: {t.inserted} requests fal recorded late and "
                            f"{t.updated} changed ones were added (hours {', '.join(t.hours_with_differences[:3])})"
                        )
                    if t.extra.count:
                        self._notes.add(
                            f"re-check of {target}: {t.extra.count} stored requests are no longer listed by fal (see mirror verify)"
                        )
                self._notes.merge(result.notes)
                if any(t.unstable_hours for t in result.targets):
                    continue  # not marked: the next run tries again
            self.store.mark_rechecked(target, [tier for tier, _ in due], stamp)

    def _drain(self) -> list[object]:
        """At least one event, then whatever else is waiting, up to a batch of rows."""
        if self._q.empty():  # the writer waits for pages: more calls in flight may help
            self.client.backlog(behind=False)
        batch = [self._next_event()]
        rows = 0
        while rows < BATCH_ROWS:
            try:
                ev = self._q.get_nowait()
            except queue.Empty:
                break
            batch.append(ev)
            if isinstance(ev, Rows):
                rows += len(ev.rows)
        return batch

    def _next_event(self) -> object:
        """The next event, waited for in short deferred steps: a Ctrl-C raised inside the
        queue's own wait could land between its lock's release and the code that takes it
        back, and the queue would then release a lock it does not hold (RuntimeError, not
        an interrupt). Deferred, it is raised between two steps, within 0.1 s."""
        while True:
            with interrupts.deferred():
                try:
                    return self._q.get(timeout=0.1)
                except queue.Empty:
                    pass

    def _write(self, batch: list[object], report: SyncReport, now: datetime) -> None:
        """One transaction for the batch's rows and the windows they complete.

        PostgreSQL with several processes: two writers whose batches share rows (targets that
        overlap, like an app id and one of its routes) lock those rows in one order, by
        (``ended_at``, ``request_id``), which makes deadlocks between them rare; one that
        happens anyway (or a serialization failure) aborts the whole transaction, and it is
        run again from the start. Counts are taken only from the attempt that committed.
        """
        row_events = [ev for ev in batch if isinstance(ev, Rows)]
        if not row_events:
            return
        stamp = to_text(now)
        for attempt in range(1, WRITE_ATTEMPTS + 1):
            try:
                # whole or not at all, and an interrupt waits for the commit (< 1 s)
                written, done = self._write_once(row_events, stamp)
                break
            except sa.exc.DBAPIError as e:
                if not _retryable(e) or attempt == WRITE_ATTEMPTS:
                    raise
                log.info("write aborted by the database (%s); running it again", e.orig)
                # apart, so the transactions that collided do not collide again at once
                self._wait(random.uniform(0.01, 0.05 * attempt))
        report.wrote(written)
        report.windows.done += done

    def _write_once(self, row_events: list[Rows], stamp: str) -> tuple[Tally, int]:
        """(the rows written, the windows completed) in one transaction."""
        written, done = Tally(), 0
        with self.store.writing() as conn:
            history_of = self._lister.history_of
            for billing, history in ((True, "serverless"), (False, "serverless"), (False, "model")):
                rows = [
                    r
                    for ev in row_events
                    if ev.billing == billing and history_of(ev.target) == history
                    for r in ev.rows
                ]
                if self._locks.enabled:
                    # the upsert sorts by ended_at, keeping this order among equals
                    rows.sort(key=attrgetter("request_id"))
                res = self.store.upsert(
                    conn,
                    rows,
                    payloads=self.opts.payloads,
                    billing=billing,
                    now=stamp,
                    history=history,
                )
                written.wrote(res)
            for ev in row_events:
                if ev.complete is not None:
                    self.store.mark_complete(
                        conn, ev.target, to_text(ev.complete.start), to_text(ev.complete.end), stamp
                    )
                    done += 1
            oversize.record(conn, (b for ev in row_events for b in ev.too_big), stamp)
        return written, done

    def _refuses(self, target: str, error: BaseException) -> bool:
        """Whether ``error`` is the API refusing ``target`` itself: a 403 (not this key's
        account, or a mistyped id), or for a hosted model also a 400, 404 or 422 (an id the
        model list does not know, such as an app's)."""
        if not isinstance(error, ApiError):
            return False
        if self._lister.history_of(target) == "model":
            return error.status in (400, 403, 404, 422)
        return isinstance(error, AuthError) and error.status == 403

    def _forget_refused(self, error: ApiError) -> ApiError:
        """A target the API refuses (``_refuses``) that holds nothing yet is not kept:
        otherwise every bare run from cron would fail on it. One that holds rows or windows
        stays (the key may be what is wrong); so does the requested range of every other
        target."""
        dropped = [t for t in sorted(self._refused) if self.store.forget_if_empty(t)]
        models = [t for t in sorted(self._refused) if self._lister.history_of(t) == "model"]
        return histories.refusal(error, dropped=dropped, models=models)

    def _keep_page_limits(self, now: datetime) -> None:
        """Keep the page sizes this run's walks learned, for the next run's walks there."""
        learned = self._lister.limits.learned
        if not learned:
            return
        try:
            with self.store.writing() as conn:
                oversize.save_stretches(conn, learned, to_text(now))
        except Exception as e:  # only a saving: the next run learns them again
            log.warning("could not keep the page sizes learned: %s", e)

    def _note_skew(self, skew: float | None) -> None:
        """Say how far this clock is from the API's: under -v when it is more than a few
        seconds, and on every run when it is more than the lookback (which it would defeat)."""
        if skew is None or abs(skew) <= NOTABLE_SKEW:
            return
        text = f"this machine's clock is {describe(skew)} the API's"
        if abs(skew) > self.opts.lookback.total_seconds():
            self._notes.add(
                f"{text}, more than the lookback ({self.opts.lookback}): windows are bounded "
                "by the API's clock, but please set this clock right (e.g. enable NTP)"
            )
        else:
            log.info("%s; windows are bounded by the API's clock", text)

    def _finish(self, report: SyncReport) -> None:
        counts = {
            "pages": report.pages,
            "api_calls": report.api_calls,
            "rows_inserted": report.inserted,
            "rows_updated": report.updated,
        }
        try:
            self.store.finish_run(
                report.run_id,
                self.clock(),
                report.outcome,
                counts,
                report.error,
                clock_skew=report.clock_skew,
            )
        except Exception as e:
            log.warning("could not record the run's outcome in sync_runs: %s", e)


def sync(
    store: Store,
    client: FalClient,
    opts: SyncOptions,
    *,
    clock: Callable[[], datetime] = utcnow,
    progress: ProgressListener | None = None,
) -> SyncReport:
    return Syncer(store, client, opts, clock=clock, progress=progress).run()


__all__ = [
    "MirrorError",
    "ProgressListener",
    "SyncOptions",
    "SyncReport",
    "Syncer",
    "UpsertResult",
    "sync",
]
