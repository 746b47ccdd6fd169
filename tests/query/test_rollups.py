"""The duration histogram (migration 0011) and what is read from it: the scale's bound, the
percentiles of `mirror.rollups` and of Datasette's canned queries against exact figures, and
the slowest requests found through it against the plain query.

The canned queries' SQL is run here straight from ``mirror/datasette.yml`` on SQLite (the
same text Datasette runs); `test_datasette.py` runs them through a real Datasette process.
"""

from __future__ import annotations

import sqlite3
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from support import histogram
from support.rows import fill, make_rows, read_all
from support.sim import NOW

from mirror import query, rollups
from mirror.db import reader_engine
from mirror.records import Row, derive_status
from mirror.timeparse import to_text

QUERIES = yaml.safe_load(
    (Path(query.__file__).parent / "datasette.yml").read_text(encoding="utf-8")
)["databases"]["mirror"]["queries"]
LONGEST = 30 * 86400  # the longest duration a sync accepts (mirror.api)


def canned(db: Path, name: str, sql: str | None = None, **params: str) -> list[tuple[Any, ...]]:
    """A canned query's rows, run as Datasette runs it (with its ``escape_fts``)."""
    from datasette.utils import escape_fts

    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        con.create_function("escape_fts", 1, escape_fts)
        return con.execute(sql or QUERIES[name]["sql"], params).fetchall()
    finally:
        con.close()


def within(approx: float | None, exact: float | None) -> bool:
    """The histogram's stated bound: within ALPHA of the exact figure, or 1 µs below 1 µs."""
    if approx is None or exact is None:
        return approx is exact
    return abs(approx - exact) <= histogram.ALPHA * exact + histogram.SMALLEST + 1e-12 * exact


@pytest.fixture(scope="module")
def scale(tmp_path_factory: pytest.TempPathFactory) -> list[tuple[float, int, float]]:
    db = tmp_path_factory.mktemp("scale") / "m.db"
    fill(db, [])
    return [tuple(r) for r in read_all(db, "SELECT lower, bucket, value FROM duration_buckets ORDER BY lower")]  # type: ignore[misc]  # fmt: skip


def test_every_bucket_stands_for_its_durations_within_the_stated_bound(scale):
    lowers = [lo for lo, _, _ in scale]
    assert [b for _, b, _ in scale] == list(range(len(scale))), "buckets are not numbered in order"
    assert scale[0] == (0.0, 0, 0.0) and scale[1][0] == histogram.SMALLEST
    assert lowers[-1] > LONGEST, "the last bucket must start above the longest duration"
    for (lo, k, value), nxt in zip(scale[1:], lowers[2:], strict=False):
        assert lo < value < nxt, f"bucket {k}: value {value} outside [{lo}, {nxt})"
        worst = max((value - lo) / lo, (nxt - value) / nxt)
        assert worst <= histogram.ALPHA + 1e-12, f"bucket {k} is {worst:.4%} off at an edge"


@pytest.mark.parametrize(
    ("counts", "want"),
    [
        ([], [None, None, None, None]),
        ([(3.5, 1)], [3.5, 3.5, 3.5, 3.5]),
        # ranks [1, 1, 2, 4]: p50 between ranks 1 and 2, the others between 2 and 3
        ([(1.0, 2), (2.0, 1), (4.0, 1)], [1.5, 3.4, 3.7, 3.94]),
        # 100 values: p50's ranks 49 and 50 and p99's 98 and 99 fall in two buckets each
        ([(0.0, 50), (10.0, 49), (20.0, 1)], [5.0, 10.0, 10.0, 10.1]),
    ],
    ids=["empty", "one", "interpolated", "across-buckets"],
)
def test_percentiles_of_buckets_is_percentile_cont_over_the_bucket_values(counts, want):
    got = histogram.percentiles_of_buckets(counts)
    assert got == pytest.approx(want, abs=1e-12), f"{counts}: {got}, want {want}"
    expanded = sorted(v for v, n in counts for _ in range(n))
    exact = [query.percentile_cont(expanded, p) for p in rollups.PERCENTILES]
    assert got == pytest.approx(exact, abs=1e-12), "not percentile_cont over the same values"


