"""For many filter combinations, `query` and `stats` equal an independent reference.

The reference for listings is plain SQL over ``requests`` written here, differently from the
query layer (app ids matched by ``substr``, nulls placed by ``IS NULL``), and run through the
plain ``sqlite3`` module. The reference for stats filters and groups in Python, and
interpolates percentiles itself on the continuous definition (PostgreSQL's
``percentile_cont``; ``test_pg_equivalence`` checks the float64 operations against the server's).
"""

from __future__ import annotations

import csv
import io
import json
import sqlite3
from collections import defaultdict
from datetime import datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from support.rows import ENDPOINTS, NON_ASCII, WORDS
from support.sim import NOW

from mirror import query
from mirror.db import reader_engine
from mirror.schema import STATUSES
from mirror.timeparse import to_text

COLS = query.COLUMNS
APP_IDS = ("acme/flux-lora", "beta/sd", "beta/sd_xl", "acme", "nobody/else")

times = st.integers(min_value=0, max_value=4 * 24 * 12).map(
    lambda k: NOW - timedelta(days=3, hours=6) + timedelta(minutes=5 * k)
)
search_words = st.sampled_from(
    [*WORDS, "Leuchtturm", "uber", "über", "маяк", "fyrtårn", "phare", "saint-malo", "nothing"]
)


@st.composite
def filters(draw: st.DrawFn) -> query.Filters:
    since = draw(st.none() | times)
    until = draw(st.none() | times)
    if since and until and until <= since:
        since, until = until - timedelta(minutes=5), since + timedelta(minutes=5)
    lo = draw(st.none() | st.sampled_from([0.5, 1.25, 2.0, 3.0, 7.0]))
    hi = draw(st.none() | st.sampled_from([1.25, 3.5, 12.25, 40.0]))
    if lo is not None and hi is not None and hi < lo:
        lo, hi = hi, lo
    words = draw(st.lists(search_words, max_size=2))
    return query.Filters(
        endpoints=draw(st.lists(st.sampled_from(ENDPOINTS + APP_IDS), max_size=2)),
        statuses=draw(st.lists(st.sampled_from(STATUSES), max_size=2)),
        status_codes=draw(st.lists(st.sampled_from([200, 201, 404, 500, 503, 299]), max_size=2)),
        request_ids=draw(
            st.lists(st.integers(0, 1600).map(lambda i: f"req-5-{i:05d}"), max_size=3)
        ),
        since=since,
        until=until,
        time_field=draw(st.sampled_from(query.TIME_FIELDS)),
        min_duration=lo,
        max_duration=hi,
        search=" ".join(words) if words else None,
    )


def reference_where(f: query.Filters) -> tuple[str, list[Any]]:
    where: list[str] = []
    params: list[Any] = []
    if f.endpoints:
        parts = []
        for e in f.endpoints:
            parts.append("(endpoint_id = ? OR substr(endpoint_id, 1, length(?) + 1) = ? || '/')")
            params += [e, e, e]
        where.append("(" + " OR ".join(parts) + ")")
    for col, values in (
        ("status", f.statuses),
        ("status_code", f.status_codes),
        ("request_id", f.request_ids),
    ):
        if values:
            where.append(f"{col} IN ({', '.join('?' * len(values))})")
            params += list(values)
    if f.since:
        where.append(f"{f.time_field} >= ?")
        params.append(to_text(f.since))
    if f.until:
        where.append(f"{f.time_field} < ?")
        params.append(to_text(f.until))
    if f.min_duration is not None:
        where.append("duration >= ?")
        params.append(f.min_duration)
    if f.max_duration is not None:
        where.append("duration <= ?")
        params.append(f.max_duration)
    if f.search:
        match = " AND ".join('"' + w.replace('"', '""') + '"' for w in f.search.split())
        where.append("rowid IN (SELECT rowid FROM requests_fts WHERE requests_fts MATCH ?)")
        params.append(match)
    return (" WHERE " + " AND ".join(where) if where else ""), params


