from datetime import UTC, datetime, timedelta

from hypothesis import given
from hypothesis import strategies as st

from mirror.windows import Window, plan, split, subtract

T0 = datetime(2026, 11, 20, tzinfo=UTC)
secs = st.integers(min_value=0, max_value=10 * 86400)


def covered_seconds(intervals):
    out = set()
    for a, b in intervals:
        out.update(range(int((a - T0).total_seconds()), int((b - T0).total_seconds())))
    return out


@given(
    start=secs,
    length=st.integers(min_value=1, max_value=3 * 86400),
    done=st.lists(st.tuples(secs, st.integers(min_value=1, max_value=86400)), max_size=6),
    lookback=st.integers(min_value=0, max_value=86400),
    size=st.sampled_from([60, 3600, 6 * 3600, 86400]),
)
def test_plan_covers_exactly_what_is_not_trusted(start, length, done, lookback, size):
    """Windows + trusted completed intervals cover [start, end) with no gap and no overlap."""
    s, e = T0 + timedelta(seconds=start), T0 + timedelta(seconds=start + length)
    completed = [(T0 + timedelta(seconds=a), T0 + timedelta(seconds=a + n)) for a, n in done]
    recheck = max((b for _, b in completed), default=None)
    recheck = recheck - timedelta(seconds=lookback) if recheck else None
    windows = plan(s, e, completed, recheck_from=recheck, size=timedelta(seconds=size))
    walked = [(w.start, w.end) for w in windows]
    trusted = [(a, min(b, recheck) if recheck else b) for a, b in completed]
    want = covered_seconds([(s, e)])
    got_walked = covered_seconds(walked)
    assert sum(int(w.length.total_seconds()) for w in windows) == len(got_walked), "windows overlap"
    assert got_walked <= want, "a window lies outside the requested range"
    assert want - covered_seconds(trusted) == got_walked, (
        "planned windows != range minus trusted state"
    )
    assert windows == sorted(windows), "windows are not oldest first"
    for w in windows:
        assert w.length <= timedelta(seconds=size), f"{w} is longer than the window size"


@given(
    length=st.integers(min_value=1, max_value=86400), parts=st.integers(min_value=1, max_value=100)
)
def test_split_partitions_on_whole_seconds(length, parts):
    w = Window(T0, T0 + timedelta(seconds=length))
    pieces = split(w, parts)
    assert pieces[0].start == w.start and pieces[-1].end == w.end
    for a, b in zip(pieces, pieces[1:], strict=False):
        assert a.end == b.start, "split left a gap or overlap"
    assert len(pieces) == min(parts, length)
    assert all(p.start.microsecond == 0 and p.end.microsecond == 0 for p in pieces)


def test_subtract_gaps():
    h = timedelta(hours=1)
    assert subtract(T0, T0 + 5 * h, [(T0 + h, T0 + 2 * h), (T0 + 3 * h, T0 + 4 * h)]) == [
        (T0, T0 + h),
        (T0 + 2 * h, T0 + 3 * h),
        (T0 + 4 * h, T0 + 5 * h),
    ]


def test_same_range_gives_same_windows_every_run():
    """Windows are aligned to the size, so reruns re-walk identical windows."""
    a = plan(
        T0 + timedelta(minutes=7),
        T0 + timedelta(hours=13),
        [],
        recheck_from=None,
        size=timedelta(hours=6),
    )
    assert [(w.start, w.end) for w in a] == [
        (T0 + timedelta(minutes=7), T0 + timedelta(hours=6)),
        (T0 + timedelta(hours=6), T0 + timedelta(hours=12)),
        (T0 + timedelta(hours=12), T0 + timedelta(hours=13)),
    ]
