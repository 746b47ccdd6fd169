"""How far this machine's clock is from the API's, measured from the ``Date`` of its answers.

A sync decides what is complete by time: a window is complete once every request that
ended inside it has been listed. Judged by a local clock that runs ahead, a window reaching
into the API's future would be marked complete before its requests exist; judged by one
that runs behind, each run stops short of the API's present. So windows are bounded by the
API's own clock (``Page.server_time``), and the skew measured here is recorded per run
(``sync_runs.clock_skew``), shown, and used by the next run to reach the API's present.
"""

from __future__ import annotations

import math
import threading
from datetime import datetime

#: a skew beyond this many seconds is worth telling the user about
NOTABLE_SKEW = 5.0


class SkewEstimate:
    """This machine's clock minus the API's, in seconds, narrowed by every answer.

    An answer stamped ``date`` (the API's clock, truncated to the second) was produced at
    some local instant between the call's ``sent`` and ``received``, so the skew lies in
    ``(sent - date - 1, received - date]``. The estimate is the middle of the intersection
    of those intervals; if they do not intersect (this clock was stepped during the run),
    the latest answer's interval alone.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._lo = -math.inf
        self._hi = math.inf
        self._last: tuple[float, float] | None = None

    def add(self, sent: datetime, received: datetime, date: datetime) -> None:
        lo = (sent - date).total_seconds() - 1.0
        hi = (received - date).total_seconds()
        with self._lock:
            self._lo = max(self._lo, lo)
            self._hi = min(self._hi, hi)
            self._last = (lo, hi)

    def seconds(self) -> float | None:
        """The estimate, or None if no answer carried a date."""
        with self._lock:
            if self._last is None:
                return None
            lo, hi = (self._lo, self._hi) if self._lo <= self._hi else self._last
        return (lo + hi) / 2


def describe(skew: float) -> str:
    """``3h 0m ahead of`` / ``10m 5s behind`` / ``4s ahead of``: for messages."""
    s = round(abs(skew))
    h, rest = divmod(s, 3600)
    m, sec = divmod(rest, 60)
    text = f"{h}h {m}m" if h else (f"{m}m {sec}s" if m else f"{sec}s")
    return f"{text} {'ahead of' if skew > 0 else 'behind'}"