def reference_rows(
    con: sqlite3.Connection, f: query.Filters, cols: list[str], sort: str, desc: bool,
    limit: int | None, offset: int,
) -> list[tuple[Any, ...]]:  # fmt: skip
    where, params = reference_where(f)
    d = "DESC" if desc else "ASC"
    sql = (
        f"SELECT {', '.join(cols)} FROM requests{where} "
        f"ORDER BY {sort} IS NULL, {sort} {d}, request_id {d} LIMIT ? OFFSET ?"
    )
    return con.execute(sql, [*params, -1 if limit is None else limit, offset]).fetchall()


@pytest.fixture(scope="module")
def ref_con(demo_db):
    con = sqlite3.connect(f"file:{demo_db}?mode=ro", uri=True)
    yield con
    con.close()


@pytest.fixture(scope="module")
def reader(demo_db):
    engine = reader_engine(str(demo_db))
    with engine.connect() as conn:
        yield conn
    engine.dispose()


def test_the_database_has_the_cases_the_properties_need(ref_con):
    """Guards the generator: without these rows the properties below prove little."""
    (n, ties_t, ties_d, unfinished, routes, nonascii) = ref_con.execute(
        "SELECT count(*), "
        "(SELECT count(*) FROM (SELECT ended_at FROM requests GROUP BY ended_at HAVING count(*) > 1)), "
        "(SELECT count(*) FROM (SELECT duration FROM requests GROUP BY duration HAVING count(*) > 1)), "
        "sum(status = 'unfinished'), sum(endpoint_id = 'acme/flux-lora/edit'), "
        "sum(json_input LIKE '%маяк%') FROM requests"
    ).fetchone()
    assert n == 1500
    assert ties_t > 10 and ties_d > 3 and unfinished > 50 and routes > 100 and nonascii > 10


@settings(
    max_examples=250, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    f=filters(),
    cols=st.lists(st.sampled_from(COLS), min_size=1, max_size=5, unique=True),
    sort=st.sampled_from(query.SORTS),
    desc=st.booleans(),
    limit=st.none() | st.integers(0, 40),
    offset=st.integers(0, 30),
)
def test_listing_equals_plain_sql(reader, ref_con, f, cols, sort, desc, limit, offset):
    got = list(
        query.select_requests(
            reader, f, columns=cols, sort=sort, descending=desc, limit=limit, offset=offset
        )
    )
    want = reference_rows(ref_con, f, cols, sort, desc, limit, offset)
    assert got == want, f"{f} sort={sort} desc={desc} limit={limit} offset={offset}"


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(f=filters(), sort=st.sampled_from(query.SORTS), desc=st.booleans())
def test_the_command_prints_what_plain_sql_returns(run_cli, demo_db, ref_con, f, sort, desc):
    args = ["query", "--db", str(demo_db), "--format", "json", "--limit", "0", "--sort", sort]
    args += ["--columns", ",".join(COLS)]
    args += [] if desc else ["--asc"]
    for e in f.endpoints:
        args += ["--endpoint", e]
    for s in f.statuses:
        args += ["--status", s]
    for c in f.status_codes:
        args += ["--status-code", str(c)]
    for r in f.request_ids:
        args += ["--id", r]
    if f.since:
        args += ["--since", f.since.isoformat()]
    if f.until:
        args += ["--until", f.until.isoformat()]
    args += ["--time-field", f.time_field]
    if f.min_duration is not None:
        args += ["--min-duration", repr(f.min_duration)]
    if f.max_duration is not None:
        args += ["--max-duration", repr(f.max_duration)]
    if f.search:
        args += ["--search", f.search]
    result = run_cli(args)
    assert result.exit_code == 0, result.output
    got = json.loads(result.stdout)
    want = [
        dict(zip(COLS, r, strict=True))
        for r in reference_rows(ref_con, f, list(COLS), sort, desc, None, 0)
    ]
    for row in want:  # payloads are printed as JSON values, not as JSON text
        for c in ("json_input", "json_output"):
            row[c] = None if row[c] is None else json.loads(row[c])
    assert got == want, f"mirror {' '.join(args)}"


# --------------------------------------------------------------------------- stats


