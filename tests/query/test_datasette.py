"""`mirror browse`: a real Datasette process on 127.0.0.1, checked over HTTP.

Against a database filled by a real sync from the simulated API: the tables, the views, the
metadata (sort, facets), full-text search and every canned query, compared with what SQL
over the file (or `mirror stats`) says; every page the site links to answering with no error
and no query cut short; the facets summed from the rollups equal Datasette's own; a search
matching more than 10,000 requests, neither counted nor faceted.
"""

from __future__ import annotations

import importlib.util
import json
import urllib.parse
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from support import histogram
from support.cli import serve_browse, terminate
from support.rows import fill, make_rows, read_all

from mirror import query
from mirror.db import reader_engine

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("datasette") is None, reason="datasette is not installed"
)


@pytest.fixture(scope="module")
def server(synced_db: Path):
    proc, base = serve_browse(synced_db)
    from datasette.utils import tilde_encode  # names with a space are tilde-encoded in URLs

    client = httpx.Client(base_url=base, timeout=30)
    yield Site(client, "/" + tilde_encode(synced_db.stem))
    client.close()
    terminate(proc)


@dataclass
class Site:
    client: httpx.Client
    db: str  # the database's path on the site


def get(site: Site, path: str, **params: Any) -> Any:
    """GET a page of the database (``path`` after its name, e.g. ``/requests.json``)."""
    r = site.client.get(site.db + path, params=params)
    assert r.status_code == 200, f"{r.request.url}: {r.status_code} {r.text[:500]}"
    return r.json()


def rows_of(site: Site, path: str, **params: Any) -> list[dict[str, Any]]:
    return get(site, path, _shape="array", **params)


def test_it_serves_on_loopback_only(server):
    assert server.client.base_url.host == "127.0.0.1"


def test_tables_and_views_are_listed(server):
    data = get(server, ".json")
    tables = {t["name"]: t for t in data["tables"]}
    for name in ("requests", "sync_targets", "sync_windows", "sync_runs"):
        assert name in tables and not tables[name]["hidden"], name
    assert tables["summary_hourly"]["hidden"], "the raw summary is hidden behind its views"
    assert tables["requests"]["fts_table"] == "requests_fts"
    views = {v["name"] for v in data["views"]}
    assert {"request_log", "hourly_summary", "daily_summary", "daily_usage"} <= views


def test_requests_are_newest_first_with_facets(server, synced_db):
    data = get(server, "/requests.json", _size=10)
    # Datasette's first page orders by the sort column alone: rows that ended at the same
    # instant come in whatever order SQLite's plan yields, so compare the instants in order.
    got = [r[0] for r in data["rows"]]
    ended = dict(read_all(synced_db, "SELECT request_id, ended_at FROM requests"))
    want = read_all(synced_db, "SELECT ended_at FROM requests ORDER BY ended_at DESC LIMIT 10")
    assert [ended[i] for i in got] == [w[0] for w in want], "not the 10 newest, newest first"
    assert len(set(got)) == len(got) == 10, f"rows repeated: {got}"
    facets = data["facet_results"]
    got = {v["value"]: v["count"] for v in facets["endpoint_id"]["results"]}
    assert got == dict(read_all(synced_db, "SELECT endpoint_id, count(*) FROM requests GROUP BY 1"))
    got = {v["value"]: v["count"] for v in facets["status"]["results"]}
    assert got == dict(read_all(synced_db, "SELECT status, count(*) FROM requests GROUP BY 1"))


def test_the_log_view_is_readable(server, synced_db):
    rows = rows_of(server, "/request_log.json", _size=5)
    assert rows and list(rows[0])[:4] == ["rowid", "request_id", "endpoint_id", "status"]
    rid = rows[0]["request_id"]
    (want,) = read_all(
        synced_db,
        "SELECT duration, json_extract(json_input, '$.prompt'), "
        "(julianday(started_at) - julianday(sent_at)) * 86400 FROM requests WHERE request_id = ?",
        (rid,),
    )
    assert rows[0]["duration_s"] == want[0] and rows[0]["prompt"] == want[1]
    assert rows[0]["queued_s"] == pytest.approx(want[2], abs=0.001)


