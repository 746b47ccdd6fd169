"""The one way through a window's pages, for sync's windows and verify's hours alike.

- ``WindowWalk``: one walk of one target's window along the list cursor, page after page,
  under the rules every walk obeys (a cursor given twice, a run of empty pages that still
  give a cursor, or more pages than the window can plausibly hold are bad data), noting
  as it goes whether any id was read twice (rows moved under the offset pages). A page
  over the body cap is asked for again in smaller pages, from the window's first page
  (halving the ``limit`` down to 1); a request too big for a page of one is read without
  its payloads (``TooBig``) and the walk goes on past it.
- ``PageLimits``: the smaller page sizes walks learned, per stretch of a target's history
  (``Stretch``), so that later walks there start small; ``cut`` cuts a window at their
  bounds.
- ``until_stable``: a walk repeated while rows move under its offset pages.
- ``Lister``: the list call as every walk makes it, through the operation of the target's
  history (a hosted model's calls, or an app's: ``FalClient.list_requests``), with the
  billing fallback:
  ``expand=billing`` is asked for until the API refuses it for a target with a 403; that
  page is then asked for again without it, so is every later one of the target, and the
  refusal is noted once. ``Lister.look_up`` asks for one request by id.
- ``Stop``: a run's stop signal. A failure elsewhere, Ctrl-C or the consumer giving up sets
  it; a walk checks it before each call, and ``Stop.sleep`` (the wait the run's client
  uses between attempts, ``FalClient.with_sleep``) returns at once by raising ``Stopped``.
- ``Notes``: what a run tells the user, each thing once (the CLI prints them after the run).

What differs between sync and verify is passed in, not written twice: sync's walkers take
one of the pacer's turns per page (``turn``), split a dense window and stream its pages to
the writer, and re-walk a window ``1 + rewalks`` times; verify collects an hour's rows,
walks it again when billing was refused half-way, and up to ``MAX_WALKS`` times.

Threads: sync's walkers and verify's walks call a ``Lister``, its ``PageLimits`` and
``Notes`` concurrently; each keeps its own lock. A ``WindowWalk`` belongs to the thread
that walks it. How each engine runs its walks (sync's walkers feeding one writer,
verify's bounded pool) stays with the engine.
"""

from __future__ import annotations

import contextlib
import logging
import math
import threading
from collections.abc import Callable, Generator, Iterable, Mapping
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from itertools import pairwise
from typing import TypeVar

from mirror.api import FalClient
from mirror.errors import AuthError, BadDataError, PageTooLarge
from mirror.oversize import Stretch, TooBig
from mirror.records import PAGE_LIMIT, Page, Row
from mirror.serverclock import SkewEstimate
from mirror.timeparse import api_param, utcnow

T = TypeVar("T")
log = logging.getLogger("mirror.walk")

#: empty pages with a cursor, in a row, that end a walk as bad data. Offset pages come back
#: empty before the end only if rows left the part not yet read (never deleted, a row leaves
#: only if its timestamps change), so one may pass, and two; a run of them is no accident
MAX_EMPTY_PAGES = 3
#: requests per second of window a walk may find: far beyond what one endpoint serves
PLAUSIBLE_RATE = 10_000
#: pages any walk may take, however short its window
MIN_PAGE_CAP = 20
#: pages no walk takes, however long its window (10 million requests)
MAX_PAGE_CAP = 100_000


class Stopped(Exception):
    """The run is stopping: the walk that meets this ends without a word."""


class Stop(threading.Event):
    """A run's stop signal: ``set`` stops it, ``check`` and ``sleep`` raise ``Stopped`` once set."""

    def check(self) -> None:
        if self.is_set():
            raise Stopped

    def sleep(self, seconds: float) -> None:
        """Wait ``seconds``, or raise ``Stopped`` as soon as the run stops."""
        if self.wait(seconds):
            raise Stopped


