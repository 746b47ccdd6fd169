"""What sync's and verify's walks share, besides ``mirror.api.CursorWalk``'s rules.

- ``Stop``: a run's stop signal. A failure elsewhere, Ctrl-C or the consumer giving up sets
  it; a walk checks it before each call, and ``Stop.sleep`` (the wait the run's client
  uses between attempts, ``FalClient.with_sleep``) returns at once by raising ``Stopped``.
- ``Notes``: what a run tells the user, each thing once (the CLI prints them after the run).
- ``Lister``: the list call as both make it, with the billing fallback: ``expand=billing``
  is asked for until the API refuses it for a target with a 403; that page is then asked
  for again without it, so is every later one of the target, and the refusal is noted once.
- ``until_stable``: a walk repeated while rows move under its offset pages.

Threads: sync's walkers and verify's walks call a ``Lister`` and ``Notes`` concurrently;
both keep their own lock. How each engine runs its walks (sync's walkers feeding one
writer, verify's bounded pool) stays with the engine.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import TypeVar

from mirror.api import FalClient, Page
from mirror.errors import AuthError
from mirror.serverclock import SkewEstimate
from mirror.timeparse import api_param, utcnow

T = TypeVar("T")


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
    """The list calls as sync's and verify's walks make them (one target, whole-second
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
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def billing_for(self, target: str) -> bool:
        return self.billing and target not in self.refused

    def fetch(
        self,
        target: str,
        start: datetime,
        end: datetime,
        cursor: str | None = None,
        request_id: str | None = None,
    ) -> tuple[Page, bool, int]:
        """One page: (the page, whether billing was asked for, calls made)."""
        self.stop.check()
        billing = self.billing_for(target)
        skew, clock = self.skew, self.clock

        def call(billing: bool) -> Page:
            sent = clock() if skew is not None else None
            page = self.client.list_requests(
                [target],
                start=api_param(start),
                end=api_param(end),
                cursor=cursor,
                payloads=self.payloads,
                billing=billing,
                request_id=request_id,
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
