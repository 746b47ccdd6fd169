"""A request's cost reachable from the request: the `request_costs` view (SQLite and
PostgreSQL, migration 0010 both ways), and Datasette's canned queries for spend per day and
the most expensive requests, served by a real `mirror browse` and checked against
`mirror.cost.spend` (what `mirror cost` answers) and against the rows themselves."""

from __future__ import annotations

import importlib.util
import sqlite3
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
import yaml
from alembic import command
from support.cli import serve_browse, terminate

from mirror.billing_api import BillingEvent
from mirror.cost import CostFilters, spend, usd_text
from mirror.db import alembic_config, reader_engine
from mirror.records import Row, derive_status
from mirror.schema import requests
from mirror.store import Store
from mirror.timeparse import to_text

NOW = "2026-11-29T00:00:00.000000Z"
FLUX, SCHNELL, WHISPER = "fal-ai/flux/dev", "fal-ai/flux/schnell", "fal-ai/whisper"
DATASETTE_YML = Path(__file__).resolve().parents[2] / "mirror" / "datasette.yml"


def request(request_id: str, endpoint: str, ended: str, status_code: int,
            prompt: str | None = None) -> Row:  # fmt: skip
    json_input = None if prompt is None else f'{{"prompt": "{prompt}"}}'
    return Row(request_id, endpoint, None, ended, ended, ended, status_code, 2.5, None,
               json_input, None, derive_status(ended, status_code))  # fmt: skip


def event(request_id: str, endpoint: str, at: str, nano: int, *, key: str | None = "key-1",
          user: str | None = None) -> BillingEvent:  # fmt: skip
    return BillingEvent(
        request_id=request_id,
        endpoint_id=endpoint,
        timestamp=at,
        output_units=1.0,
        unit_price=nano / 1e9,
        percent_discount=None,
        cost_subtotal=nano / 1e9,
        cost_discount=0.0,
        cost_total=nano / 1e9,
        cost_estimate_nano_usd=nano,
        auth_method="User token" if user else "Production key",
        api_key_id=key,
        login_username=user,
    )


#: requests the mirror holds: two model calls billed, one not billed yet, one failed
REQUESTS = [
    request("req-a", FLUX, "2026-11-27T09:00:00.000000Z", 200, prompt="a fox"),
    request("req-b", SCHNELL, "2026-11-28T10:00:00.000000Z", 200, prompt="Zürich"),
    request("req-c", WHISPER, "2026-11-28T11:00:00.000000Z", 200),
    request("req-d", FLUX, "2026-11-28T12:00:00.000000Z", 500),
]
#: billing events, two for requests the mirror does not hold (kept all the same); amounts
#: whose decimal text is easy to get wrong: 0.045, 2.50, 1.00, 7 nano-USD, sixty of 0.10
EVENTS = [
    event("req-a", FLUX, "2026-11-27T09:00:00.000000Z", 45_000_000),
    event("req-x", FLUX, "2026-11-27T23:59:59.999999Z", 2_500_000_000, key="key-2"),
    event("req-b", SCHNELL, "2026-11-28T10:00:00.000000Z", 1_000_000_000, key=None, user="alice"),
    event("req-y", WHISPER, "2026-11-28T00:00:00.000000Z", 7, key=None, user=None),
    *(
        event(f"req-t{k:02d}", SCHNELL, f"2026-11-26T10:{k:02d}:00.000000Z", 100_000_000)
        for k in range(60)
    ),
]


def fill(db: str) -> None:
    store = Store.open(db)
    try:
        with store.engine.begin() as conn:
            store.upsert(conn, REQUESTS, payloads=True, billing=True, now=NOW)
            conn.execute(
                requests.update()
                .where(requests.c.endpoint_id.like("fal-ai/%"))
                .values(history="model")
            )
            store.upsert_billing_events(conn, EVENTS, now=NOW)
    finally:
        store.close()


def view_rows(db: str) -> list[tuple[Any, ...]]:
    engine = reader_engine(db)
    try:
        with engine.connect() as conn:
            rows = conn.exec_driver_sql(
                "SELECT request_id, endpoint_id, history, status, billed_at, output_units, "
                "unit_price, cost_total, cost_estimate_nano_usd, auth_method, api_key_id, "
                "login_username FROM request_costs ORDER BY request_id"
            ).all()
    finally:
        engine.dispose()
    # PostgreSQL hands timestamptz back as datetimes: compared as the stored text
    return [tuple(to_text(v) if isinstance(v, datetime) else v for v in r) for r in rows]