class PageLimits:
    """The page sizes walks learned, per stretch of a target's history. Thread-safe.

    A walk that had to ask for smaller pages (a page was over the body cap) and got to its
    end teaches its window and the page size it ended with (``learn``); a later walk of a
    window inside that stretch starts with that size (``limit``), instead of meeting the
    cap again. ``cut`` cuts a window at the stretches' bounds, so that only the part inside
    one is walked in small pages. ``learned``: what was learned since this was made (the
    sync keeps it across runs, ``mirror.oversize``).
    """

    def __init__(self, known: Iterable[Stretch] = ()) -> None:
        self._lock = threading.Lock()
        self._known: dict[str, list[Stretch]] = {}
        for s in known:
            self._known.setdefault(s.target, []).append(s)
        self.learned: list[Stretch] = []

    def learn(self, stretch: Stretch) -> None:
        with self._lock:
            self._known.setdefault(stretch.target, []).append(stretch)
            self.learned.append(stretch)

    def limit(self, target: str, start: datetime, end: datetime) -> int:
        """The page size a walk of ``[start, end)`` starts with: the smallest of the
        stretches it overlaps (``PAGE_LIMIT`` outside them)."""
        with self._lock:
            known = self._known.get(target, ())
            return min((s.limit for s in known if s.start < end and start < s.end),
                       default=PAGE_LIMIT)  # fmt: skip

    def cut(self, target: str, start: datetime, end: datetime) -> list[tuple[datetime, datetime]]:
        """``[start, end)`` cut at every bound of a stretch that falls inside it, in order
        (the window itself when none does)."""
        with self._lock:
            known = self._known.get(target, ())
            bounds = {b for s in known for b in (s.start, s.end) if start < b < end}
        return list(pairwise([start, *sorted(bounds), end]))


class Notes:
    """Things the user should hear once, in the order they came; each is logged (info) to
    ``log`` as it comes. ``texts`` is the list a report hands out."""

    def __init__(self, log: logging.Logger) -> None:
        self.texts: list[str] = []
        self._log = log
        self._lock = threading.Lock()

    def add(self, text: str) -> None:
        with self._lock:
            if text in self.texts:
                return
            self.texts.append(text)
            self._log.info(text)

    def merge(self, texts: list[str]) -> None:
        """Another run's notes (already logged there), those not heard yet."""
        with self._lock:
            self.texts.extend(t for t in texts if t not in self.texts)


@dataclass(eq=False)
class Lister:
    """The list calls as every walk and look-up makes them (one target, whole-second
    bounds, the run's expansions), with the billing fallback (see the module).

    ``skew``: fed the API's clock from every answer that carries it, with ``clock``'s
    readings around the call (the sync measures how far this machine's clock is off).
    """

    client: FalClient
    payloads: bool
    billing: bool
    stop: Stop
    notes: Notes
    #: what the refusal note says the run does without billing
    without_billing: str
    skew: SkewEstimate | None = None
    clock: Callable[[], datetime] = utcnow
    #: targets whose billing the API refused (403): listed without it from then on
    refused: set[str] = field(default_factory=set)
    #: the page sizes learned for stretches of the targets' history (``WindowWalk``)
    limits: PageLimits = field(default_factory=PageLimits)
    #: each target's history (``mirror.schema.HISTORIES``) where it is not ``serverless``:
    #: which operation lists it
    histories: Mapping[str, str] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def history_of(self, target: str) -> str:
        return self.histories.get(target, "serverless")

    def billing_for(self, target: str) -> bool:
        """Whether ``target``'s pages are asked for with billing: a model's never are (its
        list has none to give)."""
        return (
            self.billing and target not in self.refused and self.history_of(target) == "serverless"
        )

    def fetch(
        self,
        target: str,
        start: datetime,
        end: datetime,
        cursor: str | None = None,
        request_id: str | None = None,
        *,
        limit: int = PAGE_LIMIT,
        payloads: bool | None = None,
    ) -> tuple[Page, bool, int]:
        """One page of at most ``limit`` requests: (the page, whether billing was asked
        for, calls made). ``payloads``: False to leave them out where the run asks for them."""
        self.stop.check()
        billing = self.billing_for(target)
        history = self.history_of(target)
        with_payloads = self.payloads if payloads is None else payloads and self.payloads
        skew, clock = self.skew, self.clock

        def call(billing: bool) -> Page:
            sent = clock() if skew is not None else None
            page = self.client.list_requests(
                [target],
                start=api_param(start),
                end=api_param(end),
                cursor=cursor,
                payloads=with_payloads,
                billing=billing,
                request_id=request_id,
                limit=limit,
                history=history,
            )
            if skew is not None and sent is not None and page.server_time is not None:
                skew.add(sent, clock(), page.server_time)
            return page

        try:
            return call(billing), billing, 1
        except AuthError as e:
            if not (billing and e.status == 403):
                raise
            page = call(False)
            with self._lock:
                first = target not in self.refused
                self.refused.add(target)
            if first:
                self.notes.add(
                    f"the API refused billing for {target} ({e.message}); {self.without_billing}"
                )
            return page, False, 2

    def look_up(
        self, target: str, request_id: str, start: datetime, end: datetime
    ) -> tuple[list[Row], bool, int, tuple[TooBig, ...]]:
        """The request ``request_id`` of ``target``, asked for by id over ``[start, end)``:
        (the rows of the answer that are it, whether billing was asked for, calls made, and
        those rows again if the answer was over the body cap with payloads and they were
        read without)."""
        try:
            page, billing, calls = self.fetch(target, start, end, request_id=request_id)
            big: tuple[TooBig, ...] = ()
        except PageTooLarge as e:
            if not self.payloads:
                raise
            page, billing, calls = self.fetch(
                target, start, end, request_id=request_id, payloads=False
            )
            calls += 1
            big = tuple(TooBig(r, e.size, e.cap) for r in page.rows if r.request_id == request_id)
            if big:
                self.notes.add(_too_big_note(target, e.cap))
        return [r for r in page.rows if r.request_id == request_id], billing, calls, big


