"""An incremental run's lookback, walked only where something may have changed.

Each run re-reads the lookback (the last ``--lookback`` before the last completed point) to
catch requests fal recorded late, billing that landed late and requests that ended late.
Walking all of it on every run costs the whole lookback's pages with payloads, whatever
changed. Here the part of the lookback a previous run completed is narrowed to:

- *the minutes whose counts differ*: one analytics call per target (of its history) gives
  the server's request count (and success, user error and error counts) per minute; the
  mirror counts its own rows the same way under each timestamp a bucket may count by, and
  the timestamp that agrees best decides (as ``mirror.verify`` does by the hour). A minute
  whose counts differ is walked again: it gained a request, or one of its requests ended.
  A match is never proof (a request whose billing lands keeps its counts), hence:
- *the rows that may still change*: rows of the lookback the mirror holds unfinished, or
  (with billing) successful and not billed yet, are read again on every run, as the whole
  lookback's walk would: the oldest ones by id (one call each), the rest by walking the
  stretch from the oldest of those to the last completed point, cut where that costs the
  fewest calls (by the mirror's own count of the rows in the stretch). A failed request
  is not waited on for billing (fal bills successful requests); ``--full-lookback`` or
  ``mirror verify --full`` read those again.

What is left is priced in list calls by the server's per-minute counts: neighbouring
stretches are walked as one where a single page holds them and the rows between, and a
plan that would cost more calls than walking the whole lookback (changes scattered over
many minutes) walks the whole lookback instead.

The run's new part (from the last completed point on) and every stretch that is not
completed are walked as before. Without analytics (refused, absent, garbled) a target's
lookback is walked whole, and the run says so once. ``SyncOptions.steady`` off
(``--full-lookback``) walks it whole always.
"""

from __future__ import annotations

import bisect
import itertools
import logging
import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa

from mirror.api import ANALYTICS_PATHS, FalClient
from mirror.errors import ApiError, ApiUnavailable, BadDataError
from mirror.records import PAGE_LIMIT
from mirror.schema import requests, target_clause
from mirror.store import Store
from mirror.timeparse import api_param, from_text, to_text
from mirror.walk import Notes, Stopped
from mirror.windows import Window, align_down, floor_s

log = logging.getLogger("mirror.steady")

MINUTE = timedelta(minutes=1)
#: the timestamps an analytics bucket may count by (fal leaves it open)
FIELDS = ("ended_at", "sent_at", "started_at")
#: (request, success, user error, error) counts of one minute
Counts = tuple[int, int, int, int]
#: minutes asked for per analytics page, and pages read for one target's lookback: a
#: longer lookback is walked whole (counting that many minutes is a heavy call for the API)
ANALYTICS_PAGE = 1000
MAX_ANALYTICS_PAGES = 4
#: the most rows asked for by id in one run (the rest wait for their next age)
MAX_BY_ID = 200


@dataclass(frozen=True)
class Pending:
    """A row that may still change: unfinished, or successful and not billed yet."""

    request_id: str
    endpoint_id: str
    sent_at: datetime
    ended_at: datetime | None


@dataclass
class Narrowed:
    """What a target's run walks: the windows, and rows asked for by id."""

    windows: list[Window]
    by_id: list[tuple[str, str, str]] = field(default_factory=list)


def _text(v: Any) -> str:
    return to_text(v) if isinstance(v, datetime) else str(v)


def _minute_key(v: Any) -> str | None:
    try:
        return to_text(align_down(from_text(_text(v)), MINUTE))
    except (ValueError, OverflowError):
        return None