def test_request_costs_puts_each_requests_billing_event_beside_it(db_url: str) -> None:
    fill(db_url)
    assert view_rows(db_url) == [
        ("req-a", FLUX, "model", "success", "2026-11-27T09:00:00.000000Z", 1.0, 0.045, 0.045,
         45_000_000, "Production key", "key-1", None),
        ("req-b", SCHNELL, "model", "success", "2026-11-28T10:00:00.000000Z", 1.0, 1.0, 1.0,
         1_000_000_000, "User token", None, "alice"),
        ("req-c", WHISPER, "model", "success", *[None] * 8),
        ("req-d", FLUX, "model", "error", *[None] * 8),
    ], "one row per request the mirror holds, its event's figures or nulls"  # fmt: skip


def index_names(conn: sa.Connection) -> set[str]:
    """The billing events' own indexes (SQLAlchemy's reflection skips expression indexes)."""
    sql = (
        "SELECT indexname FROM pg_indexes WHERE tablename = 'billing_events'"
        if conn.dialect.name == "postgresql"
        else "SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name = 'billing_events'"
    )
    return {r[0] for r in conn.exec_driver_sql(sql) if r[0].startswith("ix_")}


def test_migration_0010_down_and_up(db_url: str) -> None:
    fill(db_url)
    store = Store.open(db_url)
    try:
        with store.engine.begin() as conn:
            command.downgrade(alembic_config(conn), "0009")
        with store.engine.connect() as conn:
            views = set(sa.inspect(conn).get_view_names())
            indexes = index_names(conn)
            events = conn.exec_driver_sql("SELECT count(*) FROM billing_events").scalar()
        assert "request_costs" not in views, "the downgrade left the view"
        assert indexes == {"ix_billing_events_timestamp", "ix_billing_events_endpoint_timestamp"}
        assert events == len(EVENTS), "the downgrade lost billing events"
    finally:
        store.close()
    store = Store.open(db_url)  # upgrades again
    try:
        with store.engine.connect() as conn:
            indexes = index_names(conn)
    finally:
        store.close()
    day = {"ix_billing_events_day"} if db_url.endswith(".db") else set()  # SQLite only
    assert indexes == {"ix_billing_events_timestamp", "ix_billing_events_endpoint_timestamp",
                       "ix_billing_events_cost", *day}, "the upgrade did not build the indexes"  # fmt: skip
    assert [r[0] for r in view_rows(db_url)] == ["req-a", "req-b", "req-c", "req-d"]


# --------------------------------------------------------------------------- Datasette

needs_datasette = pytest.mark.skipif(
    importlib.util.find_spec("datasette") is None, reason="datasette is not installed"
)


@pytest.fixture(scope="module")
def cost_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("cost") / "cost.db"
    fill(str(path))
    return path


@pytest.fixture(scope="module")
def site(cost_db: Path) -> Iterator[httpx.Client]:
    proc, base = serve_browse(cost_db)
    client = httpx.Client(base_url=f"{base}/{cost_db.stem}", timeout=30)
    yield client
    client.close()
    terminate(proc)


def canned(site: httpx.Client, name: str, **params: str) -> list[dict[str, Any]]:
    r = site.get(f"/{name}.json", params={"_shape": "array", **params})
    assert r.status_code == 200, f"{name} {params}: {r.status_code} {r.text[:500]}"
    return r.json()


def mirror_cost_by_day(db: Path, filters: CostFilters) -> list[dict[str, Any]]:
    """What `mirror cost --by day --no-estimate` answers, newest day first."""
    engine = reader_engine(str(db))
    try:
        with engine.connect() as conn:
            rows = spend(conn, filters, by=["day"], estimate=False)
    finally:
        engine.dispose()
    return [{"day": r["day"], "events": r["events"], "usd": r["billed_usd"],
             "nano_usd": r["billed_nano_usd"]} for r in reversed(rows)]  # fmt: skip


