"""Verify: walk completed windows again and compare the mirror with the server, hour by hour.

A sync trusts a window once it has walked it; the platform does not always deserve that
trust (late backfills after an ingestion incident, docs/fal-api.md, "Late records"). ``verify`` takes
a target's completed intervals, clipped to ``[since, until)`` and cut at UTC hours (the
first and last piece of an interval may be partial hours), and for each such *hour*:

1. *Analytics first* (unless ``use_analytics`` is off). ``/serverless/analytics`` gives the
   server's request count per hour for the exact range (``bound_to_timeframe=false``).
   Which timestamp a bucket counts by is undocumented, so the mirror's own counts are
   taken under each candidate field, and the field that agrees with the server on the most
   hours (over the whole run) decides: an hour is skipped only if the mirror agrees under
   that field (under every field, on a tie). A count that matches is never proof (a row
   edited in place keeps its count), which is why ``use_analytics=False`` (``--full``)
   exists. When analytics is refused (403/404) or unusable, every hour is walked.
2. *Walk* each remaining hour exactly as sync does (``limit=100``, the same expansions,
   explicit whole-second ``start``/``end``), and repeat a walk that sees an id twice (rows
   moved under the offset pages, as in ``mirror.sync``).
3. *Compare* the server's rows with the mirror's by id, field by field, under the upsert's
   own rules (a payload or billing value the server no longer has is kept, so it is not a
   difference): *missing* (the server has it, the mirror does not) and *different*.
   *Extra*: mirror rows whose ``ended_at`` falls in the hour but that no walk returned.
   Under a ``sent_at`` or ``started_at`` reading such a row legitimately lives in an earlier
   hour (those fields never come after ``ended_at``), so ids seen in the previous day of
   walked hours are set aside, and every other candidate is looked up by ``request_id``
   over a wide window. Only a row the server no longer knows is reported extra.
4. *Repair* (``repair=True``, under the writer lock): missing and different rows go through
   ``Store.upsert``, one transaction per hour; extras are deleted only with
   ``delete_extra=True``.

Hours are processed oldest first with a bounded number of walks in flight, so memory is
one hour's rows plus a day of ids, whatever the length of history verified.

This module computes the ``VerifyReport``; ``mirror.verify_report`` renders it (text, JSON).
The analytics calls are ``FalClient.hourly_counts``; each hour's walk (``WindowWalk``, with
the billing fallback and the re-walks) and the stop signal are ``mirror.walk``'s, as sync's
are; the comparison under the upsert's rules is ``mirror.records.differing_fields``.
"""

from __future__ import annotations

import contextlib
import logging
import random
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import InitVar, dataclass, field
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa

from mirror import lock, oversize
from mirror.api import ANALYTICS_PATHS, FalClient
from mirror.db import sqlite_path
from mirror.errors import ApiError, ApiUnavailable, BadDataError, ConfigError
from mirror.records import Row, differing_fields
from mirror.schema import hour_of, requests, target_clause
from mirror.store import Store, Tally
from mirror.timeparse import api_param, from_text, to_text, utcnow
from mirror.walk import Lister, Notes, PageLimits, Stop, Stopped, WindowWalk, until_stable
from mirror.windows import align_down, ceil_s, floor_s

log = logging.getLogger("mirror.verify")

HOUR = timedelta(hours=1)
#: the timestamps an analytics bucket may count by (fal leaves it open: docs/fal-api.md)
CANDIDATE_FIELDS = ("ended_at", "sent_at", "started_at")
#: how many times a walk is repeated when rows move under its pages
MAX_WALKS = 3
#: how far before a row's sent_at the by-id lookup of a suspected extra starts
LOOKUP_MARGIN = timedelta(days=1)
#: how long ids seen in walked hours are remembered to clear suspected extras without a call;
#: a request runs at most this long before a lookup is needed to place it
SEEN_FOR = timedelta(days=1)


# --------------------------------------------------------------------------- the report