def test_duration_percentiles_by_status_count_only_rows_with_a_duration(tmp_path):
    """Groups by status: a failure without a duration and an unfinished request count in no
    group; a request updated to a new duration moves to its new bucket (the triggers)."""
    ended = to_text(NOW.replace(hour=10, minute=0, second=0, microsecond=0))
    rows = [
        Row("a", "acme/app", None, ended, ended, ended, 200, 2.0, None, None, None, "success"),
        Row("b", "acme/app", None, ended, ended, ended, 200, 4.0, None, None, None, "success"),
        Row("c", "acme/app", None, ended, ended, ended, 500, 1.0, None, None, None, "error"),
        Row("d", "acme/app", None, ended, ended, ended, 500, None, None, None, None, "error"),
        Row("e", "acme/app", None, ended, None, None, None, None, None, None, None, "unfinished"),
    ]  # fmt: skip
    db = tmp_path / "m.db"
    fill(db, rows)
    con = sqlite3.connect(db)
    con.execute("UPDATE requests SET duration = 8.0 WHERE request_id = 'b'")  # another writer
    con.commit()
    con.close()
    engine = reader_engine(str(db))
    try:
        with engine.connect() as conn:
            got = histogram.duration_percentiles(conn, ("status",))
    finally:
        engine.dispose()
    assert [(g["status"], g["requests"]) for g in got] == [("error", 1), ("success", 2)], got
    error, success = got
    assert within(error["p50"], 1.0) and within(error["max"], 1.0), error
    assert within(success["max"], 8.0) and within(success["p50"], 5.0), success


def rows_with(durations: list[float], *, hour: int = 10, endpoint: str = "acme/app") -> list[Row]:
    out = []
    for i, d in enumerate(durations):
        ended = to_text(NOW.replace(hour=hour, minute=i % 60, second=0, microsecond=0))
        out.append(Row(f"r{hour}-{endpoint}-{i}", endpoint, None, ended, ended, ended, 200, d,
                       None, None, None, derive_status(ended, 200)))  # fmt: skip
    return out


durations = st.lists(
    st.one_of(
        st.floats(min_value=0, max_value=LONGEST),
        st.floats(min_value=0.01, max_value=600),  # where real durations are
        st.sampled_from([0.0, 1e-7, 1e-6, 2.5, 2.5]),  # zero, under a µs, a bucket edge, ties
    ),
    min_size=1,
    max_size=200,
)


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(first=durations, second=durations)
def test_histogram_percentiles_are_within_the_bound_of_the_exact_ones(
    tmp_path_factory, first, second
):
    """Two hours of two endpoints written through the real write path: per hour, and merged
    over both hours and endpoints (the sketch's point), the histogram's percentiles and max
    are within ALPHA of `mirror stats`' exact figures, and the canned query's equal
    `histogram.duration_percentiles` exactly."""
    db = tmp_path_factory.mktemp("p") / "m.db"
    fill(db, rows_with(first, hour=10) + rows_with(second, hour=11, endpoint="acme/app/turbo"))
    engine = reader_engine(str(db))
    try:
        with engine.connect() as conn:
            for by in (("hour",), ()):
                approx = histogram.duration_percentiles(conn, by)
                exact = query.stats(conn, query.Filters(min_duration=0), by=by)
                assert [a.get("hour") for a in approx] == [e.get("hour") for e in exact]
                for a, e in zip(approx, exact, strict=True):
                    assert a["requests"] == e["requests"], (a, e)
                    for f in ("p50", "p90", "p95", "p99", "max"):
                        assert within(a[f], e[f]), f"{by} {f}: {a[f]} vs exact {e[f]}"
            per_hour = histogram.duration_percentiles(conn, ("hour",))
    finally:
        engine.dispose()
    got = canned(db, "latency_percentiles_per_hour", since="", endpoint="acme/app")
    fields = ("hour", "requests", "p50", "p90", "p95", "p99", "max")
    assert got == [tuple(p[f] for f in fields) for p in reversed(per_hour)]


def test_percentiles_by_endpoint_and_day_on_both_backends(db_url):
    """The histogram's reading from Python, on SQLite and PostgreSQL alike: per endpoint and
    day, app routes kept apart, within the bound of the exact figures; a range in hours."""
    from mirror.store import Store

    store = Store.open(db_url)
    try:
        rows = make_rows(600, seed=3)
        with store.engine.begin() as conn:
            store.upsert(conn, rows, payloads=True, billing=True, now=to_text(NOW))
        since = (NOW - timedelta(days=2)).replace(minute=0, second=0, microsecond=0)
        with store.engine.connect() as conn:
            ids = query.resolve_endpoints(conn, ["acme/flux-lora"])
            approx = histogram.duration_percentiles(
                conn, ("endpoint", "day"), endpoint_ids=ids, since=since
            )
            exact = query.stats(
                conn,
                query.Filters(endpoints=("acme/flux-lora",), since=since, min_duration=0),
                by=("endpoint", "day"),
            )
    finally:
        store.close()
    assert {a["endpoint"] for a in approx} == {"acme/flux-lora", "acme/flux-lora/edit"}
    assert [(a["endpoint"], a["day"], a["requests"]) for a in approx] == [
        (e["endpoint"], e["day"], e["requests"]) for e in exact
    ]
    for a, e in zip(approx, exact, strict=True):
        for f in ("p50", "p95", "p99", "max"):
            assert within(a[f], e[f]), f"{a['endpoint']} {a['day']} {f}: {a[f]} vs {e[f]}"


