"""How many API calls may be in flight: additive increase, multiplicative decrease.

Worker threads call ``acquire()`` before every HTTP attempt and ``release()`` after it with
what happened. A 429 halves the limit and pauses *every* worker until the backoff (or the
server's ``Retry-After``) has passed, so one refusal is not followed by a burst of retries
that are refused too; a run of healthy answers raises the limit by one, up to the user's
``--max-concurrency``. With ``slow_start`` (what ``mirror sync`` uses), until the first
sign of strain (a 429, a slow answer, the consumer behind) the limit grows by one per
healthy answer instead (a slow start, as TCP's: it doubles every round of answers), so a
run reaches the rate the API allows within its first second instead of creeping up to it.
A slow answer (over four times the fastest seen, plus half a second) takes one off the
limit, at most once a second.

Threads rather than asyncio: the client is a plain ``httpx.Client`` passed in, the writer is
SQLite in one thread, and the parallelism needed is a handful of calls waiting on latency;
threads keep every module synchronous and testable with ``MockTransport``.

With ``learn_rate`` (what ``mirror sync`` uses) a 429 does not halve the limit: it caps the
*rate* of calls at 97% of the rate answered in the last second, spaces admissions by it, and
raises the cap again by six calls a second per second while answers are healthy. A
token-bucket rate limit (fal's) then refuses a call only now and then, instead of a burst of
calls every time the limit grows back. The other calls pause only ``PAUSE_SLOTS`` admission
intervals (a ``Retry-After``, when the server sends one, pauses them all for its length);
the call refused waits its backoff and is then admitted ahead of new calls
(``acquire(retry=True)``), so it is not refused twice in a row (``bench/backfill_bench.py``).

A worker that fetches pages for a consumer (the sync's walkers, feeding its one writer)
takes a ``turn()`` for each page, from the call to handing the page over: at most ``limit``
workers are active at once, so the limit bounds the threads doing work (fetching, decoding,
holding a page), not only the calls on the wire. The consumer reports its backlog with
``backlog()``. While it is behind — pages wait in its full queue — more workers cannot make
the sync faster, only compete with the writer for the cores and the GIL: the limit comes
down by one every ``BACKLOG_CUT_INTERVAL``, to one, and grows again only once the writer has
waited for a page. So an API that answers at once is walked by one or two workers, and one
with latency by as many as keep the writer busy (``bench/dlt_bench.py``, docs/benchmarks.md:
with no latency one walker is 12% faster than four, and holds fewer pages).
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator

#: after a 429, the learned rate is this fraction of the rate answered in the last second
RATE_CUT = 0.97
#: and it grows back by this many calls per second, every second of healthy answers
RATE_GROWTH = 6.0
#: while the consumer of the answers is behind, one fewer worker (and call in flight) this often
BACKLOG_CUT_INTERVAL = 0.25
#: after a 429 that names no wait, with a learned rate, the other calls pause this many
#: admission intervals (at the rate just learned), not the refused call's whole backoff: a
#: token bucket refills that many tokens meanwhile, and the spacing keeps calls under its
#: rate; pausing everyone for the backoff left ~7 calls' worth of the allowed rate unused
#: per 429 (bench/backfill_bench.py)
PAUSE_SLOTS = 2


class Pacer:
    def __init__(
        self,
        max_concurrency: int,
        *,
        initial: int | None = None,
        clock: Callable[[], float] = time.monotonic,
        learn_rate: bool = False,
        slow_start: bool = False,
    ) -> None:
        if max_concurrency < 1:
            raise ValueError("max_concurrency must be at least 1")
        self.max = max_concurrency
        self.limit = min(initial or max_concurrency, max_concurrency)
        self.in_flight = 0
        self.pause_until = 0.0
        #: 429s before this are one signal with the one that cut the rate or the limit
        self._cut_until = 0.0
        self._streak = 0
        self._fastest = float("inf")
        self._last_slow_cut = float("-inf")
        self._clock = clock
        self._cond = threading.Condition()
        #: (time, limit) each time the limit changed, for tests and -v logs
        self.history: list[tuple[float, int]] = [(clock(), self.limit)]
        self.throttles = 0
        self.learn_rate = learn_rate
        #: calls per second admitted at most (learned from 429s); None: no cap yet
        self.rate: float | None = None
        self._next_slot = float("-inf")
        self._oks: deque[float] = deque()
        self._first_ok: float | None = None
        #: refused calls waiting in ``acquire(retry=True)``: new calls let them go first
        self._retries_waiting = 0
        #: the consumer has waited for an answer since it was last behind (or never said)
        self.consumer_waiting = True
        self._last_backlog_cut = float("-inf")
        #: workers in the middle of a turn
        self.active = 0
        #: no sign of strain yet: the limit grows by one per healthy answer
        self.slow_start = slow_start

    def acquire(self, *, retry: bool = False) -> None:
        """Wait for room. ``retry``: a call refused with a 429, admitted before new calls."""
        with self._cond:
            if retry:
                self._retries_waiting += 1
            try:
                while True:
                    now = self._clock()
                    wait = self.pause_until - now
                    if wait > 0:
                        self._cond.wait(timeout=wait)
                        continue
                    if not retry and self._retries_waiting:  # a refused call goes first
                        self._cond.wait(timeout=0.05)
                        continue
                    if self.rate is not None and self._next_slot > now:
                        self._cond.wait(timeout=self._next_slot - now)
                        continue
                    if self.in_flight < self.limit:
                        self.in_flight += 1
                        if self.rate is not None:
                            self._next_slot = max(now, self._next_slot) + 1.0 / self.rate
                        return
                    self._cond.wait(timeout=0.5)
            finally:
                if retry:
                    self._retries_waiting -= 1
                    self._cond.notify_all()

    @contextlib.contextmanager
    def turn(self) -> Iterator[None]:
        """One worker's turn (one page: its call, decoding it, handing it over): waits while
        ``limit`` workers are in theirs."""
        with self._cond:
            while self.active >= self.limit:
                self._cond.wait(timeout=0.5)
            self.active += 1
        try:
            yield
        finally:
            with self._cond:
                self.active -= 1
                self._cond.notify_all()

    def backlog(self, *, behind: bool) -> None:
        """From the consumer of the answers: ``behind`` — answers are waiting for it, so the
        limit loses one (at most every ``BACKLOG_CUT_INTERVAL``, never under one) and does not
        grow; otherwise it is waiting for answers, and healthy ones may grow the limit."""
        with self._cond:
            if not behind:
                self.consumer_waiting = True
                return
            self.consumer_waiting = False
            self.slow_start = False
            now = self._clock()
            if self.limit > 1 and now - self._last_backlog_cut >= BACKLOG_CUT_INTERVAL:
                self._set(self.limit - 1)
                self._last_backlog_cut = now

    def _set(self, limit: int) -> None:
        if limit != self.limit:
            self.limit = limit
            self.history.append((self._clock(), limit))
            self._cond.notify_all()

    def _answered_rate(self, now: float) -> float | None:
        """Calls answered per second over the last second (or since the first answer)."""
        oks = self._oks
        while oks and oks[0] < now - 1.0:
            oks.popleft()
        if self._first_ok is None or not oks:
            return None
        span = min(1.0, now - self._first_ok)
        return len(oks) / span if span > 0.05 else None

    def release(
        self, outcome: str, *, latency: float = 0.0, pause: float = 0.0, told: bool = False
    ) -> None:
        """outcome: "ok", "throttled" (429), or "error" (5xx, reset, timeout).

        ``pause``: after a 429, how long the refused call waits before it is asked again;
        ``told``: that wait is the server's (``Retry-After``), which every call honours."""
        with self._cond:
            self.in_flight -= 1
            now = self._clock()
            if outcome == "throttled":
                self.throttles += 1
                ramping, self.slow_start = self.slow_start, False
                # one cut per pause: several workers refused at once are one signal
                if now >= self._cut_until:
                    self._cut_until = now + pause
                    if self.learn_rate and not ramping:
                        answered = self._answered_rate(now)
                        base = answered if answered is not None else self.rate
                        if base is None:
                            self._set(max(1, self.limit // 2))
                        else:
                            if self.rate is not None:
                                base = min(base, self.rate)
                            self.rate = max(1.0, RATE_CUT * base)
                    else:
                        self._set(max(1, self.limit // 2))
                self._streak = 0
                if self.rate is not None and not told:
                    pause = min(pause, PAUSE_SLOTS / self.rate)
                self.pause_until = max(self.pause_until, now + pause)
            elif outcome == "error":
                self._streak = 0
            else:
                if self.learn_rate:
                    self._oks.append(now)
                    if self._first_ok is None:
                        self._first_ok = now
                    if self.rate is not None:
                        self.rate += RATE_GROWTH / self.rate  # +RATE_GROWTH calls/s a second
                self._fastest = min(self._fastest, latency)
                if latency > 4 * self._fastest + 0.5:
                    # the API is straining: one fewer in flight, at most once a second
                    self._streak = 0
                    self.slow_start = False
                    if self.limit > 1 and now - self._last_slow_cut >= 1.0:
                        self._set(self.limit - 1)
                        self._last_slow_cut = now
                else:
                    self._streak += 1
                    if (
                        self._streak >= (1 if self.slow_start else 2 * self.limit)
                        and self.limit < self.max
                        and self.consumer_waiting
                    ):
                        self._set(self.limit + 1)
                        self._streak = 0
            self._cond.notify_all()