@dataclass
class Found:
    """The request ids found to differ one way (missing, different or extra): how many, and
    the ``n`` smallest with what was found of each, so that the examples are the same
    whatever order the hours finish in."""

    n: int
    count: int = 0
    #: (request id, what was found of it), smallest ids first
    smallest: list[tuple[str, Any]] = field(default_factory=list)

    def add(self, request_id: str, what: Any = None) -> None:
        self.count += 1
        if self.n <= 0:
            return
        if len(self.smallest) < self.n or request_id < self.smallest[-1][0]:
            self.smallest.append((request_id, what))
            self.smallest.sort(key=lambda kv: kv[0])
            del self.smallest[self.n :]

    @property
    def examples(self) -> list[str]:
        return [k for k, _ in self.smallest]


@dataclass
class TargetReport(Tally):
    """What verify found for one target. Counts are of distinct request ids."""

    target: str
    #: how many examples of each kind of difference to keep
    examples: InitVar[int] = 5
    hours: int = 0
    hours_walked: int = 0
    hours_agreed: int = 0
    #: "compared", "off" (--full), "refused" (403/404), "unusable" (bad or no answer)
    analytics: str = "off"
    #: rows the server has and the mirror does not
    missing: Found = field(init=False)
    #: rows that differ, with the fields that do (``mirror.records.differing_fields``)
    different: Found = field(init=False)
    #: rows the mirror has and the server no longer lists
    extra: Found = field(init=False)
    deleted: int = 0
    hours_with_differences: list[str] = field(default_factory=list)
    unstable_hours: list[str] = field(default_factory=list)

    def __post_init__(self, examples: int) -> None:
        self.missing = Found(examples)
        self.different = Found(examples)
        self.extra = Found(examples)

    @property
    def found(self) -> int:
        """Differences found, of every kind."""
        return self.missing.count + self.different.count + self.extra.count

    @property
    def remaining(self) -> int:
        """Differences still in the mirror after this run."""
        fixed = self.inserted + self.updated
        return max(0, self.missing.count + self.different.count - fixed) + (
            self.extra.count - self.deleted
        )


@dataclass
class VerifyReport:
    """What a verify run found; ``mirror.verify_report`` renders it (text or JSON)."""

    since: datetime | None
    until: datetime
    mode: str  # "analytics" or "full"
    repair: bool
    delete_extra: bool
    sample: int | None = None
    seed: int | None = None
    targets: list[TargetReport] = field(default_factory=list)
    #: the field(s) whose per-hour counts matched analytics best; None without analytics
    analytics_fields: list[str] | None = None
    retries: int = 0
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def api_calls(self) -> int:
        return sum(t.api_calls for t in self.targets)

    @property
    def remaining(self) -> int:
        return sum(t.remaining for t in self.targets)

    @property
    def unstable(self) -> int:
        return sum(len(t.unstable_hours) for t in self.targets)

    @property
    def ok(self) -> bool:
        """The mirror equals the server on every hour checked (after any repair)."""
        return self.remaining == 0 and self.unstable == 0


# --------------------------------------------------------------------------- planning


@dataclass(frozen=True, order=True)
class Slot:
    """One hour (or the part of it that is completed and in range) of one target."""

    target: str
    start: datetime
    end: datetime
    piece: int  # index of the contiguous completed range it belongs to

    @property
    def label(self) -> str:
        return api_param(self.start)

    @property
    def hour_key(self) -> str:
        """``YYYY-MM-DDTHH``: the hour as a prefix of stored timestamps (which are UTC)."""
        return to_text(self.start)[:13]


def plan_slots(
    store: Store, target: str, since: datetime | None, until: datetime
) -> list[tuple[datetime, datetime, list[Slot]]]:
    """The target's completed intervals clipped to the range, each cut at UTC hours.

    Clipping rounds inwards to whole seconds, so nothing outside a completed window (where
    the mirror is not expected to be complete) is ever checked.
    """
    pieces: list[tuple[datetime, datetime, list[Slot]]] = []
    for a_text, b_text in store.completed(target):
        a, b = from_text(a_text), from_text(b_text)
        lo = ceil_s(max(a, since) if since else a)
        hi = floor_s(min(b, until))
        if lo >= hi:
            continue
        slots = []
        cur = lo
        while cur < hi:
            nxt = min(hi, align_down(cur, HOUR) + HOUR)
            slots.append(Slot(target, cur, nxt, len(pieces)))
            cur = nxt
        pieces.append((lo, hi, slots))
    return pieces


