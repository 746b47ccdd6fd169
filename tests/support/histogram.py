"""The duration histogram read from Python: the reference the tests hold Datasette's latency
canned query (``mirror/datasette.yml``) and the histogram's stated error bound against."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from itertools import groupby
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from mirror import rollups
from mirror.schema import duration_buckets, duration_histogram

#: a bucket's value is within this share of every duration in the bucket
ALPHA = 0.02
#: durations below this many seconds share bucket 0, whose value is 0
SMALLEST = 1e-6


def histogram_statement(
    by: Sequence[str],
    *,
    endpoint_ids: Sequence[str] | None = None,
    statuses: Sequence[str] = (),
    since: datetime | None = None,
    until: datetime | None = None,
) -> sa.Select[Any]:
    """Per group of ``by``, each bucket's value and count, in group then bucket order."""
    h = duration_histogram.c
    b = duration_buckets.c
    exprs = [
        e.label(f"k{i}")
        for i, e in enumerate(rollups.key_exprs(by, h.endpoint_id, h.status, h.hour))
    ]
    keys: list[Any] = [sa.literal_column(e.name) for e in exprs]
    return (
        sa.select(*exprs, b.value, sa.func.sum(h.requests))
        .select_from(duration_histogram.join(duration_buckets, b.bucket == h.bucket))
        .where(*rollups.hour_filters(duration_histogram, endpoint_ids, statuses, since, until))
        .group_by(*keys, h.bucket, b.value)
        .order_by(*keys, h.bucket)
    )


def percentiles_of_buckets(
    counts: Sequence[tuple[float, int]], percentiles: Sequence[int] = rollups.PERCENTILES
) -> list[float | None]:
    """Percentiles (0-100) of a histogram given as (bucket value, count), ascending.

    ``percentile_cont``'s formula over the values the buckets stand for: with n durations and
    ``h = p/100 * (n-1)``, the values of the buckets holding ranks ``floor(h)`` and ``ceil(h)``
    interpolated. Each is within `ALPHA` of the exact figure over the durations themselves.
    """
    n = sum(c for _, c in counts)
    out: list[float | None] = []
    for p in percentiles:
        if n == 0:
            out.append(None)
            continue
        h = (p / 100) * (n - 1)
        lo = int(h)
        hi = lo + (h > lo)
        lo_v = hi_v = None
        seen = 0
        for value, c in counts:
            seen += c
            if lo_v is None and seen > lo:
                lo_v = value
            if seen > hi:
                hi_v = value
                break
        assert lo_v is not None and hi_v is not None
        out.append(lo_v if hi == lo else lo_v + ((h - lo) * (hi_v - lo_v)))
    return out


def duration_percentiles(
    conn: Connection,
    by: Sequence[str] = ("hour",),
    *,
    endpoint_ids: Sequence[str] | None = None,
    statuses: Sequence[str] = (),
    since: datetime | None = None,
    until: datetime | None = None,
    percentiles: Sequence[int] = rollups.PERCENTILES,
) -> list[dict[str, Any]]:
    """Per group of ``by`` (any of ``endpoint``, ``status``, and ``hour`` or ``day`` of
    ``ended_at``), in ascending key order: ``requests`` (how many have a duration, exact),
    ``p50`` … (within `ALPHA`), ``max`` (the highest bucket's value, within `ALPHA`).

    ``endpoint_ids`` are exact ids (``mirror.query.resolve_endpoints`` turns app ids into
    their routes); ``since`` / ``until`` are taken to their hour. SQLite and PostgreSQL.
    """
    k = len(by)
    stmt = histogram_statement(
        by, endpoint_ids=endpoint_ids, statuses=statuses, since=since, until=until
    )
    out = []
    for key, rows in groupby(conn.execute(stmt), key=lambda r: tuple(r[:k])):
        counts = [(float(r[k]), int(r[k + 1])) for r in rows]
        row: dict[str, Any] = dict(zip(by, key, strict=True))
        row["requests"] = sum(c for _, c in counts)
        for p, v in zip(percentiles, percentiles_of_buckets(counts, percentiles), strict=True):
            row[f"p{p}"] = v
        row["max"] = counts[-1][0]
        out.append(row)
    return out
