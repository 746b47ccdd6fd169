"""Cutting the rest of a window that turns out denser than planned, mid-walk.

A window planned as one walk (by its first page, or blind, without analytics) may hide a
dense stretch its first page did not see; one walker would then page through it alone while
the others wait. After each page, ``Reach`` keeps what the walk's pages say: the sort
direction (undocumented, so read from the pages themselves), how far along the window the
walk has come (the ``ended_at`` furthest along) and the density of the last page, the
estimate revised as pages arrive. ``plan_cut`` then cuts the window at that point: the
part read whole is complete, and the rest is handed out in pieces, the nearest sized by the
density just measured, the farther ones doubling in length. With walkers idle, pieces are
smaller, so that a dense tail is shared among them.

The cut is sound only if the window filters on the timestamp the pages are sorted by
(``ended_at``): then every row not yet read lies on the far side of the furthest
``ended_at`` seen, whatever the direction. Under another reading (the window filters on
``sent_at`` or ``started_at``; unfinished rows listed with a null ``ended_at``) a row not
yet read may lie anywhere in the window, so there is no cut: the walk goes on as before.
``FilterProbe`` finds out which reading the API follows, once per target, with two look-ups
of one request by id: one over the second its ``ended_at`` falls in (it must be listed),
one over the seconds before, which hold its ``sent_at`` and ``started_at`` (it must not).
Any other answer, an error, or no request to ask about: no cut.

At the cut instant (windows are ``[start, end)`` in whole seconds), the rest always includes
the whole second the furthest ``ended_at`` falls in: rows that tie with it and were not
read yet are not lost; the few of that second already read are read again.
"""

from __future__ import annotations

import itertools
import logging
import math
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from mirror.errors import MirrorError
from mirror.records import Row
from mirror.timeparse import from_text, normalize, to_text
from mirror.walk import Lister
from mirror.windows import Window, floor_s

log = logging.getLogger("mirror.cuts")

SECOND = timedelta(seconds=1)
#: the rest of a walk is cut only if it looks like more than this many pieces
CUT_SLACK = 2
#: with walkers idle, the rest is cut into pieces of this many rows at least (fewer rows
#: per piece cost more in partial last pages than the walkers gain)
MIN_PIECE_ROWS = 300
#: pieces sized by the measured density next to the cut (one per idle walker, roughly);
#: beyond them, pieces double in length, and a dense one is cut again by its own walk
NEAR_PIECES = 8


class Reach:
    """What one walk's pages say about its window ``[start, end)``, page after page.

    ``order``: "desc" or "asc" by ``ended_at`` (None until a page shows it); ``edge``: the
    ``ended_at`` furthest along; ``rate``: rows per second of the last two pages (one page
    of a tie group alone would look infinitely dense; a span under a second counts as one,
    the finest a window can be cut); ``usable``:
    False once a page contradicts the reading a cut needs (a row without ``ended_at`` or
    outside the window by it, or pages out of order).
    """

    def __init__(self, window: Window) -> None:
        self.window = window
        self.order: str | None = None
        self.edge: datetime | None = None
        self.rate: float | None = None
        self.usable = True
        #: (first ended_at, rows) of the last page
        self._last: tuple[datetime, int] | None = None
        self._bounds = (to_text(window.start), to_text(window.end))

    def add(self, rows: Sequence[Row]) -> None:
        if not self.usable or not rows:
            return
        # Compared as the stored text, whose order is time order: parsing each of a page's
        # 100 timestamps cost more than the rest of this (a walker's CPU is the run's).
        ends: list[str] = []
        lo, hi = self._bounds
        for r in rows:
            if r.ended_at is None:
                self.usable = False  # listed unfinished: the window filters on another time
                return
            e = _stored_text(r.ended_at)
            if e is None:
                self.usable = False
                return
            if not lo <= e < hi:
                self.usable = False  # outside the window by ended_at: filtered on another
                return
            ends.append(e)
        pairs = list(itertools.pairwise(ends))
        down = all(a >= b for a, b in pairs)
        up = all(a <= b for a, b in pairs)
        if self.edge is not None:  # this page must follow the last one
            edge = to_text(self.edge)
            down = down and ends[0] <= edge
            up = up and ends[0] >= edge
        if not (down or up):
            self.usable = False
            return
        # all equal (and equal to the edge): the order is still open
        order = self.order if down and up else "desc" if down else "asc"
        if self.order is not None and order is not None and order != self.order:
            self.usable = False
            return
        self.order = order
        self.edge = from_text(ends[-1])
        head = from_text(ends[0])
        first, n = (head, 0) if self._last is None else self._last
        span = abs((first - self.edge).total_seconds())
        self.rate = (n + len(rows)) / max(span, 1.0)
        self._last = (head, len(rows))


