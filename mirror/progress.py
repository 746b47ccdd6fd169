"""The live line of a `mirror sync` on a terminal: how far it is and when it should be done.

    mirror sync: 12,345 requests stored, 8.2 calls/s, windows 40/120 (+16), ETA 2m10s+ |███▍  |

- requests stored: new and changed rows written so far this run;
- calls/s: API calls (retries included) a second, over the last ten seconds;
- windows done of planned; ``(+N)``: windows planned after the line appeared, as dense
  windows split (or, on PostgreSQL, as targets are taken one after another);
- ETA: the planned windows left at the rate windows have been done since the line appeared.
  A ``+`` after it: the plan has grown during the run and may grow again, so the estimate
  is for what is planned so far: it can go up, and says so rather than seeming to jump back.

tqdm draws it (fitting the terminal's width, rewriting it in place, clearing it at the end);
`LiveLine` also routes the ``mirror`` loggers' lines through tqdm while it is open, so ``-v``
log lines are printed whole above the line instead of through it. The CLI opens one only
when stderr is a terminal and ``-q`` was not given: under cron nothing of it is written.
"""

from __future__ import annotations

import logging
import os
import shutil
import threading
import time
from collections import deque
from collections.abc import Callable
from contextlib import AbstractContextManager
from types import TracebackType
from typing import TextIO

from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from mirror.sync import SyncReport

#: seconds of API calls the calls/s figure is taken over
RATE_SPAN = 10.0
#: seconds between redraws at most: often enough to look alive, rarely enough to cost nothing
REDRAW = 0.25


class _Bar(tqdm):  # type: ignore[type-arg]
    #: no monitor thread: the line is redrawn as the run reports, which is often enough
    monitor_interval = 0


def duration(seconds: float) -> str:
    """``seconds`` as people read a time left: 45s, 2m10s, 3h05m."""
    s = max(0, round(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


class LiveLine(AbstractContextManager["LiveLine"]):
    """A `mirror.sync.ProgressListener` that draws the live line on ``stream``."""

    def __init__(self, stream: TextIO, *, clock: Callable[[], float] = time.monotonic) -> None:
        self._stream = stream
        self._clock = clock
        self._bar: _Bar | None = None
        self._redirect: AbstractContextManager[None] | None = None
        self._calls: deque[tuple[float, int]] = deque()
        #: when the line appeared (None: not yet), and the windows done and planned then
        self._t0: float | None = None
        self._done0 = 0
        self._planned0 = 0

    def __enter__(self) -> LiveLine:
        # a thread lock: tqdm's default also makes a multiprocessing one, for nothing here
        _Bar.set_lock(threading.RLock())
        self._redirect = logging_redirect_tqdm([logging.getLogger("mirror")], tqdm_class=_Bar)
        self._redirect.__enter__()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._bar is not None:
            self._bar.close()  # leave=False: the line is wiped, the summary follows
            self._bar = None
        if self._redirect is not None:
            self._redirect.__exit__(exc_type, exc, tb)
            self._redirect = None

    def __call__(self, report: SyncReport) -> None:
        text = self.text(report)
        columns, lines = self.size()
        if self._bar is None:
            self._bar = _Bar(
                file=self._stream,
                desc=text,
                total=report.windows.planned,
                initial=report.windows.done,
                bar_format="{desc}|{bar:12}|",
                leave=False,
                mininterval=REDRAW,
                ncols=columns,
                nrows=lines,
            )
            return
        self._bar.ncols, self._bar.nrows = columns, lines
        self._bar.total = max(report.windows.planned, report.windows.done)
        self._bar.set_description_str(text, refresh=False)
        self._bar.update(report.windows.done - self._bar.n)

    def size(self) -> os.terminal_size:
        """The terminal's size now (it may be resized); what it does not say (a terminal of
        no size, as some containers give) from ``COLUMNS``/``LINES`` or 80x24. tqdm draws
        nothing on a terminal of no rows."""
        try:
            size = os.get_terminal_size(self._stream.fileno())
        except (OSError, ValueError, AttributeError):
            size = os.terminal_size((0, 0))
        fallback = shutil.get_terminal_size()
        return os.terminal_size((size.columns or fallback.columns, size.lines or fallback.lines))

    def text(self, report: SyncReport) -> str:
        """The line's words for ``report``, now; the first report is the baseline of the
        rates and of what "planned" grew from."""
        now = self._clock()
        if self._t0 is None:
            self._t0, self._done0, self._planned0 = now, report.windows.done, report.windows.planned
        calls = self._calls
        calls.append((now, report.api_calls))
        while len(calls) > 2 and now - calls[1][0] >= RATE_SPAN:
            calls.popleft()
        span = now - calls[0][0]
        rate = (report.api_calls - calls[0][1]) / span if span > 0 else 0.0
        done, planned = report.windows.done, max(report.windows.planned, report.windows.done)
        grown = planned - self._planned0
        windows = f"windows {done:,}/{planned:,}" + (f" (+{grown:,})" if grown > 0 else "")
        return (
            f"mirror sync: {report.inserted + report.updated:,} requests stored, "
            f"{rate:.1f} calls/s, {windows}, ETA {self._eta(done, planned, now)} "
        )

    def _eta(self, done: int, planned: int, now: float) -> str:
        t0 = self._t0 if self._t0 is not None else now
        rate = (done - self._done0) / (now - t0) if now > t0 else 0.0
        if done >= planned:
            left = "0s"
        elif rate > 0:
            left = duration((planned - done) / rate)
        else:
            return "?"
        return left + ("+" if planned > self._planned0 else "")