def _is_uuid(text: str) -> bool:
    try:
        uuid.UUID(text)
    except ValueError:
        return False
    return True


# --------------------------------------------------------------------------- the run


@dataclass
class _Walked:
    slot: Slot
    rows: dict[str, Row]
    billing: bool
    calls: int
    stable: bool
    #: rows read without payloads: a page of one was over the body cap with them
    too_big: list[oversize.TooBig] = field(default_factory=list)


@dataclass
class _Seen:
    """Ids returned by walks of one target's recent hours (see ``SEEN_FOR``)."""

    hours: deque[tuple[datetime, frozenset[str]]] = field(default_factory=deque)

    def add(self, slot: Slot, ids: Iterable[str]) -> None:
        self.hours.append((slot.end, frozenset(ids)))
        while self.hours and self.hours[0][0] < slot.start - SEEN_FOR:
            self.hours.popleft()

    def __contains__(self, request_id: object) -> bool:
        return any(request_id in ids for _, ids in self.hours)


class Verifier:
    """One verify run; see the module docstring. Not reusable."""

    def __init__(
        self,
        store: Store,
        client: FalClient,
        *,
        targets: Sequence[str],
        since: datetime | None,
        until: datetime | None,
        sample: int | None = None,
        seed: int | None = None,
        repair: bool = False,
        delete_extra: bool = False,
        use_analytics: bool = True,
        payloads: bool = True,
        billing: bool = True,
        concurrency: int = 4,
        examples: int = 5,
        clock: Callable[[], datetime] = utcnow,
        limits: PageLimits | None = None,
        histories: Mapping[str, str] | None = None,
    ) -> None:
        """``limits``: the page sizes learned for stretches of the targets' history (a
        sync's own, which it keeps); by default those the mirror kept. ``histories``: each
        target's history (which operations list and count it); by default as stored."""
        if delete_extra and not repair:
            raise ConfigError("--delete-extra needs --repair")
        if sample is not None and sample < 1:
            raise ConfigError("--sample must be at least 1")
        self.store = store
        self._stop = Stop()
        #: the caller's client, waiting between attempts only until the run stops
        self.client = client.with_sleep(self._stop.sleep)
        self.targets = list(dict.fromkeys(targets))
        self.since = since
        self.until = until
        self.sample = sample
        self.seed = seed
        self.repair = repair
        self.delete_extra = delete_extra
        self.use_analytics = use_analytics
        self.payloads = payloads
        self.billing = billing
        self.concurrency = max(1, concurrency)
        self.examples = examples
        self.clock = clock
        self._notes = Notes(log)
        if limits is None:
            with store.reading() as conn:
                limits = PageLimits(oversize.load_stretches(conn, self.targets))
        self._lister = Lister(
            self.client,
            payloads=payloads,
            billing=billing,
            stop=self._stop,
            notes=self._notes,
            without_billing="billable_units not compared",
            limits=limits,
            histories=store.target_histories() if histories is None else histories,
        )

    # -- the API side ---------------------------------------------------------------------

    def _walk(self, slot: Slot) -> _Walked:
        """Every row the server lists in the slot, walked again while rows move under it.

        A slot is walked in pieces cut where the page sizes learned change
        (``PageLimits.cut``), so that only a stretch that needs small pages is walked in them."""
        calls = 0

        def once() -> tuple[_Walked, bool | None]:
            nonlocal calls
            rows: dict[str, Row] = {}
            billing = self.billing
            flags: set[bool] = set()
            repeated = False
            too_big: list[oversize.TooBig] = []
            for a, b in self._lister.limits.cut(slot.target, slot.start, slot.end):
                walk = WindowWalk(self._lister, slot.target, a, b)
                for step in walk.pages():
                    rows.update((r.request_id, r) for r in step.page.rows)
                    billing = step.billing
                calls += walk.calls
                flags |= walk.billing
                repeated = repeated or walk.repeated
                too_big += walk.too_big
            mixed = len(flags) > 1
            walked = _Walked(slot, rows, billing and not mixed, calls, False, too_big)
            if mixed:  # billing was refused half-way: walk it again without
                return walked, None
            return walked, not repeated

        walked, stable = until_stable(once, MAX_WALKS, f"{slot.target} {slot.label}", log)
        walked.stable = stable
        return walked

    def _analytics_counts(
        self, target: str, lo: datetime, hi: datetime, tr: TargetReport
    ) -> dict[str, int | None]:
        """The server's request count per hour of ``[lo, hi)`` (hour key -> count)."""

        def before_call() -> None:
            self._stop.check()
            tr.api_calls += 1

        counts: dict[str, int | None] = {}
        path = ANALYTICS_PATHS[self._lister.history_of(target)]
        for key, n in self.client.hourly_counts(
            target, lo, hi, strict=True, before_call=before_call, path=path
        ):
            counts[key] = n if counts.get(key, n) == n else None  # repeated and unequal
        return counts

    # -- the mirror side --------------------------------------------------------------------

    def _mirror_counts(self, target: str, lo: datetime, hi: datetime) -> dict[str, dict[str, int]]:
        """Per candidate field: the mirror's rows per hour key in ``[lo, hi)``."""
        out: dict[str, dict[str, int]] = {}
        with self.store.reading() as conn:
            for name in CANDIDATE_FIELDS:
                col = requests.c[name]
                hour = hour_of(col)
                q = (
                    sa.select(hour, sa.func.count())
                    .where(target_clause(target), col >= to_text(lo), col < to_text(hi))
                    .group_by(hour)
                )
                out[name] = {h: int(n) for h, n in conn.execute(q)}
        return out

    def _mirror_rows(self, conn: sa.Connection, ids: Iterable[str]) -> dict[str, Row]:
        cols = [requests.c[f] for f in Row._fields]
        ids = list(ids)
        out: dict[str, Row] = {}
        for i in range(0, len(ids), 500):
            q = sa.select(*cols).where(requests.c.request_id.in_(ids[i : i + 500]))
            out.update((r.request_id, Row(*r)) for r in conn.execute(q))
        return out

    def _mirror_ended_in(self, conn: sa.Connection, slot: Slot) -> list[tuple[str, str]]:
        """(request_id, sent_at) of the target's rows whose ended_at is in the slot."""
        r = requests.c
        q = (
            sa.select(r.request_id, r.sent_at)
            .where(
                target_clause(slot.target),
                r.ended_at >= to_text(slot.start),
                r.ended_at < to_text(slot.end),
            )
            .order_by(r.request_id)
        )
        return [(a, b) for a, b in conn.execute(q)]

    # -- the run ------------------------------------------------------------------------

    def run(self) -> VerifyReport:
        t0 = time.monotonic()
        now = self.clock()
        until = min(self.until, now) if self.until else now
        if self.since is not None and self.since >= until:
            raise ConfigError("the range to verify is empty: --since is not before --until")
        report = VerifyReport(
            since=self.since,
            until=until,
            mode="analytics" if self.use_analytics else "full",
            repair=self.repair,
            delete_extra=self.delete_extra,
            sample=self.sample,
        )
        report.notes = self._notes.texts
        retries0 = self.client.stats.retries
        path = sqlite_path(self.store.db)
        holder = lock.hold(path) if self.repair and path is not None else contextlib.nullcontext()
        try:
            with holder:
                self._run(report, until, now)
        except Stopped:
            raise KeyboardInterrupt from None
        finally:
            report.retries = self.client.stats.retries - retries0
            report.seconds = time.monotonic() - t0
        return report

    def _run(self, report: VerifyReport, until: datetime, now: datetime) -> None:
        reports = {t: TargetReport(t, examples=self.examples) for t in self.targets}
        report.targets = list(reports.values())
        pieces = {t: plan_slots(self.store, t, self.since, until) for t in self.targets}
        chosen = [s for t in self.targets for _, _, slots in pieces[t] for s in slots]
        if self.sample is not None:
            seed = self.seed if self.seed is not None else random.SystemRandom().randrange(2**31)
            report.seed = seed
            picked = random.Random(seed).sample(range(len(chosen)), min(self.sample, len(chosen)))
            chosen = [chosen[i] for i in sorted(picked)]
        for t in self.targets:
            reports[t].hours = sum(1 for s in chosen if s.target == t)
            if not pieces[t]:
                self._notes.add(f"{t} has no completed windows in the range; nothing to verify")

        to_walk = chosen
        if self.use_analytics and chosen:
            to_walk = self._select_by_analytics(chosen, pieces, reports, report)
        walking = set(to_walk)
        for s in chosen:
            if s not in walking:
                reports[s.target].hours_agreed += 1
        self._walk_and_compare(to_walk, reports, now)

    def _select_by_analytics(
        self,
        chosen: list[Slot],
        pieces: dict[str, list[tuple[datetime, datetime, list[Slot]]]],
        reports: dict[str, TargetReport],
        report: VerifyReport,
    ) -> list[Slot]:
        """The chosen slots analytics cannot vouch for (all of them if it cannot be asked)."""
        wanted = set(chosen)
        server: dict[Slot, int | None] = {}
        mine: dict[Slot, dict[str, int]] = {}
        refused: list[str] = []
        absent: str | None = None  # the API has no analytics at all (404): stop asking
        for t in self.targets:
            tr = reports[t]
            for lo, hi, slots in pieces[t]:
                in_piece = [s for s in slots if s in wanted]
                if not in_piece:
                    continue
                if absent is not None:
                    tr.analytics = "refused"
                    break
                try:
                    counts = self._analytics_counts(t, lo, hi, tr)
                except ApiError as e:
                    if e.status not in (400, 403, 404):
                        raise
                    tr.analytics = "refused"
                    if e.status == 404:
                        absent = f"HTTP 404: {e.message}"
                    else:
                        refused.append(f"{t} (HTTP {e.status}: {e.message})")
                    break
                except (BadDataError, ApiUnavailable) as e:
                    tr.analytics = "unusable"
                    refused.append(f"{t} ({e})")
                    break
                tr.analytics = "compared"
                by_field = self._mirror_counts(t, lo, hi)
                for s in in_piece:
                    server[s] = counts.get(s.hour_key)
                    mine[s] = {f: by_field[f].get(s.hour_key, 0) for f in CANDIDATE_FIELDS}
            if tr.analytics != "compared":
                for s in chosen:
                    if s.target == t:
                        server.pop(s, None)
        if absent is not None:
            self._notes.add(
                f"the API has no /serverless/analytics ({absent}); re-walking every selected hour"
            )
        if refused:
            self._notes.add(
                "could not use /serverless/analytics for "
                + ", ".join(refused)
                + "; re-walking every selected hour of "
                + ("these targets" if len(refused) > 1 else "it")
            )
        known = {s: n for s, n in server.items() if n is not None}
        if not known:
            return chosen
        score = {f: sum(1 for s, n in known.items() if mine[s][f] == n) for f in CANDIDATE_FIELDS}
        top = max(score.values())
        best = [f for f in CANDIDATE_FIELDS if score[f] == top]
        report.analytics_fields = best
        agreed = {s for s, n in known.items() if all(mine[s][f] == n for f in best)}
        return [s for s in chosen if s not in agreed]

    def _walks(self, slots: list[Slot]) -> Iterator[_Walked]:
        """Walk slots a few at a time, yielding results in slot order (memory stays flat)."""
        ahead = 2 * self.concurrency
        pool = ThreadPoolExecutor(max_workers=self.concurrency, thread_name_prefix="mirror-verify")
        pending: deque[Future[_Walked]] = deque()
        it = iter(slots)
        try:
            for s in it:
                pending.append(pool.submit(self._walk, s))
                if len(pending) >= ahead:
                    break
            while pending:
                walked = pending.popleft().result()
                nxt = next(it, None)
                if nxt is not None:
                    pending.append(pool.submit(self._walk, nxt))
                yield walked
        except BaseException:
            # a failure, Ctrl-C, or the consumer gave up: stop the walks in flight, don't wait
            self._stop.set()
            pool.shutdown(wait=False, cancel_futures=True)
            raise
        pool.shutdown(wait=True)

    def _walk_and_compare(
        self, slots: list[Slot], reports: dict[str, TargetReport], now: datetime
    ) -> None:
        seen = {t: _Seen() for t in self.targets}
        reported: dict[str, set[str]] = {t: set() for t in self.targets}
        stamp = to_text(now)
        for w in self._walks(slots):
            slot, tr = w.slot, reports[w.slot.target]
            tr.hours_walked += 1
            tr.api_calls += w.calls
            if not w.stable:
                tr.unstable_hours.append(slot.label)
                self._notes.add(
                    f"{slot.target} {slot.label}: rows kept moving while the hour was walked; "
                    "run verify again"
                )
            writes: list[tuple[Row, bool]] = []
            deletes: list[str] = []
            before = tr.found
            with self.store.reading() as conn:
                mirror = self._mirror_rows(conn, w.rows)
                ended_here = self._mirror_ended_in(conn, slot)
            done = reported[slot.target]
            for rid in sorted(w.rows):
                if rid in done:
                    continue
                row, have = w.rows[rid], mirror.get(rid)
                if have is None:
                    tr.missing.add(rid)
                else:
                    fields = differing_fields(have, row, payloads=self.payloads, billing=w.billing)
                    if not fields:
                        continue
                    tr.different.add(rid, fields)
                done.add(rid)
                writes.append((row, w.billing))
            seen[slot.target].add(slot, w.rows)
            for rid, sent_at in ended_here:
                if rid not in seen[slot.target] and rid not in done:
                    tr.api_calls += self._check_suspect(
                        slot, rid, sent_at, now, tr, done, writes, deletes
                    )
            if tr.found > before:
                tr.hours_with_differences.append(slot.label)
            if self.repair and (writes or deletes):
                big = [b for b in w.too_big if b.row.request_id in done]
                self._write(slot, writes, deletes, tr, stamp, big)

    def _check_suspect(
        self,
        slot: Slot,
        rid: str,
        sent_at: str,
        now: datetime,
        tr: TargetReport,
        reported: set[str],
        writes: list[tuple[Row, bool]],
        deletes: list[str],
    ) -> int:
        """Look a mirror row the walk did not return up by id; returns the calls made."""
        calls = 0
        row: Row | None = None
        billing = self.billing
        if _is_uuid(rid):
            try:
                start = floor_s(min(from_text(sent_at), slot.start) - LOOKUP_MARGIN)
            except (ValueError, OverflowError):  # stored before timestamps were parsed whole
                start = floor_s(slot.start - LOOKUP_MARGIN)
            # (one read without payloads compares and repairs without them, as in a walk)
            found, billing, calls, _ = self._lister.look_up(
                slot.target, rid, start, ceil_s(now) + timedelta(seconds=1)
            )
            row = found[0] if found else None
        if row is None:
            tr.extra.add(rid)
            reported.add(rid)
            if self.delete_extra:
                deletes.append(rid)
            return calls
        with self.store.reading() as conn:
            have = self._mirror_rows(conn, [rid]).get(rid)
        if have is None:  # deleted meanwhile by someone else: the walk of its hour says missing
            return calls
        fields = differing_fields(have, row, payloads=self.payloads, billing=billing)
        if fields:
            tr.different.add(rid, fields)
            reported.add(rid)
            writes.append((row, billing))
        return calls

    def _write(
        self,
        slot: Slot,
        writes: list[tuple[Row, bool]],
        deletes: list[str],
        tr: TargetReport,
        stamp: str,
        too_big: list[oversize.TooBig],
    ) -> None:
        """One transaction per hour: upsert what was missing or different (recording those
        read without payloads, as a sync does), delete extras."""
        with self.store.writing() as conn:
            history = self._lister.history_of(slot.target)
            for billing in (True, False):
                rows = [r for r, b in writes if b == billing]
                res = self.store.upsert(
                    conn, rows, payloads=self.payloads, billing=billing, now=stamp, history=history
                )
                tr.wrote(res)
            for i in range(0, len(deletes), 500):
                res2 = conn.execute(
                    requests.delete().where(requests.c.request_id.in_(deletes[i : i + 500]))
                )
                tr.deleted += max(0, res2.rowcount or 0)
            oversize.record(conn, too_big, stamp)
        log.info("%s %s: repaired %d rows", slot.target, slot.label, len(writes) + len(deletes))


def verify(store: Store, client: FalClient, **options: Any) -> VerifyReport:
    """Compare the mirror's completed hours of ``targets`` with the server; see the module.

    ``options`` are `Verifier`'s keyword arguments (``targets``, ``since``, ``until`` at least).
    """
    return Verifier(store, client, **options).run()
