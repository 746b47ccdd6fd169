"""The live line's figures: rates over time, windows done of planned, and an estimate that
says when the plan has grown rather than seeming to jump back."""

from __future__ import annotations

import io
from datetime import UTC, datetime

import pytest

from mirror.progress import LiveLine, duration
from mirror.sync import SyncReport


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def report(done: int, planned: int, calls: int, stored: int) -> SyncReport:
    r = SyncReport(run_id=1, targets=["a/b"], started_at=datetime(2026, 11, 28, tzinfo=UTC))
    r.windows.done, r.windows.planned, r.api_calls, r.inserted = done, planned, calls, stored
    return r


def test_the_figures_follow_the_run_and_a_grown_plan_is_marked():
    clock = Clock()
    line = LiveLine(io.StringIO(), clock=clock)
    texts = []
    for at, (done, planned, calls, stored) in [
        (0, (0, 10, 0, 0)),  # the line appears: nothing done yet, no estimate
        (10, (2, 10, 50, 300)),  # 2 windows in 10 s: 8 left take 40 s
        (20, (4, 14, 100, 1234)),  # 4 windows split off: 10 left at 0.2/s, and it may grow
        (40, (14, 14, 300, 5000)),  # all done
    ]:
        clock.now = 1000.0 + at
        texts.append(line.text(report(done, planned, calls, stored)))
    assert texts == [
        "mirror sync: 0 requests stored, 0.0 calls/s, windows 0/10, ETA ? ",
        "mirror sync: 300 requests stored, 5.0 calls/s, windows 2/10, ETA 40s ",
        "mirror sync: 1,234 requests stored, 5.0 calls/s, windows 4/14 (+4), ETA 50s+ ",
        # calls/s over the last ten seconds or so: 200 calls in the 20 s since the last
        # sample at least ten seconds old
        "mirror sync: 5,000 requests stored, 10.0 calls/s, windows 14/14 (+4), ETA 0s+ ",
    ]


def test_the_line_is_drawn_on_its_stream_and_wiped_at_the_end(monkeypatch):
    monkeypatch.setenv("COLUMNS", "120")  # a stream that is no terminal: its width from here
    # (a StringIO has no encoding: tqdm draws its bar in ASCII)
    stream = io.StringIO()
    clock = Clock()
    with LiveLine(stream, clock=clock) as line:
        line(report(3, 10, 30, 700))
        drawn = stream.getvalue()
    assert (
        drawn
        == "\rmirror sync: 700 requests stored, 0.0 calls/s, windows 3/10, ETA ? |###6        |"
    )
    wipe = stream.getvalue()[len(drawn) :]
    assert wipe == "\r" + " " * (len(drawn) - 1) + "\r", f"the line was not wiped: {wipe!r}"


@pytest.mark.parametrize(
    ("seconds", "shown"),
    [(0.4, "0s"), (45, "45s"), (130, "2m10s"), (3599, "59m59s"), (3600 * 3 + 310, "3h05m")],
)
def test_durations_read_as_people_read_them(seconds, shown):
    assert duration(seconds) == shown
