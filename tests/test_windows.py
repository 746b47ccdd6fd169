import itertools
from datetime import UTC, datetime, timedelta

from hypothesis import given
from hypothesis import strategies as st

from mirror.windows import Window, pack, plan, split, subtract

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
    for a, b in itertools.pairwise(pieces):
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


def test_a_sparse_tail_is_one_window():
    """Nothing known and shorter than the size: one call, wherever the range falls."""
    a = plan(
        T0 + timedelta(minutes=7),
        T0 + timedelta(hours=2, minutes=7),
        [],
        recheck_from=None,
        size=timedelta(days=1),
    )
    assert [(w.start, w.end) for w in a] == [
        (T0 + timedelta(minutes=7), T0 + timedelta(hours=2, minutes=7))
    ]


def test_long_ranges_are_cut_into_equal_windows():
    a = plan(T0, T0 + timedelta(hours=60), [], recheck_from=None, size=timedelta(days=1))
    assert [(w.start, w.end) for w in a] == [
        (T0, T0 + timedelta(hours=20)),
        (T0 + timedelta(hours=20), T0 + timedelta(hours=40)),
        (T0 + timedelta(hours=40), T0 + timedelta(hours=60)),
    ]


@given(
    length_h=st.integers(min_value=1, max_value=72),
    offset_s=st.integers(min_value=0, max_value=3599),
    counts=st.lists(st.integers(min_value=0, max_value=9000), min_size=74, max_size=74),
    target=st.sampled_from([500, 2000]),
)
def test_pack_partitions_the_window_by_density(length_h, offset_s, counts, target):
    w = Window(T0 + timedelta(seconds=offset_s), T0 + timedelta(hours=length_h, seconds=offset_s))
    hourly = {T0 + timedelta(hours=i): n for i, n in enumerate(counts)}
    pieces = pack(w, hourly, target_rows=target, max_len=timedelta(days=1))
    assert pieces[0].start == w.start and pieces[-1].end == w.end, "pack lost an edge"
    for a, b in itertools.pairwise(pieces):
        assert a.end == b.start, "pack left a gap or overlap"

    def estimate(p):
        total = 0.0
        t = p.start
        while t < p.end:
            h = T0 + timedelta(hours=int((t - T0).total_seconds() // 3600))
            nxt = min(p.end, h + timedelta(hours=1))
            total += hourly.get(h, 0) * ((nxt - t) / timedelta(hours=1))
            t = nxt
        return total

    for p in pieces:
        # a piece over the target is a single-second split of a very dense hour, or rounding
        assert estimate(p) <= target * 1.01 + 1 or p.length <= timedelta(seconds=1), (
            f"{p} holds ~{estimate(p):.0f} rows"
        )
    if sum(estimate(p) for p in pieces) <= target:
        assert pieces == [w], "a sparse window was cut"