def reference_stats(
    con: sqlite3.Connection, f: query.Filters, by: list[str]
) -> list[dict[str, Any]]:
    cols = [
        "request_id",
        "endpoint_id",
        "sent_at",
        "ended_at",
        "status",
        "status_code",
        "duration",
        "billable_units",
    ]
    rows = [
        dict(zip(cols, r, strict=True))
        for r in con.execute(f"SELECT {', '.join(cols)} FROM requests")
    ]
    matched_search: set[str] | None = None
    if f.search:
        match = " ".join('"' + w + '"' for w in f.search.split())
        matched_search = {
            r[0]
            for r in con.execute(
                "SELECT request_id FROM requests WHERE rowid IN "
                "(SELECT rowid FROM requests_fts WHERE requests_fts MATCH ?)",
                (match,),
            )
        }

    def keep(r: dict[str, Any]) -> bool:
        t = r[f.time_field]
        return (
            (
                not f.endpoints
                or any(
                    r["endpoint_id"] == e or r["endpoint_id"].startswith(e + "/")
                    for e in f.endpoints
                )
            )
            and (not f.statuses or r["status"] in f.statuses)
            and (not f.status_codes or r["status_code"] in f.status_codes)
            and (not f.request_ids or r["request_id"] in f.request_ids)
            and (f.since is None or (t is not None and t >= to_text(f.since)))
            and (f.until is None or (t is not None and t < to_text(f.until)))
            and (
                f.min_duration is None
                or (r["duration"] is not None and r["duration"] >= f.min_duration)
            )
            and (
                f.max_duration is None
                or (r["duration"] is not None and r["duration"] <= f.max_duration)
            )
            and (matched_search is None or r["request_id"] in matched_search)
        )

    def key(r: dict[str, Any]) -> tuple[Any, ...]:
        t = r[f.time_field]
        out: list[Any] = []
        for g in by:
            if g == "endpoint":
                out.append(r["endpoint_id"])
            elif g == "status":
                out.append(r["status"])
            elif g == "hour":
                out.append(
                    None if t is None else datetime.fromisoformat(t).strftime("%Y-%m-%dT%H:00:00Z")
                )
            else:
                out.append(None if t is None else t[:10])
        return tuple(out)

    groups: dict[tuple[Any, ...], list[dict[str, Any]]] = defaultdict(list)
    for r in filter(keep, rows):
        groups[key(r)].append(r)
    if not by and not groups:
        groups[()] = []
    out = []
    for k in sorted(groups, key=lambda k: tuple((v is not None, v) for v in k)):
        members = groups[k]
        n = {s: sum(1 for r in members if r["status"] == s) for s in STATUSES}
        finished = n["success"] + n["user_error"] + n["error"]
        durations = sorted(r["duration"] for r in members if r["duration"] is not None)

        def pct(p: int, durations: list[float] = durations) -> float | None:
            if not durations:
                return None
            at = p / 100 * (len(durations) - 1)  # a fractional 0-based position
            below = int(at)
            if at == below:
                return durations[below]
            low, high = durations[below], durations[below + 1]
            return low + (at - below) * (high - low)

        row = dict(zip(by, k, strict=True))
        row.update(requests=len(members), **n)
        row["error_rate"] = n["error"] / finished if finished else None
        row["user_error_rate"] = n["user_error"] / finished if finished else None
        row.update({f"p{p}": pct(p) for p in (50, 90, 95, 99)})
        row["max"] = max(durations) if durations else None
        # summed exactly in millionths of a unit, each rounded half away from zero
        row["billable_units"] = (
            sum(
                int(
                    Decimal(r["billable_units"] * 1000000).quantize(
                        Decimal(1), rounding=ROUND_HALF_UP
                    )
                )
                for r in members
                if r["billable_units"] is not None
            )
            / 1_000_000
        )
        out.append(row)
    return out


group_lists = st.sampled_from(
    [[], ["endpoint"], ["status"], ["hour"], ["day"], ["endpoint", "day"], ["day", "endpoint"],
     ["endpoint", "status", "hour"], ["status", "endpoint"], ["hour", "status"]]
)  # fmt: skip