@pytest.mark.parametrize(
    "words", ["Zürich", "zurich", "Сибирь", "café lait", "nowhere-to-be-found"]
)
def test_search_finds_what_fts_finds(server, synced_db, words):
    match = " ".join(f'"{w}"' for w in words.split())
    want = sorted(
        r[0]
        for r in read_all(
            synced_db,
            "SELECT request_id FROM requests WHERE rowid IN "
            "(SELECT rowid FROM requests_fts WHERE requests_fts MATCH ?)",
            (match,),
        )
    )
    for table in ("requests", "request_log"):
        got = sorted(
            r["request_id"] for r in rows_of(server, f"/{table}.json", _search=words, _size="max")
        )
        assert got == want, f"{table} ?_search={words}: {len(got)} rows, FTS has {len(want)}"
    assert want or words == "nowhere-to-be-found"


def test_the_summaries_match_the_rows(server, synced_db):
    got = {
        (r["day"], r["endpoint_id"]): r for r in rows_of(server, "/daily_usage.json", _size="max")
    }
    want = read_all(
        synced_db,
        "SELECT substr(ended_at, 1, 10), endpoint_id, count(*), sum(status = 'error'), "
        "round(sum(billable_units), 6) FROM requests WHERE ended_at IS NOT NULL GROUP BY 1, 2",
    )
    assert set(got) == {(d, e) for d, e, *_ in want}
    for day, ep, n, errors, units in want:
        g = got[(day, ep)]
        assert (g["requests"], g["error"]) == (n, errors) and g["billable_units"] == pytest.approx(
            units or 0
        )


def test_canned_latency_percentiles_come_from_the_histogram(server, synced_db):
    """Newest hour first; the figures `mirror.rollups` works out from the same histogram,
    each within 2% of `mirror stats`' exact ones."""
    since = (datetime.now(UTC) - timedelta(hours=12)).replace(minute=0, second=0, microsecond=0)
    rows = rows_of(server, "/latency_percentiles_per_hour.json", since=since.isoformat()[:19],
                   endpoint="acme/flux-lora")  # fmt: skip
    engine = reader_engine(str(synced_db))
    with engine.connect() as conn:  # min_duration=0: the rows that have a duration
        ids = query.resolve_endpoints(conn, ["acme/flux-lora"])
        sketch = histogram.duration_percentiles(conn, ["hour"], endpoint_ids=ids, since=since)
        f = query.Filters(endpoints=("acme/flux-lora",), since=since, min_duration=0)
        stats = query.stats(conn, f, by=["hour"])
    engine.dispose()
    fields = ("hour", "requests", "p50", "p90", "p95", "p99", "max")
    assert rows == [{k: s[k] for k in fields} for s in reversed(sketch)] and rows
    assert [(r["hour"], r["requests"]) for r in reversed(rows)] == [
        (s["hour"], s["requests"]) for s in stats
    ]
    for r, s in zip(reversed(rows), stats, strict=True):
        for k in fields[2:]:
            assert abs(r[k] - s[k]) <= histogram.ALPHA * s[k], f"{r['hour']} {k}: {r[k]} vs {s[k]}"


