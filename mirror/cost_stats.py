"""Spend beside `mirror stats`' figures (``stats --cost``): no click, no printing.

The spend of each group is ``mirror.cost.spend``'s (billed exactly, estimated where no
billing event exists, each part grouped in SQL: no Python per request or event), joined on
the same ``day`` and ``endpoint`` keys stats groups by. ``--by key`` (who made the call, as
billing events say) has no request figures: requests do not carry their key, so those rows
are spend alone, over the billing events.

The columns: ``cost_usd`` (billed plus estimated), ``cost_per_request_usd`` (that total
over the requests it covers: the billing events and the estimated requests of the group),
and for programs the same as integers of nano-USD (``cost_nano_usd``,
``cost_per_request_nano_usd``, rounded half to even).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy.engine import Connection

from mirror.cost import CostFilters, spend, usd_text
from mirror.errors import ConfigError
from mirror.query import Filters, named_groups

__all__ = ["COLUMNS", "EXACT_COLUMNS", "GROUPS", "add_spend", "check", "cost_filters"]

#: the groups spend can be joined on (``key``: spend alone)
GROUPS = ("day", "endpoint", "key")
#: what a person reads
COLUMNS = ("cost_usd", "cost_per_request_usd")
#: the same for programs (json, jsonl, csv)
EXACT_COLUMNS = ("cost_nano_usd", "cost_per_request_nano_usd")


def check(groups: Sequence[str], filters: Filters) -> tuple[str, ...]:
    """``groups``, or `ConfigError` unless spend answers them and the filters as asked."""
    checked = named_groups(groups, GROUPS, "group --cost")
    narrowing = [
        name
        for name, on in (
            ("--status", filters.statuses),
            ("--status-code", filters.status_codes),
            ("--request-id", filters.request_ids),
            ("--min-duration", filters.min_duration is not None),
            ("--max-duration", filters.max_duration is not None),
            ("--search", filters.search),
            ("--history", filters.histories),
        )
        if on
    ]
    if narrowing:
        raise ConfigError(
            f"--cost sums billing events, which {narrowing[0]} cannot select: leave it out"
        )
    if filters.time_field != "ended_at" and (filters.since or filters.until):
        raise ConfigError("--cost dates requests by ended_at: leave out --time-field")
    return checked


def cost_filters(filters: Filters) -> CostFilters:
    return CostFilters(since=filters.since, until=filters.until, endpoints=filters.endpoints)


def _per_request(total: int, n: int) -> int | None:
    if not n:
        return None
    q, r = divmod(total, n)
    return q + (1 if 2 * r > n or (2 * r == n and q % 2) else 0)


def add_spend(
    conn: Connection,
    filters: Filters,
    groups: Sequence[str],
    result: list[dict[str, Any]],
) -> list[dict[str, Any]]:
    """``result`` (stats rows keyed by ``groups``) with the spend columns added; a group
    with spend but no stats row (billing events of requests the mirror does not hold) is
    a row of its own with no request figures. With ``key`` in ``groups``: spend rows alone."""
    rows = {tuple(r[g] for g in groups): r for r in result}
    if "key" in groups:
        rows = {}
    for s in spend(conn, cost_filters(filters), by=groups):
        key = tuple(s[g] for g in groups)
        row = rows.get(key)
        if row is None:
            row = rows[key] = {g: s[g] for g in groups}
        n = s["events"] + s["estimated"]
        per = _per_request(s["total_nano_usd"], n)
        row.update(
            cost_usd=s["total_usd"],
            cost_nano_usd=s["total_nano_usd"],
            cost_per_request_usd=None if per is None else usd_text(per),
            cost_per_request_nano_usd=per,
        )
    out = []
    for key in sorted(rows, key=lambda k: tuple((v is not None, v) for v in k)):
        row = rows[key]
        for c in (*COLUMNS, *EXACT_COLUMNS):
            row.setdefault(c, None)
        out.append(row)
    return out
