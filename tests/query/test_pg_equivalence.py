"""SQLite and PostgreSQL give the same `query` and `stats` answers for the same rows.

Hypothesis makes the rows (endpoints with app ids and routes, every status and a range of
status codes, nullable durations and billable units including floats that round awkwardly
to millionths, timestamps with microseconds on both sides of hour and day boundaries, JSON
payloads of lowercase words), loads them into a SQLite store and a PostgreSQL store through
`Store.upsert`, then asks both the same random questions: filters (endpoints, since/until,
statuses, status codes, durations, search words from the payloads' vocabulary, time field)
and `--by` groupings. Listings must be equal row for row (payloads compared as JSON values:
``jsonb`` keeps the value, not the spacing or key order); stats must be equal to the bit,
percentiles included (both follow PostgreSQL's ``percentile_cont``).

One PostgreSQL database serves every example: its tables are truncated in between.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import sqlalchemy as sa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mirror import query
from mirror.db import reader_engine
from mirror.records import Row, derive_status
from mirror.schema import STATUSES
from mirror.store import Store
from mirror.timeparse import to_text

ENDPOINTS = (
    "acme/app",
    "acme/app/edit",
    "acme/app/edit/v2",
    "acme/app-xl",  # shares a prefix with the app id, not one of its routes
    "beta/sd_xl",
    "beta/sdaxl",
)
APP_IDS = ("acme", "acme/app", "beta/sd", "nobody/else")
VOCAB = ("alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel")
CODES = (200, 201, 302, 400, 404, 422, 500, 503)
#: floats that are awkward in binary or at the half-millionth the unit sums round at
AWKWARD = (0.0, 0.1, 0.2, 0.30000000000000004, 1 / 3, 2.675, 1e-7, 2.5e-7, 5e-7, 1.5e-6,
           1.0000005, 12.3456785, 999999.9999995)  # fmt: skip
#: 22:00 the day before: hours and a day boundary (midnight) inside the range
T0 = datetime(2026, 11, 27, 22, 0, tzinfo=UTC)
NOW = to_text(datetime(2026, 11, 29, tzinfo=UTC))


def instants() -> st.SearchStrategy[datetime]:
    """Times over 28 hours, often right at, just after or just before an hour's edge."""
    edge = st.sampled_from([0, 1, 999_999, 3_599_999_999, 1_800_000_000])
    anywhere = st.integers(0, 3_599_999_999)
    return st.builds(
        lambda h, us: T0 + timedelta(hours=h, microseconds=us),
        st.integers(0, 27),
        edge | anywhere,
    )


numbers = st.sampled_from(AWKWARD) | st.floats(0, 1e5, allow_nan=False, allow_infinity=False)
payload = st.none() | st.lists(st.sampled_from(VOCAB), min_size=1, max_size=4).map(" ".join)


@st.composite
def a_row(draw: st.DrawFn, i: int) -> Row:
    sent = draw(instants())
    started = ended = None
    if draw(st.integers(0, 5)) > 0:  # mostly started, and then mostly finished
        started = sent + timedelta(microseconds=draw(st.integers(0, 5_000_000)))
        if draw(st.integers(0, 3)) > 0:
            # its own instant (hour edges included), never before the start
            ended = max(started, draw(instants()))
    code = draw(st.none() | st.sampled_from(CODES))
    prompt, text = draw(payload), draw(payload)
    row = (
        f"req-{draw(st.integers(0, 99)):02d}-{i:03d}",  # ids that tie-break in a mixed order
        draw(st.sampled_from(ENDPOINTS)),
        draw(st.none() | st.just("runner-1")),
        to_text(sent),
        to_text(started) if started else None,
        to_text(ended) if ended else None,
        code,
        draw(st.none() | numbers),
        draw(st.none() | numbers),
        None if prompt is None else json.dumps({"prompt": prompt, "seed": i}),
        None
        if text is None
        else json.dumps({"images": [{"url": f"https://x/{i}.png"}], "text": text}),
    )
    return Row(*row, derive_status(row[5], row[6]))


@st.composite
def rows(draw: st.DrawFn) -> list[Row]:
    n = draw(st.integers(0, 30))
    return [draw(a_row(i)) for i in range(n)]


@st.composite
def filters(draw: st.DrawFn) -> query.Filters:
    since, until = draw(st.none() | instants()), draw(st.none() | instants())
    if since and until and until <= since:
        since, until = until, since + timedelta(microseconds=1)
    lo, hi = draw(st.none() | numbers), draw(st.none() | numbers)
    if lo is not None and hi is not None and hi < lo:
        lo, hi = hi, lo
    words = draw(st.lists(st.sampled_from(VOCAB), max_size=2))
    return query.Filters(
        endpoints=draw(st.lists(st.sampled_from(ENDPOINTS + APP_IDS), max_size=2)),
        statuses=draw(st.lists(st.sampled_from(STATUSES), max_size=2)),
        status_codes=draw(st.lists(st.sampled_from(CODES), max_size=2)),
        since=since,
        until=until,
        time_field=draw(st.sampled_from(query.TIME_FIELDS)),
        min_duration=lo,
        max_duration=hi,
        search=" ".join(words) if words else None,
    )


groupings = st.sampled_from(
    [[], ["endpoint"], ["status"], ["hour"], ["day"], ["endpoint", "day"], ["day", "endpoint"],
     ["endpoint", "status", "hour"], ["status", "endpoint"], ["hour", "status"], ["history"],
     ["endpoint", "history", "day"]]
)  # fmt: skip
questions = st.lists(
    st.tuples(filters(), groupings, st.sampled_from(query.SORTS), st.booleans(),
              st.none() | st.integers(0, 20), st.integers(0, 5)),
    min_size=1, max_size=3,
)  # fmt: skip