def test_canned_failures_slowest_billing_and_prompt_search(server, synced_db):
    since = "2000-01-01"
    failed = rows_of(server, "/failed_requests.json", since=since, until="2100-01-01", endpoint="")
    want = read_all(synced_db, "SELECT request_id FROM requests WHERE status IN ('error', 'user_error') "
                               "ORDER BY ended_at DESC, request_id DESC LIMIT 1000")  # fmt: skip
    assert [r["request_id"] for r in failed] == [w[0] for w in want] and failed
    slowest = rows_of(server, "/slowest_requests.json", since=since, endpoint="acme/upscaler")
    want = read_all(synced_db, "SELECT request_id FROM requests WHERE endpoint_id = 'acme/upscaler' "
                               "AND duration IS NOT NULL ORDER BY duration DESC, request_id DESC LIMIT 50")  # fmt: skip
    assert [r["request_id"] for r in slowest] == [w[0] for w in want]
    billing = rows_of(server, "/billable_units_per_day.json", endpoint="")
    assert {(r["day"], r["endpoint_id"]) for r in billing} == set(
        read_all(
            synced_db,
            "SELECT substr(ended_at, 1, 10), endpoint_id FROM requests "
            "WHERE ended_at IS NOT NULL GROUP BY 1, 2",
        )
    )
    failures = rows_of(server, "/prompt_failures.json", words="Zürich")
    want = read_all(
        synced_db,
        "SELECT request_id FROM requests WHERE status IN ('error', 'user_error') AND rowid IN "
        "(SELECT rowid FROM requests_fts WHERE requests_fts MATCH '\"Zürich\"') ORDER BY ended_at DESC, request_id DESC",
    )
    assert [r["request_id"] for r in failures] == [w[0] for w in want]


def test_metadata_titles_and_descriptions(server):
    meta = server.client.get("/-/metadata.json").json()
    assert meta["title"] == "fal request mirror"
    (db_meta,) = meta["databases"].values()
    t = db_meta["tables"]["requests"]
    assert t["sort_desc"] == "ended_at" and t["facets"] == ["endpoint_id", "status"]
    assert t["columns"]["billable_units"] == "units fal bills for this request"
    # no Datasette units: each cell would cost milliseconds of unit formatting on every page
    assert not any("units" in table for table in db_meta["tables"].values())
    assert "2%" in db_meta["tables"]["duration_histogram"]["columns"]["bucket"]
    assert set(db_meta["queries"]) == {
        "failed_requests", "slowest_requests", "latency_percentiles_per_hour",
        "billable_units_per_day", "prompt_failures", "spend_per_day", "most_expensive_requests",
    }  # fmt: skip


def test_print_metadata_names_the_database_like_datasette_does(run_cli, synced_db):
    out = run_cli(["browse", "--db", str(synced_db), "--print-metadata"])
    assert out.exit_code == 0, out.output
    assert list(json.loads(out.stdout)["databases"]) == [synced_db.stem]


# --------------------------------------------------------------------------- every page


def site_pages(site: Site) -> list[str]:
    """Every page the database page links to, each canned query opened as is (no parameters
    filled in), a common-word search and the date facet."""
    data = get(site, ".json")
    names = [t["name"] for t in data["tables"] if not t["hidden"]] + [
        v["name"] for v in data["views"]
    ]
    queries = [q["name"] for q in data["queries"]]
    assert len(queries) == 7 and "requests" in names and "request_log" in names
    return [
        "", *(f"/{n}" for n in names + queries),
        "/requests?_search=lighthouse", "/request_log?_search=lighthouse",
        "/requests?_facet=endpoint_id&_facet=status&_facet_date=ended_at",
    ]  # fmt: skip


def next_page(site: Site, table: str) -> str:
    """The link to a table's second page, as its first page gives it."""
    url = get(site, f"/{table}.json")["next_url"]
    return "/" + url.split(site.db + "/", 1)[1].replace(".json", "", 1)


def problems(site: Site, page: str) -> list[str]:
    """What is wrong with a page as a person sees it (HTML) and as its JSON says it."""
    base, _, args = page.partition("?")
    out = []
    html = site.client.get(site.db + page)
    if html.status_code != 200:
        out.append(f"HTML {html.status_code}")
    if 'class="message-error"' in html.text or "SQL Interrupted" in html.text:
        out.append("an error message on the page")
    if 'class="facets-timed-out"' in html.text:
        out.append("facets timed out")  # (the JSON of Datasette 0.65 does not say)
    data = site.client.get(f"{site.db}{base}.json" + (f"?{args}" if args else ""))
    if data.status_code != 200:
        return [*out, f"JSON {data.status_code}: {data.text[:200]}"]
    body = data.json()
    if body.get("error") or body.get("ok") is False:
        out.append(f"error: {body.get('error')}")
    if "filtered_table_rows_count" in body and body["filtered_table_rows_count"] is None:
        out.append("not counted")
    return out