@settings(
    max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(f=filters(), by=group_lists)
def test_stats_equal_a_python_reference(reader, ref_con, f, by):
    got = query.stats(reader, f, by=by)
    want = reference_stats(ref_con, f, by)
    assert got == want, f"{f} by={by}"


hours = st.integers(min_value=0, max_value=4 * 24).map(
    lambda k: NOW.replace(minute=0) - timedelta(days=3, hours=6) + timedelta(hours=k)
)


@st.composite
def summary_filters(draw: st.DrawFn) -> query.Filters:
    """Filters the hourly summary can answer: endpoints, statuses, whole hours."""
    since, until = draw(st.none() | hours), draw(st.none() | hours)
    if since and until and until <= since:
        since, until = until - timedelta(hours=1), since + timedelta(hours=1)
    return query.Filters(
        endpoints=draw(st.lists(st.sampled_from(ENDPOINTS + APP_IDS), max_size=2)),
        statuses=draw(st.lists(st.sampled_from(STATUSES), max_size=2)),
        since=since,
        until=until,
    )


@settings(
    max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(f=summary_filters(), by=group_lists)
def test_stats_from_the_summary_equal_the_reference(reader, ref_con, f, by):
    assert query.summary_applies(reader, f)
    got = query.stats(reader, f, by=by)
    want = reference_stats(ref_con, f, by)
    assert got == want, f"{f} by={by}"


@given(
    st.floats(min_value=-1e6, max_value=1e6)
    | st.sampled_from([0.1, 2.5e-7, 5e-7, -5e-7, 1.0000005, 0.0])
)
def test_micro_units_round_like_sqlite(value):
    con = sqlite3.connect(":memory:")
    (want,) = con.execute("SELECT CAST(round(? * 1000000) AS INTEGER)", (value,)).fetchone()
    con.close()
    assert query.micro_units(value) == want, value


def test_stats_command_prints_the_reference_in_every_format(run_cli, demo_db, ref_con):
    f = query.Filters(endpoints=("acme/flux-lora",))
    want = reference_stats(ref_con, f, ["endpoint", "day"])
    base = ["stats", "--db", str(demo_db), "-e", "acme/flux-lora", "--by", "endpoint,day"]
    out = run_cli([*base, "--format", "json"])
    assert out.exit_code == 0, out.output
    assert json.loads(out.stdout) == want
    lines = run_cli([*base, "--format", "jsonl"]).stdout.splitlines()
    assert [json.loads(x) for x in lines] == want
    csv_text = run_cli([*base, "--format", "csv"]).stdout
    header, *rows = list(csv.reader(io.StringIO(csv_text)))
    assert header == ["endpoint", "day", *query.STATS_FIELDS]

    def cell(v: Any) -> str:
        return "" if v is None else repr(v) if isinstance(v, float) else str(v)

    assert rows == [[cell(w[c]) for c in header] for w in want]


def test_percentiles_interpolate_on_known_values():
    values = [float(v) for v in range(1, 21)]  # 1..20
    assert [query.percentile_cont(values, p) for p in (0, 50, 95, 100)] == [1.0, 10.5, 19.05, 20.0]
    assert query.percentile_cont([10.0, 20.0], 90) == 19.0
    assert query.percentile_cont([1.0, 2.0, 3.0, 4.0, 5.0], 50) == 3.0  # a whole position
    assert query.percentile_cont([4.0], 1) == 4.0
    assert query.percentile_cont([], 50) is None


def test_stats_with_no_match_is_one_row_of_zeros(reader):
    f = query.Filters(endpoints=("nobody/else",))
    assert query.stats(reader, f) == [
        {"requests": 0, "success": 0, "user_error": 0, "error": 0, "unfinished": 0,
         "error_rate": None, "user_error_rate": None, "p50": None, "p90": None, "p95": None,
         "p99": None, "max": None, "billable_units": 0.0}
    ]  # fmt: skip
    assert query.stats(reader, f, by=["endpoint"]) == []


def test_non_ascii_words_are_found(reader, ref_con):
    for text in NON_ASCII:
        word = text.split()[0]
        got = {
            r[0]
            for r in query.select_requests(
                reader, query.Filters(search=word), columns=["request_id"]
            )
        }
        want = {
            r[0]
            for r in ref_con.execute("SELECT request_id, json_input, json_output FROM requests")
            if any(text in (r[i] or "") for i in (1, 2))
        }
        assert got == want and want, f"search {word!r}: {len(got)} found, {len(want)} hold it"