# --------------------------------------------------------------------------- slowest


@pytest.fixture(scope="module")
def mirror_2k(tmp_path_factory: pytest.TempPathFactory) -> Path:
    db = tmp_path_factory.mktemp("slow") / "m.db"
    fill(db, make_rows(2000, seed=8))
    return db


EXACT_SLOWEST = """
    SELECT request_id, endpoint_id, status, duration_s, queued_s, ended_at, prompt
    FROM request_log
    WHERE duration_s IS NOT NULL AND ended_at >= :since
      AND (:endpoint = '' OR endpoint_id = :endpoint
           OR (endpoint_id >= :endpoint || '/' AND endpoint_id < :endpoint || '0'))
    ORDER BY duration_s DESC, request_id DESC LIMIT 50
"""
SINCE = [
    "",  # the default: all of history
    to_text(NOW - timedelta(days=2))[:10],  # a date
    to_text(NOW - timedelta(hours=30))[:16],  # mid-way through an hour
    to_text(NOW - timedelta(hours=1))[:13],  # the last hour or so: fewer than 50 there
    to_text(NOW + timedelta(days=1))[:10],  # the future: nothing
]


@pytest.mark.parametrize("branch", ["few", "many"])
@pytest.mark.parametrize(
    "endpoint", ["", "acme/flux-lora", "acme/flux-lora/edit", "beta/sd_xl", "nobody/else"]
)
@pytest.mark.parametrize("since", SINCE)
def test_slowest_requests_are_exactly_the_plain_querys(mirror_2k, since, endpoint, branch):
    """The canned query reads everything when few durations are in range, and otherwise
    only where the histogram's top buckets point; both must give the plain query's rows
    (ties in duration broken by request_id). On this small mirror the threshold between the
    two (20,000 durations) is moved to force each."""
    sql = QUERIES["slowest_requests"]["sql"]
    assert sql.count("20000") == 3, "the threshold this test moves is not where it was"
    sql = sql.replace("20000", "1000000000" if branch == "few" else "0")
    got = canned(mirror_2k, "slowest_requests", sql, since=since, endpoint=endpoint)
    want = canned(mirror_2k, "exact", EXACT_SLOWEST, since=since, endpoint=endpoint)
    assert got == want, f"since={since!r} endpoint={endpoint!r}: {len(got)} rows vs {len(want)}"
    assert want or since > to_text(NOW)[:10] or endpoint == "nobody/else"


def test_failed_requests_and_prompt_failures_are_the_plain_querys(mirror_2k):
    """Both pick their 1,000 rows from the index before making them readable; the answer is
    the plain query's, ties in time broken by request_id, and past the 1,000th row too."""
    plain = """
        SELECT request_id FROM request_log WHERE status IN ('error', 'user_error') {extra}
        ORDER BY ended_at DESC, request_id DESC LIMIT {n}
    """
    for n in (1000, 5):  # 5: a limit that falls inside a run of rows that ended together
        got = canned(mirror_2k, "failed_requests",
                     QUERIES["failed_requests"]["sql"].replace("1000", str(n)).replace("999", str(n - 1)),
                     since="2000-01-01", until="2100-01-01", endpoint="")  # fmt: skip
        want = read_all(mirror_2k, plain.format(extra="", n=n))
        assert [r[0] for r in got] == [w[0] for w in want] and want, f"failed requests, limit {n}"
    got = canned(mirror_2k, "prompt_failures", words="lighthouse dusk")
    want = read_all(mirror_2k, plain.format(n=1000, extra="AND rowid IN (SELECT rowid FROM "
                    "requests_fts WHERE requests_fts MATCH '\"lighthouse\" \"dusk\"')"))  # fmt: skip
    assert [r[0] for r in got] == [w[0] for w in want] and want
    for blank in ("", "   ", '""', ' "" \t'):
        assert canned(mirror_2k, "prompt_failures", words=blank) == [], f"words={blank!r}"