def test_every_page_answers_200_with_no_error_and_no_query_cut_short(server):
    pages = [*site_pages(server), next_page(server, "requests"), next_page(server, "request_log")]
    failing = {page or "/": p for page in pages if (p := problems(server, page))}
    assert not failing, f"pages with problems: {failing}"


def test_a_later_page_is_faceted_like_the_first(server):
    """Facets describe the table, not the page: page two shows page one's (from the
    rollups; Datasette alone would count only the rows after page one)."""

    def counts(data: dict[str, Any]) -> dict[str, list[tuple[Any, int]]]:
        return {
            name: [(v["value"], v["count"]) for v in f["results"]]
            for name, f in data["facet_results"].items()
        }

    for table in ("requests", "request_log"):
        first = get(server, f"/{table}.json")
        second = server.client.get(first["next_url"]).json()
        assert counts(second) == counts(first) and counts(first), f"{table}: facets differ"
        assert second["rows"] and second["rows"][0] not in first["rows"], f"{table}: same page"


def test_a_later_page_newest_first_reads_the_time_index_without_sorting(synced_db):
    """Datasette 0.65 pages through a table newest first with this statement (its `_next`
    clause for `sort_desc`, then the primary key as tie-breaker): the time index, read
    backwards, gives that order, so a later page never sorts every request."""
    sql = (
        "EXPLAIN QUERY PLAN SELECT request_id FROM requests WHERE (ended_at < :p0 OR "
        "ended_at IS NULL OR (ended_at = :p0 AND request_id > :p1)) "
        "ORDER BY ended_at DESC, request_id LIMIT 101"
    )
    plan = "; ".join(r[3] for r in read_all(synced_db, sql, {"p0": "2026", "p1": ""}))
    assert "ix_requests_ended_at" in plan and "TEMP B-TREE" not in plan, plan


@pytest.mark.parametrize("blank", ["", " ", '""'])
def test_an_empty_search_box_shows_every_request(server, synced_db, blank):
    """Submitting the search form empty: Datasette would hand FTS5 a query with no words
    (`fts5: syntax error`); the page lists every request instead."""
    (n,) = read_all(synced_db, "SELECT count(*) FROM requests")[0]
    for table in ("requests", "request_log"):
        r = server.client.get(f"{server.db}/{table}", params={"_search": blank})
        assert r.status_code == 200 and "message-error" not in r.text, f"{table}: {r.text[:300]}"
        data = get(server, f"/{table}.json", _search=blank)
        assert data["filtered_table_rows_count"] == n, f"{table} ?_search={blank!r}"


def test_a_canned_query_opened_before_its_parameters_are_filled_shows_its_form(server):
    for name, params in {
        "failed_requests": ("since", "until", "endpoint"),
        "slowest_requests": ("since", "endpoint"),
        "latency_percentiles_per_hour": ("since", "endpoint"),
        "billable_units_per_day": ("endpoint",),
        "prompt_failures": ("words",),
        "spend_per_day": ("since", "endpoint"),
        "most_expensive_requests": ("since", "endpoint"),
    }.items():
        r = server.client.get(f"{server.db}/{name}")
        assert r.status_code == 200, f"{name}: {r.status_code} {r.text[:300]}"
        for p in params:
            assert f'name="{p}"' in r.text, f"{name}: no field for {p}"
        assert "message-error" not in r.text, f"{name}: shows an error"
    assert rows_of(server, "/prompt_failures.json") == [], "no words must match nothing"


FACET_PAGES = [
    "/requests",
    "/request_log?_facet_date=ended_at",
    "/requests?status=error&_facet_date=ended_at",
    "/requests?endpoint_id=acme/flux-lora&status__exact=success",
    "/requests?status=unfinished",
    "/request_log?_facet_date=ended_at&ended_at__date={day}",
    "/requests?_facet=status&_facet=endpoint_id&_facet=runner_id",  # runner_id: Datasette's own
]