def _status(code: int | None) -> int:
    """Index in ``Counts`` of a status code's class (0: none, unfinished or other)."""
    if code is None:
        return 0
    return {2: 1, 4: 2, 5: 3}.get(code // 100, 0)


def parse_counts(data: Any) -> dict[str, Counts]:
    """Minute key -> counts summed over the bucket's endpoint ids; ``BadDataError`` for an
    answer that is not analytics. A status count the answer lacks is -1 (not compared)."""
    if not isinstance(data, dict) or not isinstance(data.get("time_series"), list):
        raise BadDataError("the analytics answer has no time_series list")
    out: dict[str, Counts] = {}
    for bucket in data["time_series"]:
        if not isinstance(bucket, dict) or not isinstance(bucket.get("bucket"), str):
            raise BadDataError("an analytics bucket has no timestamp")
        try:
            key = to_text(align_down(from_text(bucket["bucket"]), MINUTE))
        except (ValueError, OverflowError):
            raise BadDataError("an analytics bucket's timestamp is not a time") from None
        results = bucket.get("results", [])
        if not isinstance(results, list):
            raise BadDataError("an analytics bucket's results are not a list")
        sums = [0, 0, 0, 0]
        for r in results:
            if not isinstance(r, dict):
                raise BadDataError("an analytics result is not an object")
            for i, name in enumerate(
                ("request_count", "success_count", "user_error_count", "error_count")
            ):
                n = r.get(name)
                if i and n is None:
                    sums[i] = -1
                    continue
                if isinstance(n, bool) or not isinstance(n, int) or n < 0:
                    raise BadDataError(f"an analytics result has no usable {name}")
                if sums[i] >= 0:
                    sums[i] += n
        if key in out:
            raise BadDataError("the analytics answer gave a minute twice")
        out[key] = (sums[0], sums[1], sums[2], sums[3])
    return out


def _agrees(mine: Counts, server: Counts) -> bool:
    return all(s < 0 or m == s for m, s in zip(mine, server, strict=True))


def _subtract(w: Window, cuts: Sequence[Window]) -> Iterator[Window]:
    """The parts of ``w`` outside every cut (cuts sorted, not overlapping)."""
    at = w.start
    for c in cuts:
        if c.end <= at or c.start >= w.end:
            continue
        if c.start > at:
            yield Window(at, c.start)
        at = max(at, c.end)
    if at < w.end:
        yield Window(at, w.end)


def _merge(ws: Sequence[Window]) -> list[Window]:
    out: list[Window] = []
    for w in sorted(ws, key=lambda w: w.start):
        if out and w.start <= out[-1].end:
            if w.end > out[-1].end:
                out[-1] = Window(out[-1].start, w.end)
        else:
            out.append(w)
    return out


def _pages(rows: int) -> int:
    """The list calls a walk of ``rows`` rows costs (an empty window costs one)."""
    return max(1, math.ceil(rows / PAGE_LIMIT))


def _row_estimate(server: Mapping[str, Counts]) -> Callable[[Window], int]:
    """The rows a walk of a window meets, by the server's counts of its minutes (a minute
    the window only partly covers counts whole: an estimate that errs towards more pages)."""
    keys = sorted(server)
    starts = [from_text(k) for k in keys]
    sums = list(itertools.accumulate((server[k][0] for k in keys), initial=0))

    def rows(w: Window) -> int:
        i = bisect.bisect_left(starts, align_down(w.start, MINUTE))
        j = bisect.bisect_left(starts, w.end)
        return sums[j] - sums[i]

    return rows


def _coalesce(parts: Iterator[Window], rows: Callable[[Window], int]) -> list[Window]:
    """Neighbouring parts of one window walked as one where that takes fewer calls: the
    rows between them are read again, but a page that holds them all is one call, not
    two."""
    out: list[Window] = []
    for p in parts:
        if out:
            joined = Window(out[-1].start, p.end)
            if _pages(rows(joined)) < _pages(rows(out[-1])) + _pages(rows(p)):
                out[-1] = joined
                continue
        out.append(p)
    return out


class Steady:
    """Narrows each target's lookback for one sync run (see the module's docstring)."""

    def __init__(
        self,
        store: Store,
        client: FalClient,
        notes: Notes,
        histories: Mapping[str, str] | None = None,
    ) -> None:
        self.store = store
        self.client = client
        self.notes = notes
        #: each target's history, when not ``serverless``: its counts come from its own
        #: analytics operation
        self.histories = dict(histories or {})
        #: why analytics could not be used, per target (the run's note names them once)
        self.fell_back: dict[str, str] = {}
        #: histories whose analytics the API lacks (404): not asked again this run
        self._absent: set[str] = set()

    def narrow(
        self,
        target: str,
        windows: list[Window],
        tail: datetime,
        now: datetime,
        *,
        billing: bool,
    ) -> Narrowed:
        completed = [(from_text(a), from_text(b)) for a, b in self.store.completed(target)]
        if not completed or not windows:
            return Narrowed(windows)
        last = max(b for _, b in completed)
        lo, hi = tail, min(last, now)
        if hi - lo < MINUTE:
            return Narrowed(windows)
        first = align_down(lo, MINUTE)
        if hi - first > MAX_ANALYTICS_PAGES * ANALYTICS_PAGE * MINUTE:
            log.info("%s: a lookback this long is walked whole (no per-minute counts)", target)
            return Narrowed(windows)
        server = self._server_counts(target, first, hi)
        if server is None:
            return Narrowed(windows)
        keep = self._differing(target, server, first, lo, hi)
        by_id, stretch = self._pending_plan(target, lo, hi, billing=billing)
        if stretch is not None:
            keep.append(stretch)
        if not any(w.end > hi for w in windows):
            # nothing new to walk (a clock behind): one short walk still reads the API's
            # clock, which is how a run measures the skew
            keep.append(Window(max(lo, hi - MINUTE), hi))
        keep = _merge(keep)
        trusted = [Window(max(a, lo), min(b, hi)) for a, b in completed if max(a, lo) < min(b, hi)]
        trusted = _merge([p for t in trusted for p in _subtract(t, keep)])
        rows = _row_estimate(server)
        out = [p for w in windows for p in _coalesce(_subtract(w, trusted), rows)]
        calls = sum(_pages(rows(w)) for w in out) + len(by_id)
        whole = sum(_pages(rows(w)) for w in windows)
        if calls > whole:  # changes scattered over the lookback: one walk of it is cheaper
            log.info("%s: the lookback is walked whole (%d calls, narrowed %d)", target, whole,
                     calls)  # fmt: skip
            return Narrowed(windows)
        left_out = sum(t.length.total_seconds() for t in trusted)
        log.info(
            "%s: lookback narrowed to %d windows (%d minutes differ, %s), %d rows by id; "
            "%.0f s of it unchanged",
            target,
            len(out),
            sum(1 for k in keep if k is not stretch),
            f"stretch from {stretch.start}" if stretch else "no stretch",
            len(by_id),
            left_out,
        )
        return Narrowed(out, by_id)

    # -- the server's counts ------------------------------------------------------------

    def _server_counts(self, target: str, lo: datetime, hi: datetime) -> dict[str, Counts] | None:
        """The server's counts per minute of ``[lo, hi)``; None (and the run's note, once)
        when analytics cannot be used."""
        params = [
            ("endpoint_id", target),
            ("start", api_param(lo)),
            ("end", api_param(hi)),
            ("timeframe", "minute"),
            ("timezone", "UTC"),
            ("bound_to_timeframe", "false"),
            ("expand", "time_series"),
            ("expand", "request_count"),
            ("expand", "success_count"),
            ("expand", "user_error_count"),
            ("expand", "error_count"),
            ("limit", str(ANALYTICS_PAGE)),
        ]
        buckets = math.ceil((hi - lo) / MINUTE)
        history = self.histories.get(target, "serverless")
        if history in self._absent:
            self._fall_back(target, "HTTP 404")
            return None
        counts: dict[str, Counts] = {}
        cursor: str | None = None
        try:
            for _ in range(MAX_ANALYTICS_PAGES):
                data = self.client.get_json(
                    ANALYTICS_PATHS[history],
                    params + ([("cursor", cursor)] if cursor else []),
                    attempts=3,
                )
                page = parse_counts(data)
                if counts.keys() & page.keys():
                    raise BadDataError("the analytics answer gave a minute twice")
                counts.update(page)
                nxt = data.get("next_cursor")
                if nxt is None:
                    break
                if not isinstance(nxt, str) or not nxt or nxt == cursor:
                    raise BadDataError("the analytics answer garbled its cursor")
                cursor = nxt
            if len(counts) < buckets:
                raise BadDataError(f"the analytics answer gave {len(counts)} of {buckets} minutes")
        except (ApiError, ApiUnavailable, BadDataError) as e:
            if isinstance(e, ApiError) and e.status == 404:
                self._absent.add(history)
            self._fall_back(target, f"HTTP {e.status}" if isinstance(e, ApiError) else str(e))
            return None
        except Stopped:
            return None
        return counts

    def _fall_back(self, target: str, why: str) -> None:
        """Say once per run that the lookback was walked whole, and why (first target's)."""
        log.info("%s: analytics not usable for the lookback (%s)", target, why)
        if not self.fell_back:
            self.notes.add(
                f"/serverless/analytics gave no usable counts ({why}); the whole lookback "
                "is walked, as with --full-lookback"
            )
        self.fell_back[target] = why

    # -- the mirror's side --------------------------------------------------------------

    def _differing(
        self,
        target: str,
        server: dict[str, Counts],
        first: datetime,
        lo: datetime,
        hi: datetime,
    ) -> list[Window]:
        """The minutes of ``[lo, hi)`` where the mirror's counts differ from the server's,
        under the timestamp that agrees on the most minutes (under each of them on a tie)."""
        r = requests.c
        mine: dict[str, dict[str, list[int]]] = {f: {} for f in FIELDS}
        q = sa.select(r.sent_at, r.started_at, r.ended_at, r.status_code).where(
            target_clause(target),
            r.sent_at < to_text(hi),
            sa.or_(r.ended_at.is_(None), r.ended_at >= to_text(first)),
        )
        with self.store.reading() as conn:
            for sent, started, ended, code in conn.execute(q):
                for name, value in zip(FIELDS, (ended, sent, started), strict=True):
                    if value is None:
                        continue
                    text = _text(value)
                    if not to_text(first) <= text < to_text(hi):
                        continue
                    key = _minute_key(value)
                    if key is None:
                        continue
                    c = mine[name].setdefault(key, [0, 0, 0, 0])
                    c[0] += 1
                    if (s := _status(code)) > 0:
                        c[s] += 1
        zero: Counts = (0, 0, 0, 0)

        def counts(name: str, key: str) -> Counts:
            c = mine[name].get(key)
            return (c[0], c[1], c[2], c[3]) if c else zero

        score = {f: sum(_agrees(counts(f, k), n) for k, n in server.items()) for f in FIELDS}
        top = max(score.values())
        best = [f for f in FIELDS if score[f] == top]
        out = []
        for key, n in sorted(server.items()):
            if all(_agrees(counts(f, key), n) for f in best):
                continue
            m = from_text(key)
            a, b = max(m, lo), min(m + MINUTE, hi)
            if a < b:
                out.append(Window(a, b))
        return out

    def _pending(self, target: str, lo: datetime, hi: datetime, *, billing: bool) -> list[Pending]:
        """Rows of ``[lo, hi)`` that may still change, oldest first."""
        r = requests.c
        # unfinished rows sent before lo are store.unfinished's (asked for by id every run)
        maybe = sa.and_(r.ended_at.is_(None), r.sent_at >= to_text(lo))
        if billing:
            maybe = sa.or_(
                maybe,
                sa.and_(
                    r.ended_at >= to_text(lo),
                    r.billable_units.is_(None),
                    r.status_code >= 200,
                    r.status_code < 300,
                ),
            )
        q = (
            sa.select(r.request_id, r.endpoint_id, r.sent_at, r.ended_at)
            .where(target_clause(target), r.sent_at < to_text(hi), maybe)
            .order_by(r.sent_at)
        )
        out = []
        with self.store.reading() as conn:
            for rid, ep, sent, ended in conn.execute(q):
                try:
                    out.append(
                        Pending(
                            rid,
                            ep,
                            from_text(_text(sent)),
                            from_text(_text(ended)) if ended is not None else None,
                        )
                    )
                except (ValueError, OverflowError):
                    continue  # not a time: stored by an older mirror, left to verify
        return out

    def _rows_from(self, target: str, start: datetime, hi: datetime) -> int:
        r = requests.c
        q = sa.select(sa.func.count()).where(
            target_clause(target),
            r.sent_at < to_text(hi),
            sa.or_(r.ended_at.is_(None), r.ended_at >= to_text(start)),
        )
        with self.store.reading() as conn:
            n = int(conn.execute(q).scalar() or 0)
        return n

    def _pending_plan(
        self,
        target: str,
        lo: datetime,
        hi: datetime,
        *,
        billing: bool,
    ) -> tuple[list[tuple[str, str, str]], Window | None]:
        """The rows that may still change: (those asked for by id, the stretch walked for
        the others)."""
        due = self._pending(target, lo, hi, billing=billing)
        if not due:
            return [], None
        starts = [max(lo, floor_s(p.sent_at)) for p in due]
        # by id: the oldest i rows; walked: the stretch from the (i+1)-th on
        best_i, best_cost = len(due), len(due)
        seen: set[datetime] = set()
        for i, s in enumerate(starts):
            if i >= best_cost or s in seen:
                continue
            seen.add(s)
            cost = i + max(1, math.ceil(self._rows_from(target, s, hi) / PAGE_LIMIT))
            if cost < best_cost:
                best_i, best_cost = i, cost
        if best_i > MAX_BY_ID:  # more than a run should ask by id: walk further back instead
            best_i = 0
        by_id = [(p.request_id, p.endpoint_id, to_text(p.sent_at)) for p in due[:best_i]]
        stretch = Window(starts[best_i], hi) if best_i < len(due) and starts[best_i] < hi else None
        return by_id, stretch