class Backends:
    """A SQLite store and a PostgreSQL store, emptied and refilled for each example."""

    def __init__(self, sqlite_path: str, pg_url: str) -> None:
        self.stores = {"sqlite": Store.open(sqlite_path), "postgresql": Store.open(pg_url)}
        self.readers = {
            "sqlite": reader_engine(sqlite_path),
            "postgresql": reader_engine(pg_url),
        }

    def load(self, data: list[tuple[Any, ...]]) -> None:
        sqlite, pg = self.stores["sqlite"], self.stores["postgresql"]
        with sqlite.engine.begin() as conn:
            conn.exec_driver_sql("DELETE FROM requests")  # the triggers empty FTS and summary
            sqlite.upsert(conn, data, payloads=True, billing=True, now=NOW)
        with pg.engine.begin() as conn:
            # row triggers do not see TRUNCATE: the summary is emptied with it
            conn.exec_driver_sql("TRUNCATE requests, summary_hourly")
            pg.upsert(conn, data, payloads=True, billing=True, now=NOW)

    def close(self) -> None:
        for s in self.stores.values():
            s.close()
        for e in self.readers.values():
            e.dispose()


@pytest.fixture
def backends(tmp_path, pg_url):
    b = Backends(str(tmp_path / "m.db"), pg_url)
    yield b
    b.close()


def _decoded(row: tuple[Any, ...], cols: list[str]) -> tuple[Any, ...]:
    return tuple(
        json.loads(v) if c in query.PAYLOAD_COLUMNS and v is not None else v
        for c, v in zip(cols, row, strict=True)
    )


def _first_difference(a: list[Any], b: list[Any]) -> str:
    for i, (x, y) in enumerate(zip(a, b, strict=False)):
        if x != y:
            if isinstance(x, dict):
                fields = [k for k in x if x.get(k) != y.get(k)]
                return f"row {i} differs in {fields}: sqlite {x} / postgresql {y}"
            return f"row {i}: sqlite {x} / postgresql {y}"
    return f"sqlite gave {len(a)} rows, postgresql {len(b)}"


@settings(
    max_examples=100, deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                           HealthCheck.data_too_large],
)  # fmt: skip
@given(data=rows(), asked=questions)
def test_query_and_stats_are_equal_on_sqlite_and_postgresql(backends, data, asked):
    backends.load(data)
    cols = list(query.COLUMNS)
    answers: dict[str, list[Any]] = {}
    for name, engine in backends.readers.items():
        with engine.connect() as conn:
            out: list[Any] = []
            for f, by, sort, desc, limit, offset in asked:
                listing = query.select_requests(
                    conn, f, columns=cols, sort=sort, descending=desc, limit=limit, offset=offset
                )
                out.append([_decoded(r, cols) for r in listing])
                out.append(query.stats(conn, f, by=by))
            conn.rollback()
        answers[name] = out
    for i, (a, b) in enumerate(zip(answers["sqlite"], answers["postgresql"], strict=True)):
        f, by, sort, desc, limit, offset = asked[i // 2]
        what = (
            f"stats --by {','.join(by) or '(none)'}"
            if i % 2
            else f"query sort={sort} desc={desc} limit={limit} offset={offset}"
        )
        assert a == b, f"{what} with {f} over {len(data)} rows: {_first_difference(a, b)}"


def test_the_generator_makes_the_awkward_cases():
    """Guards the strategies: without these cases the property above proves little."""
    from hypothesis import find

    quick = settings(max_examples=2000, database=None)
    find(
        instants(),
        lambda t: (t.hour, t.minute, t.second, t.microsecond) == (0, 0, 0, 0),
        settings=quick,
    )
    find(
        instants(),
        lambda t: (t.minute, t.second, t.microsecond) == (59, 59, 999_999),
        settings=quick,
    )
    find(numbers, lambda x: x == 5e-7, settings=quick)
    find(a_row(0), lambda r: r[1] == "acme/app/edit/v2" and r[11] == "user_error", settings=quick)
    find(a_row(0), lambda r: r[11] == "unfinished" and r[5] is not None, settings=quick)
    find(rows(), lambda rs: len({r[3] for r in rs}) < len(rs), settings=quick)  # tied times


# --------------------------------------------------------------------------- percentiles


@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])  # fmt: skip
@given(
    values=st.lists(
        st.floats(allow_nan=False, allow_infinity=False, min_value=-1e300, max_value=1e300)
        | st.sampled_from(AWKWARD),
        min_size=1, max_size=40,
    ),
)  # fmt: skip
def test_percentiles_are_bit_identical_to_percentile_cont(pg_admin, values):
    engine = _admin_engine(pg_admin)
    with engine.connect() as conn:
        (want,) = conn.execute(
            sa.text(
                "SELECT percentile_cont(ARRAY[0, 0.01, 0.5, 0.9, 0.95, 0.99, 1]::float8[]) "
                "WITHIN GROUP (ORDER BY v) FROM unnest(CAST(:vs AS float8[])) AS v"
            ),
            {"vs": values},
        ).one()
    ordered = sorted(values)
    got = [query.percentile_cont(ordered, p) for p in (0, 1, 50, 90, 95, 99, 100)]
    # + 0.0 makes -0.0 a 0.0: the two are equal, so which of them a sort puts first, and
    # so the sign of a zero answer, is up to each side's sort, stable or not
    assert [(v + 0.0).hex() for v in got] == [(v + 0.0).hex() for v in want], f"values {values}"


_ENGINES: dict[str, sa.Engine] = {}


def _admin_engine(url: str) -> sa.Engine:
    if url not in _ENGINES:
        _ENGINES[url] = sa.create_engine(url, poolclass=sa.pool.StaticPool)
    return _ENGINES[url]