@pytest.mark.parametrize("page", FACET_PAGES)
def test_the_facets_summed_from_the_rollups_equal_datasettes_own(server, synced_db, page):
    """The same page with a filter the rollups do not answer (``_where=1``, true for every
    row) runs Datasette's own facet SQL: values, counts, order and selection must agree."""
    (day,) = read_all(synced_db, "SELECT max(substr(ended_at, 1, 10)) FROM requests")[0]
    page = page.format(day=day)
    sep = "&" if "?" in page else "?"

    def facets(path: str) -> dict[str, Any]:
        data = get(server, path.replace("?", ".json?", 1) if "?" in path else path + ".json")
        return {
            name: [(v["value"], v["count"], v["selected"]) for v in f["results"]]
            for name, f in data["facet_results"].items()
        }

    mine, theirs = facets(page), facets(f"{page}{sep}_where=1")
    assert mine == theirs and mine, f"{page}: rollups {mine} vs Datasette {theirs}"


# --------------------------------------------------------------------------- a big search


@pytest.fixture(scope="module")
def big(tmp_path_factory: pytest.TempPathFactory):
    """A mirror where one word is in more than 10,000 requests' payloads (every input has a
    "seed"), served by `mirror browse`."""

    path = tmp_path_factory.mktemp("big") / "big.db"
    fill(path, make_rows(12_500, seed=21))
    proc, base = serve_browse(path)
    client = httpx.Client(base_url=base, timeout=60)
    yield Site(client, "/big"), path
    client.close()
    terminate(proc)


def test_a_search_matching_most_requests_reads_the_newest_without_counting_them(big):
    site, path = big
    (n,) = read_all(path, "SELECT count(*) FROM requests_fts WHERE requests_fts MATCH 'seed'")[0]
    assert n > 10_000, "the fixture does not make a big search"
    for table in ("requests", "request_log"):
        data = get(site, f"/{table}.json", _search="seed")
        assert data["filtered_table_rows_count"] is None, f"{table}: counted"
        assert data["facet_results"] == {}, f"{table}: faceted"
        assert "more than 10,000" in data["human_description_en"]
        got = [r[data["columns"].index("ended_at")] for r in data["rows"]]
        want = read_all(path, "SELECT ended_at FROM requests WHERE rowid IN (SELECT rowid FROM "
                        "requests_fts WHERE requests_fts MATCH 'seed') ORDER BY ended_at DESC "
                        f"LIMIT {len(got)}")  # fmt: skip
        assert got == [w[0] for w in want] and len(got) == 100, f"{table}: not the newest"
        html = site.client.get(f"{site.db}/{table}", params={"_search": "seed"})
        assert html.status_code == 200 and "more than 10,000 rows" in html.text
    small = get(site, "/requests.json", _search="Ålesund")
    (want,) = read_all(
        path, "SELECT count(*) FROM requests_fts WHERE requests_fts MATCH 'Ålesund'"
    )[0]
    assert small["filtered_table_rows_count"] == want > 0, "a small search is counted as before"
    assert set(small["facet_results"]) == {"endpoint_id", "status"}


@pytest.mark.parametrize(
    ("query", "want"),
    [
        ("", {}),
        ("_facet=status&_facet_date=ended_at&_size=10&_sort_desc=ended_at", {}),
        ("endpoint_id=a/b&status__exact=error", {"endpoint_id": "a/b", "status": "error"}),
        ("ended_at__date=2026-11-27", {"day": "2026-11-27"}),
        ("status=error&status=success", None),  # two values: Datasette ANDs them
        ("status=error&status__exact=error", None),
        ("status__not=error", None),
        ("runner_id=r1", None),
        ("_search=lighthouse", None),
        ("_where=1", None),
        ("_next=abc&status=error", {"status": "error"}),  # a later page: faceted as the first
    ],
)
def test_only_filters_the_rollups_hold_are_answered_from_them(query, want):
    from datasette.utils import MultiParams

    from mirror.datasette_plugin import rollup_filters

    args = MultiParams(urllib.parse.parse_qs(query))
    assert rollup_filters(args) == want