@needs_datasette
def test_spend_per_day_is_what_mirror_cost_bills_to_the_nano_dollar(site, cost_db) -> None:
    everything = canned(site, "spend_per_day")  # no parameters: Datasette's blanks
    assert everything == [
        {"day": "2026-11-28", "events": 2, "usd": "1.000000007", "nano_usd": 1_000_000_007},
        {"day": "2026-11-27", "events": 2, "usd": "2.545", "nano_usd": 2_545_000_000},
        {"day": "2026-11-26", "events": 60, "usd": "6.00", "nano_usd": 6_000_000_000},
    ], "sixty charges of $0.10 must add up to 6.00 exactly"
    assert everything == mirror_cost_by_day(cost_db, CostFilters())
    since = datetime(2026, 11, 27, 18, tzinfo=UTC)
    flux = canned(site, "spend_per_day", since="2026-11-27T18:00", endpoint="fal-ai/flux")
    assert flux == [
        {"day": "2026-11-28", "events": 1, "usd": "1.00", "nano_usd": 1_000_000_000},
        {"day": "2026-11-27", "events": 2, "usd": "2.545", "nano_usd": 2_545_000_000},
    ], "since: the days from its day on; an app id covers its routes"
    day = since.replace(hour=0)
    assert flux == mirror_cost_by_day(cost_db, CostFilters(since=day, endpoints=("fal-ai/flux",)))
    assert canned(site, "spend_per_day", endpoint="nobody/else") == []


@needs_datasette
def test_the_most_expensive_requests_come_dearest_first_with_who_and_what(site) -> None:
    held = {r[0]: r for r in REQUESTS}

    def expected(events: list[BillingEvent]) -> list[dict[str, Any]]:
        top = sorted(events, key=lambda e: (e.cost_estimate_nano_usd, e.request_id), reverse=True)
        out = []
        for e in top[:50]:
            req = held.get(e.request_id)
            caller = e.api_key_id or (e.login_username and f"user:{e.login_username}")
            out.append({
                "request_id": e.request_id, "endpoint_id": e.endpoint_id,
                "billed_at": e.timestamp, "usd": usd_text(e.cost_estimate_nano_usd),
                "nano_usd": e.cost_estimate_nano_usd, "output_units": e.output_units,
                "unit_price": e.unit_price, "percent_discount": None,
                "caller": caller or e.auth_method,
                "status": req and req[11], "duration_s": req and req[7],
                "prompt": req and req[9] and req[9].split('"')[3],
            })  # fmt: skip
        return out

    rows = canned(site, "most_expensive_requests")
    assert rows == expected(EVENTS) and len(rows) == 50
    assert rows[:3] == [
        {**rows[0], "request_id": "req-x", "usd": "2.50", "status": None, "prompt": None},
        {**rows[1], "request_id": "req-b", "usd": "1.00", "caller": "user:alice",
         "status": "success", "prompt": "Zürich"},
        {**rows[2], "usd": "0.10", "caller": "key-1"},
    ], "an event for a request the mirror does not hold is listed, its request fields null"  # fmt: skip
    later = canned(site, "most_expensive_requests", since="2026-11-27T12:00", endpoint=WHISPER)
    assert later == expected([e for e in EVENTS if e.endpoint_id == WHISPER])
    assert later[0]["caller"] == "Production key", "no key, no login: fal's label"


def test_the_canned_spend_queries_read_indexes_not_the_whole_table(cost_db) -> None:
    """Plans, not timings (bench/ has timings): spend per day is summed in the order of the
    day index, with no sort of the events; the dearest requests are the first entries of
    the cost index, read backwards. As SQLite plans them on a user's file: no ANALYZE."""
    queries = yaml.safe_load(DATASETTE_YML.read_text())["databases"]["mirror"]["queries"]
    blanks = {"since": "", "endpoint": ""}  # what Datasette binds when nothing is given
    con = sqlite3.connect(f"file:{cost_db}?mode=ro", uri=True)
    try:
        spend_plan, top_plan = (
            [r[3] for r in con.execute(f"EXPLAIN QUERY PLAN {queries[name]['sql']}", blanks)]
            for name in ("spend_per_day", "most_expensive_requests")
        )
    finally:
        con.close()
    assert "SEARCH billing_events USING INDEX ix_billing_events_day (<expr>>?)" in spend_plan
    assert not any("GROUP BY" in step for step in spend_plan), spend_plan
    assert "SCAN billing_events USING INDEX ix_billing_events_cost" in top_plan, top_plan
    assert not any(
        step.startswith("SCAN billing_events") and "INDEX" not in step for step in top_plan
    ), top_plan
