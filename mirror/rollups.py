"""The rollups: what the mirror keeps summed per hour as its rows change, and reading them.

Two tables, both per hour (of ``ended_at``), endpoint and status, so that questions over
long ranges read a few rows per hour instead of every request. `mirror stats` and
`mirror report` (through ``mirror.query.stats``: counts and billable units) and Datasette's
canned queries and facets (``mirror/datasette.yml``, ``mirror.datasette_plugin``) read
these same tables:

- ``summary_hourly`` (migration 0002): how many requests, and the exact integer sums of
  their durations (microseconds) and billable units (millionths), which stay exact under
  the subtractions of updates and deletes.
- ``duration_histogram`` (migration 0011): how many durations fell in each bucket of the
  fixed log scale ``duration_buckets`` (each bucket's value within 2% of every duration in
  it; durations under 1 µs share bucket 0). It is a mergeable sketch: the histograms of any
  hours and endpoints add up bucket by bucket into the histogram of their union, so
  percentiles over any range come from at most a few hundred rows per hour, each within 2%
  of the exact ``percentile_cont`` figure (Datasette's latency canned query reads them so).

Both are kept exact by triggers on ``requests`` for every writer (a sync, ``mirror copy``,
the ``sqlite3`` shell); a sync does the insert triggers' work once per batch instead of row
by row (`batch_statements`, run by ``Store.upsert``).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from mirror.schema import day_of, hour_of, summary_hourly
from mirror.timeparse import to_text
from mirror.unbilled import BATCH_NEW

#: the percentiles mirror reports
PERCENTILES = (50, 90, 95, 99)

# --------------------------------------------------------------------------- maintenance

#: a duration's bucket: the one with the largest lower bound not above it (0 below them all)
BUCKET_OF_DURATION = (
    "COALESCE((SELECT b.bucket FROM duration_buckets b WHERE b.lower <= duration "
    "ORDER BY b.lower DESC LIMIT 1), 0)"
)
# The rows a batch inserted (rowid > ?) added group by group: the same integer sums per hour
# as the row-by-row trigger of migration 0002, the same counts per bucket as 0011's. NOT
# INDEXED keeps the planner on the rowid range (``mirror.unbilled.BATCH_NEW`` says why).
SUMMARIZE_NEW = """
INSERT INTO summary_hourly (hour, endpoint_id, status, requests, durations, duration_us,
                            billed, billable_micro)
SELECT substr(ended_at, 1, 13) || ':00:00Z' AS h, endpoint_id, status, count(*),
       count(duration), COALESCE(sum(CAST(round(duration * 1000000) AS INTEGER)), 0),
       count(billable_units), COALESCE(sum(CAST(round(billable_units * 1000000) AS INTEGER)), 0)
FROM requests NOT INDEXED WHERE rowid > ? AND ended_at IS NOT NULL
GROUP BY h, endpoint_id, status
ON CONFLICT (hour, endpoint_id, status) DO UPDATE SET
    requests = requests + excluded.requests,
    durations = durations + excluded.durations,
    duration_us = duration_us + excluded.duration_us,
    billed = billed + excluded.billed,
    billable_micro = billable_micro + excluded.billable_micro
"""
HISTOGRAM_NEW = f"""
INSERT INTO duration_histogram (hour, bucket, endpoint_id, status, requests)
SELECT substr(ended_at, 1, 13) || ':00:00Z' AS h, {BUCKET_OF_DURATION} AS b, endpoint_id,
       status, count(*)
FROM requests NOT INDEXED WHERE rowid > ? AND ended_at IS NOT NULL AND duration IS NOT NULL
GROUP BY h, b, endpoint_id, status
ON CONFLICT (hour, bucket, endpoint_id, status) DO UPDATE SET
    requests = requests + excluded.requests
"""


def batch_statements(conn: Connection) -> tuple[str, ...]:
    """The statements that add a batch's inserted rows (parameter: the largest rowid before
    the batch) to the rollups this SQLite file has: the summary from revision 0005 on, the
    histogram from 0011 on, the unbilled requests (``mirror.unbilled``) from 0015 on
    (benchmarks and tests also write to older revisions)."""
    tables = {
        name
        for (name,) in conn.exec_driver_sql(
            "SELECT name FROM sqlite_master WHERE type = 'table' "
            "AND name IN ('duration_histogram', 'unbilled_hourly')"
        )
    }
    return (
        SUMMARIZE_NEW,
        *((HISTOGRAM_NEW,) if "duration_histogram" in tables else ()),
        *((BATCH_NEW,) if "unbilled_hourly" in tables else ()),
    )


# --------------------------------------------------------------------------- reading


def hour_text(t: datetime) -> str:
    """The hour ``t`` falls in, as the rollups name it on SQLite (``2026-11-28T10:00:00Z``)."""
    return to_text(t)[:13] + ":00:00Z"


def key_exprs(
    by: Sequence[str], endpoint: Any, status: Any, t: Any, history: Any = None
) -> list[Any]:
    """The group keys of ``by`` (``endpoint``, ``status``, ``hour``, ``day``, and
    ``history`` where the columns have one) over some columns; hours are the text of the
    hour's first instant, days ``YYYY-MM-DD``."""
    exprs: list[Any] = []
    for g in by:
        if g == "endpoint":
            exprs.append(endpoint)
        elif g == "status":
            exprs.append(status)
        elif g == "history":
            if history is None:
                raise ValueError("these columns have no history to group by")
            exprs.append(history)
        elif g == "hour":
            exprs.append(hour_of(t).concat(":00:00Z"))
        else:
            exprs.append(day_of(t))
    return exprs


def hour_filters(
    table: sa.Table,
    endpoint_ids: Sequence[str] | None,
    statuses: Sequence[str],
    since: datetime | None,
    until: datetime | None,
) -> list[Any]:
    c = table.c
    out: list[Any] = []
    if endpoint_ids is not None:
        out.append(c.endpoint_id.in_(endpoint_ids))
    if statuses:
        out.append(c.status.in_(statuses))
    if since is not None:
        out.append(c.hour >= hour_text(since))
    if until is not None:
        out.append(c.hour < hour_text(until))
    return out


def summary_statement(
    by: Sequence[str],
    *,
    endpoint_ids: Sequence[str] | None = None,
    statuses: Sequence[str] = (),
    since: datetime | None = None,
    until: datetime | None = None,
) -> sa.Select[Any]:
    """Per group of ``by`` and status: requests, requests with a duration, billable
    millionths, from ``summary_hourly`` (SQLite). ``since`` / ``until`` are taken to their
    hour: the caller asks in whole hours."""
    s = summary_hourly.c
    exprs = key_exprs(by, s.endpoint_id, s.status, s.hour)
    return (
        sa.select(*exprs, s.status, sa.func.sum(s.requests), sa.func.sum(s.durations),
                  sa.func.sum(s.billable_micro))
        .where(*hour_filters(summary_hourly, endpoint_ids, statuses, since, until))
        .group_by(*exprs, s.status)
    )  # fmt: skip
