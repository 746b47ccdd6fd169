"""`mirror browse`: a real Datasette process on 127.0.0.1, checked over HTTP.

Against a database filled by a real sync from the simulated API: the tables, the views, the
metadata (sort, facets, units), full-text search and every canned query, compared with what
SQL over the file (or `mirror stats`) says.
"""

from __future__ import annotations

import importlib.util
import json
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from support.cli import serve_browse, terminate
from support.rows import read_all

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


def test_canned_latency_percentiles_equal_mirror_stats(server, synced_db):
    since = (datetime.now(UTC) - timedelta(hours=12)).replace(minute=0, second=0, microsecond=0)
    rows = rows_of(server, "/latency_percentiles_per_hour.json", since=since.isoformat()[:19],
                   endpoint="acme/flux-lora")  # fmt: skip
    engine = reader_engine(str(synced_db))
    with engine.connect() as conn:  # min_duration=0: the rows that have a duration
        f = query.Filters(endpoints=("acme/flux-lora",), since=since, min_duration=0)
        stats = query.stats(conn, f, by=["hour"])
    engine.dispose()
    fields = ("hour", "requests", "p50", "p90", "p95", "p99", "max")
    assert rows == [{k: s[k] for k in fields} for s in stats] and rows


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


def test_metadata_titles_descriptions_and_units(server):
    meta = server.client.get("/-/metadata.json").json()
    assert meta["title"] == "fal request mirror"
    (db_meta,) = meta["databases"].values()
    t = db_meta["tables"]["requests"]
    assert t["sort_desc"] == "ended_at" and t["facets"] == ["endpoint_id", "status"]
    assert (
        t["units"] == {"duration": "s"}
        and t["columns"]["billable_units"] == "units fal bills for this request"
    )
    assert set(db_meta["queries"]) == {
        "failed_requests", "slowest_requests", "latency_percentiles_per_hour",
        "billable_units_per_day", "prompt_failures", "spend_per_day", "most_expensive_requests",
    }  # fmt: skip


def test_print_metadata_names_the_database_like_datasette_does(run_cli, synced_db):
    out = run_cli(["browse", "--db", str(synced_db), "--print-metadata"])
    assert out.exit_code == 0, out.output
    assert list(json.loads(out.stdout)["databases"]) == [synced_db.stem]
