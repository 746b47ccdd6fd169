"""Successful requests without a billing event, counted without a probe per request.

``mirror cost`` estimates what fal has not billed (yet). Those requests are kept apart as
they are written, in ``unbilled_hourly`` (migration 0015): per hour of ``ended_at``,
endpoint and history, how many and their units in exact integer millionths
(``billable_units``, one where a row has none). Triggers on ``requests`` and
``billing_events`` keep it in the transaction of every write, whoever writes (a sync,
``mirror copy``, ``verify --repair``'s deletes, the ``sqlite3`` shell): an event arriving
after its request takes the request out, a request arriving after its event never enters.
A sync's own inserts on SQLite are added once per batch (`BATCH_NEW`, run by
``Store.upsert`` through ``mirror.rollups.batch_statements``).

`unbilled` answers for any range of instants: the whole hours inside it from the rollup,
and the pieces of an hour at either end (a price that changed mid-hour, a ``--since`` of
10:30) from ``requests`` themselves, the one probe per request left only for those. Both
parts count units the same way (integer millionths), so the answer is the same however the
range falls on hours.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from mirror.schema import billing_events, requests, unbilled_hourly
from mirror.timeparse import from_text, to_text

__all__ = ["BATCH_NEW", "Keys", "unbilled"]

# The rows a batch inserted (rowid > ?) that qualify, added group by group: the same
# rows and sums as the row-by-row insert trigger of migration 0015. NOT INDEXED: the batch's
# rows are found by rowid, which SQLite still may use; left to itself it reads them through
# ix_requests_status_ended instead, every success row of the table (for a status and any
# ended_at), so each batch would cost more as the mirror grows.
BATCH_NEW = """
INSERT INTO unbilled_hourly (hour, endpoint_id, history, requests, units_micro)
SELECT substr(r.ended_at, 1, 13) || ':00:00.000000Z' AS h, r.endpoint_id, r.history, count(*),
       sum(CAST(round(COALESCE(r.billable_units, 1.0) * 1000000) AS INTEGER))
FROM requests r NOT INDEXED
WHERE r.rowid > ? AND r.status = 'success' AND r.ended_at IS NOT NULL
  AND NOT EXISTS (SELECT 1 FROM billing_events e WHERE e.request_id = r.request_id)
GROUP BY r.endpoint_id, h, r.history
ON CONFLICT (endpoint_id, hour, history) DO UPDATE SET
    requests = unbilled_hourly.requests + excluded.requests,
    units_micro = unbilled_hourly.units_micro + excluded.units_micro
"""

#: the group keys of a question over (endpoint column, instant column): the expressions to
#: select and those to group by
Keys = Callable[[Any, Any], tuple[Sequence[Any], Sequence[Any]]]


def _floor(t: str) -> str:
    return t[:13] + ":00:00.000000Z"


def _ceil(t: str) -> str:
    f = _floor(t)
    return f if f == t else to_text(from_text(f) + timedelta(hours=1))


def _micro(conn: Connection, units: Any) -> Any:
    """Units in integer millionths, rounded half away from zero on both backends, as the
    triggers round them."""
    x = sa.func.coalesce(units, 1.0)
    if conn.dialect.name == "postgresql":
        half = sa.case((x < 0, -0.5), else_=0.5)
        return sa.cast(sa.func.trunc(x * 1_000_000 + half), sa.BigInteger)
    return sa.cast(sa.func.round(x * 1_000_000), sa.Integer)


Span = tuple[str | None, str | None]


def _pieces(lo: str | None, hi: str | None) -> tuple[Span | None, list[Span]]:
    """[lo, hi) as (the whole hours in it, or None; the pieces of hours left at its ends)."""
    if lo is not None and hi is not None and lo >= hi:
        return None, []
    h_lo = _ceil(lo) if lo is not None else None
    h_hi = _floor(hi) if hi is not None else None
    if h_lo is not None and h_hi is not None and h_lo >= h_hi:
        return None, [(lo, hi)]
    ends: list[Span] = []
    if lo is not None and lo != h_lo:
        ends.append((lo, h_lo))
    if hi is not None and hi != h_hi:
        ends.append((h_hi, hi))
    return (h_lo, h_hi), ends


def _within(column: Any, lo: str | None, hi: str | None) -> list[Any]:
    out = []
    if lo is not None:
        out.append(column >= lo)
    if hi is not None:
        out.append(column < hi)
    return out


def unbilled(
    conn: Connection,
    keys: Keys,
    *,
    lo: str | None,
    hi: str | None,
    endpoints: Callable[[Any], Sequence[Any]],
    history: str | None = None,
) -> dict[tuple[Any, ...], list[int]]:
    """Per group of ``keys``: [requests, units in millionths] of the successful requests
    without a billing event that ended in [``lo``, ``hi``) (canonical text; None: no bound),
    of the endpoints ``endpoints`` (a column -> conditions) and, if given, of ``history``."""
    out: dict[tuple[Any, ...], list[int]] = {}

    def add(q: Any) -> None:
        for *key, n, micro in conn.execute(q):
            if n:  # the one row an aggregate without groups gives for no rows
                slot = out.setdefault(tuple(key), [0, 0])
                slot[0] += int(n)
                slot[1] += int(micro)

    hours, ends = _pieces(lo, hi)
    if hours is not None:
        u = unbilled_hourly.c
        select, group = keys(u.endpoint_id, u.hour)
        where = [*endpoints(u.endpoint_id), *_within(u.hour, *hours)]
        if history is not None:
            where.append(u.history == history)
        add(
            sa.select(*select, sa.func.sum(u.requests), sa.func.sum(u.units_micro))
            .where(*where)
            .group_by(*group)
        )
    r = requests.c
    select, group = keys(r.endpoint_id, r.ended_at)
    for a, b in ends:
        where = [
            r.status == "success",
            r.ended_at.is_not(None),
            ~sa.exists().where(billing_events.c.request_id == r.request_id),
            *endpoints(r.endpoint_id),
            *_within(r.ended_at, a, b),
        ]
        if history is not None:
            where.append(r.history == history)
        add(
            sa.select(*select, sa.func.count(), sa.func.sum(_micro(conn, r.billable_units)))
            .where(*where)
            .group_by(*group)
        )
    return out
