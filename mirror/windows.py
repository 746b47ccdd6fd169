"""Window planning: which ``[start, end)`` ranges a sync walks. Pure functions, no I/O.

A target's state is its completed intervals. A sync wants ``[start, end)`` covered, where
``start`` is ``--since`` (or the earliest completed point, or a default age the first time)
and ``end`` is ``--until`` or the moment the sync started. Completed intervals are trusted
only up to ``recheck_from`` (the last completed point minus the lookback): everything after
it is walked again, which picks up late-arriving requests, late billing and rows that ended
since. What remains is cut into windows on whole seconds aligned to the window size, so the
same range yields the same windows on every run.
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
    """Cut ``[start, end)`` at multiples of ``size`` (from the epoch)."""
    out: list[Window] = []
    cur = start
    while cur < end:
        nxt = min(end, align_down(cur, size) + size)
        out.append(Window(cur, nxt))
        cur = nxt
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
        windows.extend(cut(floor_s(a), ceil_s(b) if ceil_s(b) <= end else end, size))
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