def _too_big_note(target: str, cap: int) -> str:
    """What the user hears once per target of which a request was read without payloads."""
    return (
        f"some requests of {target} are too big to read with their payloads (a page of one "
        f"is over the {cap:,}-byte cap): read without them; mirror status lists those a "
        "sync stored"
    )


def page_cap(length: timedelta, limit: int = PAGE_LIMIT) -> int:
    """The most pages of ``limit`` requests a walk of a window this long may take: 120 of
    100 for one second."""
    per_second = PLAUSIBLE_RATE / limit
    cap = MIN_PAGE_CAP + math.ceil(length.total_seconds() * per_second)
    return min(MAX_PAGE_CAP * PAGE_LIMIT // limit, cap)


@dataclass(frozen=True)
class Step:
    """One page of a walk, as the walk hands it on."""

    page: Page
    #: whether the page was asked for with billing (the API's refusal drops it: ``Lister``)
    billing: bool
    #: the page's place in the walk, 1 for the first (again after a page over the cap)
    number: int
    #: whether an id has been read twice in this walk so far (rows moved: ``until_stable``)
    repeated: bool
    #: the page's requests that were read without payloads: a page of one was over the cap
    too_big: tuple[TooBig, ...] = ()


class WindowWalk:
    """One walk of one target's window ``[start, end)`` along the list cursor: ``pages``.

    Every page is checked against the rules every walk obeys before it is handed on: a
    cursor given twice, ``MAX_EMPTY_PAGES`` empty pages in a row that still give a cursor,
    or more pages than the window can plausibly hold (``page_cap``) are ``BadDataError``; a
    cursor that never ends would otherwise be followed for hours.

    Pages hold ``limit`` requests: ``PAGE_LIMIT``, or less where the lister's
    ``PageLimits`` know the stretch needs it. A page over the body cap (``PageTooLarge``)
    is asked for again with half the limit, down to 1; the cursor numbers pages, not rows,
    so no cursor of the old size can be followed with the new one, and the walk starts
    again from the window's first page (the pages handed on before stay good: the same
    rows again are upserted the same, and the walk that decides is the one that ends). A
    request whose page of one is still over the cap is asked for once more without
    payloads, at the same cursor: it is handed on as it comes, in ``Step.too_big``, and
    the walk goes on along that page's cursor. A walk that ends with a smaller limit than
    it began with teaches it to the ``PageLimits`` for its window.

    ``turn``: what each page is fetched and handed on in (sync: ``FalClient.turn``, so that
    no more walkers than the pacer allows fetch, decode and hand over pages at once).
    After (or during) the walk: ``calls`` made, the ``billing`` flags its pages were asked
    with, whether it ``repeated`` an id, ``present``, the API's clock at its first answer,
    the ``limit`` it ended with and the requests it read without payloads (``too_big``).
    """

    def __init__(
        self,
        lister: Lister,
        target: str,
        start: datetime,
        end: datetime,
        *,
        turn: Callable[[], AbstractContextManager[None]] = contextlib.nullcontext,
    ) -> None:
        self.lister = lister
        self.target = target
        self.start = start
        self.end = end
        self.what = f"{target} {api_param(start)}..{api_param(end)}"
        #: requests per page asked for
        self.limit = lister.limits.limit(target, start, end)
        self._first_limit = self.limit
        self.cap = page_cap(end - start, self.limit)
        self._turn = turn
        #: pages read so far (since the walk last started again from the first page)
        self.read = 0
        self.calls = 0
        self.billing: set[bool] = set()
        self.repeated = False
        self.present: datetime | None = None
        self._answered = False
        self.too_big: list[TooBig] = []
        #: the cursor of the next page to ask for (None: the first page)
        self._cursor: str | None = None
        self._given: set[str] = set()
        self._empty = 0
        self._seen: set[str] = set()

    def pages(self) -> Generator[Step, None, None]:
        """The walk's pages in order, up to the one without a next cursor. Each is handed on
        within its ``turn``; a consumer that has what it needs stops early by closing the
        iterator (``contextlib.closing``), which ends the turn. After a page over the cap
        the pages start again from the first (``Step.number`` 1)."""
        while True:
            with self._turn():
                fetched = self._fetch()
                if fetched is None:
                    continue  # asked for in smaller pages, from the first
                page, billing, big = fetched
                self.billing.add(billing)
                if not self._answered:
                    self.present = page.server_time
                    self._answered = True
                ids = [r.request_id for r in page.rows]
                if not self._seen.isdisjoint(ids) or len(set(ids)) < len(ids):
                    self.repeated = True
                self._seen.update(ids)
                more = self._follow(page)
                yield Step(page, billing, self.read, self.repeated, big)
            if not more:
                if self.limit < self._first_limit:
                    self.lister.limits.learn(Stretch(self.target, self.start, self.end, self.limit))
                return

    def _fetch(self) -> tuple[Page, bool, tuple[TooBig, ...]] | None:
        """The page at the cursor: (the page, whether billing was asked for, its requests
        read without payloads); None if it was over the cap and the walk starts again."""
        lister = self.lister
        try:
            page, billing, calls = lister.fetch(
                self.target, self.start, self.end, self._cursor, limit=self.limit
            )
            self.calls += calls
            return page, billing, ()
        except PageTooLarge as e:
            self.calls += 1
            over = e
        if self.limit > 1:
            smaller = self.limit // 2
            log.info("%s: a page of %d requests is over the %d-byte cap; walking it again "
                     "in pages of %d", self.what, self.limit, over.cap, smaller)  # fmt: skip
            self._start_again(smaller)
            return None
        if not lister.payloads:
            raise over
        try:
            page, billing, calls = lister.fetch(
                self.target, self.start, self.end, self._cursor, limit=1, payloads=False
            )
        except PageTooLarge as e:
            raise PageTooLarge(
                f"a page of one request of {self.what} is over the {e.cap}-byte cap even "
                f"without payloads ({e})",
                size=e.size,
                cap=e.cap,
            ) from None
        self.calls += calls
        big = tuple(TooBig(r, over.size, over.cap) for r in page.rows)
        for b in big:
            log.info("%s: request %s is too big for a page with its payloads; read without",
                     self.what, b.row.request_id)  # fmt: skip
        if big:
            lister.notes.add(_too_big_note(self.target, over.cap))
        self.too_big.extend(big)
        return page, billing, big

    def _start_again(self, limit: int) -> None:
        """From the window's first page, in pages of ``limit``: a new walk in all but its
        counts of calls, so an id read again is no repeat and the page cap is the new size's."""
        self.limit = limit
        self.cap = page_cap(self.end - self.start, limit)
        self.read = 0
        self.repeated = False
        self._cursor = None
        self._given.clear()
        self._empty = 0
        self._seen.clear()

    def _follow(self, page: Page) -> bool:
        """Count ``page`` (the answer for the current cursor) under the rules; whether a
        page follows it."""
        self.read += 1
        nxt = page.next_cursor
        if nxt is None:
            return False
        if nxt == self._cursor or nxt in self._given:
            raise BadDataError(f"the API repeated a page cursor while walking {self.what}")
        self._empty = 0 if page.rows else self._empty + 1
        if self._empty >= MAX_EMPTY_PAGES:
            raise BadDataError(
                f"the API gave {self._empty} empty pages in a row, each with a new cursor, "
                f"while walking {self.what}"
            )
        if self.read >= self.cap:
            raise BadDataError(
                f"the API gave {self.read} pages for {self.what} and no end: more than "
                f"{self.cap * self.limit:,} requests in {self.end - self.start} is not plausible"
            )
        self._given.add(nxt)
        self._cursor = nxt
        return True


def until_stable(
    walk: Callable[[], tuple[T, bool | None]], attempts: int, what: str, log: logging.Logger
) -> tuple[T, bool]:
    """Walk until a walk is stable, ``attempts`` times at most (once at least): the last
    walk's result, and whether it was stable.

    Offset pages shift when rows move while a window is walked, and every skipped row shows
    as another one read twice; so a walk that saw an id twice is repeated. ``walk`` returns
    its result and True (stable), False (rows moved: logged as ``what``'s, walked again)
    or None (walked again without a word: verify's walk that billing was refused half-way).
    """
    while True:
        result, stable = walk()
        attempts -= 1
        if stable:
            return result, True
        if stable is False:
            log.info("%s: rows moved while paging; walking it again", what)
        if attempts <= 0:
            return result, False
