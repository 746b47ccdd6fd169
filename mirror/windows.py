"""Window planning: which ``[start, end)`` ranges a sync walks. Pure functions, no I/O.

A target's state is its completed intervals. A sync wants ``[start, end)`` covered, where
``start`` is ``--since`` (or the earliest completed point, or a default age the first time)
and ``end`` is ``--until`` or the moment the sync started. Completed intervals are trusted
only up to ``recheck_from`` (the last completed point minus the lookback): everything after
it is walked again, which picks up late-arriving requests, late billing and rows that ended
since. What remains is cut into windows of whole seconds, at most ``size`` long; where the
mirror already holds rows (a re-walked tail, a gap left by a crash) ``pack`` cuts them by
the density seen, so each window is about one walk of ``target_rows`` and a sparse range is
one call, not one per hour. Where nothing is known yet, the walker splits a window after
its first page (``mirror.sync.estimate_parts``).
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
SECOND = timedelta(seconds=1)


@dataclass(frozen=True, order=True)
class Window:
    start: datetime
    end: datetime

    def __post_init__(self) -> None:
        if not self.start < self.end:
            raise ValueError(f"empty window {self.start} .. {self.end}")

    @property
    def length(self) -> timedelta:
        return self.end - self.start


def subtract(
    start: datetime, end: datetime, covered: Iterable[tuple[datetime, datetime]]
) -> list[tuple[datetime, datetime]]:
    """``[start, end)`` minus the union of ``covered``, as sorted disjoint gaps."""
    gaps: list[tuple[datetime, datetime]] = []
    cur = start
    for a, b in sorted(covered):
        if b <= cur or a >= end:
            continue
        if a > cur:
            gaps.append((cur, min(a, end)))
        cur = max(cur, b)
        if cur >= end:
            break
    if cur < end:
        gaps.append((cur, end))
    return gaps


def align_down(t: datetime, size: timedelta) -> datetime:
    steps = (t - EPOCH) // size
    return EPOCH + steps * size


def cut(start: datetime, end: datetime, size: timedelta) -> list[Window]:
    """Cut ``[start, end)`` into equal whole-second windows of at most ``size``."""
    if start >= end:
        return []
    seconds = int((end - start).total_seconds())
    parts = max(1, -(-seconds // max(1, int(size.total_seconds()))))
    return split(Window(start, end), parts)


HOUR = timedelta(hours=1)


def pack(
    window: Window, hourly: dict[datetime, int], *, target_rows: int, max_len: timedelta
) -> list[Window]:
    """Re-cut a window by known density: each piece about ``target_rows`` rows.

    ``hourly`` maps the start of an hour to the rows the mirror holds in it. Hours are taken
    greedily while the estimate stays under the target; an hour denser than the target is
    split evenly. Without counts the window is returned as it is.
    """
    est_total = sum(n for h, n in hourly.items() if h + HOUR > window.start and h < window.end)
    if est_total <= target_rows:
        return [window]
    out: list[Window] = []
    cur = window.start
    acc = 0.0
    t = window.start
    while t < window.end:
        h = align_down(t, HOUR)
        nxt = min(window.end, h + HOUR)
        frac = (nxt - t) / HOUR
        n = hourly.get(h, 0) * frac
        if n > target_rows:  # a dense hour: close what we have, split this one
            if cur < t:
                out.append(Window(cur, t))
            piece = Window(t, nxt)
            out.extend(split(piece, -(-int(n) // target_rows)))
            cur, acc = nxt, 0.0
        elif acc + n > target_rows or (nxt - cur) > max_len:
            if cur < t:
                out.append(Window(cur, t))
            cur, acc = t, n
        else:
            acc += n
        t = nxt
    if cur < window.end:
        out.append(Window(cur, window.end))
    return out


def plan(
    start: datetime,
    end: datetime,
    completed: Sequence[tuple[datetime, datetime]],
    *,
    recheck_from: datetime | None,
    size: timedelta,
) -> list[Window]:
    """The windows to walk, oldest first."""
    start, end = floor_s(start), floor_s(end)
    if start >= end:
        return []
    trusted = []
    for a, b in completed:
        if recheck_from is not None:
            b = min(b, recheck_from)
        if a < b:
            trusted.append((a, b))
    windows: list[Window] = []
    for a, b in subtract(start, end, trusted):
        windows.extend(cut(floor_s(a), min(ceil_s(b), end), size))
    return windows


def split(window: Window, parts: int) -> list[Window]:
    """Split into up to ``parts`` windows of whole seconds (fewer if the window is short)."""
    seconds = int(window.length.total_seconds())
    parts = max(1, min(parts, seconds))
    if parts == 1:
        return [window]
    bounds = [window.start + SECOND * (seconds * i // parts) for i in range(parts)] + [window.end]
    return [Window(a, b) for a, b in itertools.pairwise(bounds) if a < b]


def floor_s(t: datetime) -> datetime:
    return t.replace(microsecond=0)


def ceil_s(t: datetime) -> datetime:
    return t if t.microsecond == 0 else t.replace(microsecond=0) + SECOND
