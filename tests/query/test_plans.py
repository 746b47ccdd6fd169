"""The statements the query layer runs use the indexes (``EXPLAIN QUERY PLAN``).

Plans, not timings: timings belong in bench/query_bench.py. SQLite plans these without
statistics (no ANALYZE), as it does on a user's mirror.
"""

from __future__ import annotations

import sqlite3
from datetime import timedelta

import pytest
from support.sim import NOW

from mirror import query
from mirror.db import reader_engine

DAY = NOW.replace(hour=0) - timedelta(days=1)


@pytest.fixture(scope="module")
def conns(demo_db):
    engine = reader_engine(str(demo_db))
    raw = sqlite3.connect(f"file:{demo_db}?mode=ro", uri=True)
    with engine.connect() as conn:
        yield conn, raw
    raw.close()
    engine.dispose()


def plan_of(conns, stmt) -> str:
    conn, raw = conns
    sql, params = query.statement_sql(conn, stmt)
    return " | ".join(r[3] for r in raw.execute(f"EXPLAIN QUERY PLAN {sql}", params))


@pytest.mark.parametrize(
    ("filters", "expected"),
    [
        (
            query.Filters(
                endpoints=("acme/upscaler",),
                statuses=("error",),
                since=DAY,
                until=DAY + timedelta(days=1),
            ),
            "SEARCH requests USING INDEX ix_requests_endpoint_ended (endpoint_id=? AND ended_at>? AND ended_at<?)",
        ),
        (
            query.Filters(endpoints=("acme/flux-lora",), since=DAY),  # an app id and its routes
            "SEARCH requests USING INDEX ix_requests_endpoint_ended (endpoint_id=? AND ended_at>?)",
        ),
        (
            query.Filters(statuses=("error", "user_error"), since=DAY),
            "SEARCH requests USING INDEX ix_requests_status_ended (status=? AND ended_at>?)",
        ),
        (
            query.Filters(since=DAY, until=DAY + timedelta(hours=8)),
            "SEARCH requests USING INDEX ix_requests_ended_at (ended_at>? AND ended_at<?)",
        ),
        (
            query.Filters(since=DAY, until=DAY + timedelta(hours=8), time_field="sent_at"),
            "SEARCH requests USING INDEX ix_requests_sent_at (sent_at>? AND sent_at<?)",
        ),
        (
            query.Filters(request_ids=("req-5-00001", "req-5-00002")),
            "SEARCH requests USING INDEX sqlite_autoindex_requests_1 (request_id=?)",
        ),
    ],
    ids=["endpoint+status+day", "app-id", "status+since", "time-range", "sent_at", "by-id"],
)
def test_listings_search_an_index(conns, filters, expected):
    sort = filters.time_field  # sorting by the filtered time, as --time-field sent_at users do
    stmt = query.listing_statement(conns[0], filters, sort=sort, limit=50)
    plan = plan_of(conns, stmt)
    assert expected in plan, f"unexpected plan: {plan}"


def test_newest_first_without_filters_reads_the_time_index_backwards(conns):
    plan = plan_of(conns, query.listing_statement(conns[0], query.Filters(), limit=20))
    assert plan.startswith("SCAN requests USING INDEX ix_requests_ended_at"), plan
    assert "USE TEMP B-TREE FOR ORDER BY" not in plan, f"sorts every row: {plan}"


def test_full_text_search_uses_the_fts_index(conns):
    stmt = query.listing_statement(conns[0], query.Filters(search="lighthouse"), limit=20)
    plan = plan_of(conns, stmt)
    assert "VIRTUAL TABLE INDEX 0:M" in plan and "requests_fts" in plan, plan


@pytest.mark.parametrize("by", [("endpoint", "day"), ("endpoint", "hour"), ("endpoint",), ()])
def test_stats_read_only_the_covering_index_in_group_order(conns, by):
    rows_plan = plan_of(conns, query.stats_statement(query.Filters(), by, "sqlite"))
    durations_plan = plan_of(conns, query.durations_statement(query.Filters(), by, None))
    for plan in (rows_plan, durations_plan):
        assert plan == "SCAN requests USING COVERING INDEX ix_requests_endpoint_ended", plan


def test_stats_of_one_endpoint_and_day_seek_the_covering_index(conns):
    f = query.Filters(endpoints=("acme/upscaler",), since=DAY, until=DAY + timedelta(days=1))
    ids = query.resolve_endpoints(conns[0], f.endpoints)
    plan = plan_of(conns, query.stats_statement(f, ("day",), "sqlite", endpoint_ids=ids))
    assert plan == (
        "SEARCH requests USING COVERING INDEX ix_requests_endpoint_ended "
        "(endpoint_id=? AND ended_at>? AND ended_at<?)"
    ), plan