@dataclass(frozen=True)
class Cut:
    """A window cut mid-walk: ``done``, the part its pages have read whole; ``rest``, the
    pieces of what is left, nearest the cut first; the first ``near`` are sized to about
    one walk at the density measured."""

    done: Window
    rest: list[Window]
    near: int


def plan_cut(reach: Reach, walk_rows: int, idle: int = 0) -> Cut | None:
    """The cut after the pages ``reach`` has seen, or None: the rest is no more than
    ``CUT_SLACK`` pieces, or the pages do not say enough (see ``Reach``).

    A piece is one walk (``walk_rows``) at the density measured; with ``idle`` walkers
    waiting for work, smaller, so that the rest is shared among them (``MIN_PIECE_ROWS`` at
    least): a dense tail no longer keeps one walker paging while the others wait."""
    w = reach.window
    if not reach.usable or reach.order is None or reach.edge is None or reach.rate is None:
        return None
    # desc: read [edge, end), left [start, edge]; asc: read [start, edge], left [edge, end)
    at = floor_s(reach.edge) + (SECOND if reach.order == "desc" else timedelta(0))
    if not w.start < at < w.end:
        return None
    if reach.order == "desc":
        done, left = Window(at, w.end), Window(w.start, at)
    else:
        done, left = Window(w.start, at), Window(at, w.end)
    seconds = left.length.total_seconds()
    rows = reach.rate * seconds
    piece_rows = walk_rows
    if idle > 0:
        piece_rows = max(MIN_PIECE_ROWS, min(walk_rows, math.ceil(rows / (idle + 1))))
    if rows <= CUT_SLACK * piece_rows:
        return None
    size = max(1, math.ceil(piece_rows / reach.rate))
    pieces: list[Window] = []
    near = 0
    covered = 0
    while covered < seconds:
        n = len(pieces)
        step = size if n < NEAR_PIECES else size * 2 ** (n - NEAR_PIECES + 1)
        step = min(step, int(seconds) - covered)
        if reach.order == "desc":
            piece = Window(left.end - SECOND * (covered + step), left.end - SECOND * covered)
        else:
            piece = Window(left.start + SECOND * covered, left.start + SECOND * (covered + step))
        pieces.append(piece)
        near += n < NEAR_PIECES
        covered += step
    return Cut(done, pieces, near)


class FilterProbe:
    """Whether a target's list windows filter on ``ended_at``: asked of the API once per
    target (see the module), from a request a walk has read. Thread-safe."""

    def __init__(self, lister: Lister) -> None:
        self._lister = lister
        self._known: dict[str, bool] = {}
        self._lock = threading.Lock()

    def on_ended_at(self, target: str, rows: Sequence[Row]) -> bool:
        with self._lock:
            if target in self._known:
                return self._known[target]
            probe = _probe_row(rows)
            if probe is None:
                return False  # nothing to ask about yet: no cut after this page
            row, ended = probe
            sent = floor_s(from_text(row.sent_at))
            try:
                inside, _, _, _ = self._lister.look_up(
                    target, row.request_id, ended, ended + SECOND
                )
                before, _, _, _ = self._lister.look_up(target, row.request_id, sent, ended)
            except MirrorError as e:
                log.info("%s: could not tell which time list windows filter on (%s)", target, e)
                self._known[target] = False
                return False
            self._known[target] = answer = bool(inside) and not before
            log.info(
                "%s: list windows filter on %s: a dense window is cut %s",
                target,
                "ended_at" if answer else "another time than ended_at",
                "mid-walk" if answer else "only by its first page",
            )
            return answer


def _stored_text(text: str) -> str | None:
    """``text`` in the stored shape (27 characters, UTC), or None if it is no time."""
    try:
        return normalize(text)
    except (ValueError, OverflowError):
        return None


def _probe_row(rows: Sequence[Row]) -> tuple[Row, datetime] | None:
    """A row whose ``sent_at`` and ``started_at`` fall before the second of its
    ``ended_at`` (that second floored), so that one window holds only the one, another only
    the others."""
    for r in rows:
        if r.ended_at is None:
            continue
        try:
            ended = floor_s(from_text(r.ended_at))
            earlier = [from_text(t) for t in (r.sent_at, r.started_at) if t is not None]
        except (ValueError, OverflowError):
            continue
        if earlier and max(earlier) < ended:
            return r, ended
    return None
