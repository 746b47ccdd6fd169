"""How many API calls may be in flight: additive increase, multiplicative decrease.

Worker threads call ``acquire()`` before every HTTP attempt and ``release()`` after it with
what happened. A 429 halves the limit and pauses *every* worker until the backoff (or the
server's ``Retry-After``) has passed, so one refusal is not followed by a burst of retries
that are refused too; a run of healthy answers raises the limit by one, up to the user's
``--max-concurrency``. A slow answer (over four times the fastest seen, plus half a second)
takes one off the limit, at most once a second.

Threads rather than asyncio: the client is a plain ``httpx.Client`` passed in, the writer is
SQLite in one thread, and the parallelism needed is a handful of calls waiting on latency;
threads keep every module synchronous and testable with ``MockTransport``.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable


class Pacer:
    def __init__(
        self,
        max_concurrency: int,
        *,
        initial: int | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if max_concurrency < 1:
            raise ValueError("max_concurrency must be at least 1")
        self.max = max_concurrency
        self.limit = min(initial or max_concurrency, max_concurrency)
        self.in_flight = 0
        self.pause_until = 0.0
        self._streak = 0
        self._fastest = float("inf")
        self._last_slow_cut = float("-inf")
        self._clock = clock
        self._cond = threading.Condition()
        #: (time, limit) each time the limit changed, for tests and -v logs
        self.history: list[tuple[float, int]] = [(clock(), self.limit)]
        self.throttles = 0

    def acquire(self) -> None:
        with self._cond:
            while True:
                wait = self.pause_until - self._clock()
                if wait > 0:
                    self._cond.wait(timeout=wait)
                    continue
                if self.in_flight < self.limit:
                    self.in_flight += 1
                    return
                self._cond.wait(timeout=0.5)

    def _set(self, limit: int) -> None:
        if limit != self.limit:
            self.limit = limit
            self.history.append((self._clock(), limit))

    def release(self, outcome: str, *, latency: float = 0.0, pause: float = 0.0) -> None:
        """outcome: "ok", "throttled" (429), or "error" (5xx, reset, timeout)."""
        with self._cond:
            self.in_flight -= 1
            now = self._clock()
            if outcome == "throttled":
                self.throttles += 1
                # one halving per pause: several workers refused at once are one signal
                if now >= self.pause_until:
                    self._set(max(1, self.limit // 2))
                self._streak = 0
                self.pause_until = max(self.pause_until, now + pause)
            elif outcome == "error":
                self._streak = 0
            else:
                self._fastest = min(self._fastest, latency)
                if latency > 4 * self._fastest + 0.5:
                    # the API is straining: one fewer in flight, at most once a second
                    self._streak = 0
                    if self.limit > 1 and now - self._last_slow_cut >= 1.0:
                        self._set(self.limit - 1)
                        self._last_slow_cut = now
                else:
                    self._streak += 1
                    if self._streak >= 2 * self.limit and self.limit < self.max:
                        self._set(self.limit + 1)
                        self._streak = 0
            self._cond.notify_all()
