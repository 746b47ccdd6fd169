"""Spend, answered from the mirror alone: what fal charged, and an estimate where it did not
say (``mirror cost``; the figures ``mirror stats`` can show).

Two sources, never mixed up:

- **billed**: the billing events (``billing_events``), fal's own charge per request,
  summed exactly as integers of nano-USD (``cost_estimate_nano_usd``) and dated by their
  ``timestamp``;
- **estimated**: successful requests the mirror holds that have no billing event (the key
  could not read billing events, or fal has not billed them yet), each priced at the price
  in force when it ended (``prices``: the latest price seen at or before then; before the
  first price seen, that first price), for its ``billable_units`` when known and one unit
  otherwise (a model request does not say how many images it made), in millionths of a
  unit. Dated by ``ended_at``. Only prices in USD are used; requests of the model history
  that cannot be priced that way are counted as ``unpriced``. Those requests are counted
  per hour as they are written (``mirror.unbilled``), not looked up one by one.

Every row says which part is which: ``billed_*`` and ``events``, ``estimated_*`` and
``estimated`` (requests), their sum ``total_*``, and ``unpriced``. Amounts are integers of
nano-USD (``*_nano_usd``) and the same amounts as exact decimal text of USD (``*_usd``):
no binary floating point anywhere between fal's figures and what is printed.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from decimal import ROUND_HALF_EVEN, Decimal
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from mirror.billing_api import UsageLine
from mirror.query import check_time_range, endpoint_clause, named_groups
from mirror.schema import billing_events, day_of, prices
from mirror.timeparse import to_text
from mirror.unbilled import unbilled

__all__ = [
    "COLUMNS",
    "GROUPS",
    "TABLE_COLUMNS",
    "CostFilters",
    "check_groups",
    "spend",
    "spend_notes",
    "usage_differences",
    "usd_text",
]

GROUPS = ("day", "endpoint", "key")
NANO = 1_000_000_000
#: units are counted in millionths (``mirror.unbilled``)
MICRO = 1_000_000
#: every column of a `spend` row after its group keys, in output order
COLUMNS = (
    "events",
    "billed_usd",
    "billed_nano_usd",
    "estimated",
    "estimated_usd",
    "estimated_nano_usd",
    "total_usd",
    "total_nano_usd",
    "unpriced",
)
#: the columns a person reads (the nano-USD integers are for programs)
TABLE_COLUMNS = ("events", "billed_usd", "estimated", "estimated_usd", "total_usd", "unpriced")
#: the only currency amounts are added up in
CURRENCY = "USD"


@dataclass(frozen=True, kw_only=True)
class CostFilters:
    """Which spend a question is about: ``since`` inclusive, ``until`` exclusive (billing
    events by ``timestamp``, estimated requests by ``ended_at``); an endpoint that is an
    app id also covers its routes."""

    since: datetime | None = None
    until: datetime | None = None
    endpoints: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "endpoints", tuple(self.endpoints))
        check_time_range(self.since, self.until)


def check_groups(by: Iterable[str]) -> tuple[str, ...]:
    return named_groups(by, GROUPS, "group spend")


def usd_text(nano: int) -> str:
    """Nano-USD as exact decimal text of USD, at least to the cent: 45,000,000 is
    ``0.045``, 1,000,000,000 is ``1.00``, 7 is ``0.000000007``."""
    sign = "-" if nano < 0 else ""
    whole, frac = divmod(abs(nano), NANO)
    digits = f"{frac:09d}".rstrip("0").ljust(2, "0")
    return f"{sign}{whole}.{digits}"


@dataclass
class _Spend:
    events: int = 0
    billed: int = 0
    estimated: int = 0
    estimated_nano: int = 0
    unpriced: int = 0
    keys: dict[str, Any] = field(default_factory=dict)

    def row(self) -> dict[str, Any]:
        total = self.billed + self.estimated_nano
        return {
            **self.keys,
            "events": self.events,
            "billed_usd": usd_text(self.billed),
            "billed_nano_usd": self.billed,
            "estimated": self.estimated,
            "estimated_usd": usd_text(self.estimated_nano),
            "estimated_nano_usd": self.estimated_nano,
            "total_usd": usd_text(total),
            "total_nano_usd": total,
            "unpriced": self.unpriced,
        }


def _key_expr(group: str, *, endpoint: Any, at: Any, who: Any) -> Any:
    if group == "day":
        return day_of(at)
    if group == "endpoint":
        return endpoint
    return who


def _caller() -> Any:
    """Who made the call, as one text: the API key id, else ``user:`` and the team member,
    else fal's label of the auth method."""
    e = billing_events.c
    return sa.func.coalesce(e.api_key_id, sa.literal("user:") + e.login_username, e.auth_method)


def _range(
    column: Any, filters: CostFilters, lo: str | None = None, hi: str | None = None
) -> list[Any]:
    """``column`` within the filters' range and within [``lo``, ``hi``) (canonical text)."""
    bounds_lo = [b for b in (lo, filters.since and to_text(filters.since)) if b]
    bounds_hi = [b for b in (hi, filters.until and to_text(filters.until)) if b]
    out = []
    if bounds_lo:
        out.append(column >= max(bounds_lo))
    if bounds_hi:
        out.append(column < min(bounds_hi))
    return out


def _billed(conn: Connection, filters: CostFilters, by: Sequence[str]) -> Iterable[Any]:
    e = billing_events.c
    keys = [
        _key_expr(g, endpoint=e.endpoint_id, at=e.timestamp, who=_caller()).label(g) for g in by
    ]
    where = _range(e.timestamp, filters)
    if filters.endpoints:
        where.append(endpoint_clause(e.endpoint_id, filters.endpoints))
    q = (
        sa.select(*keys, sa.func.count(), sa.func.sum(e.cost_estimate_nano_usd))
        .where(*where)
        .group_by(*keys)
    )
    return conn.execute(q)


def _price_periods(conn: Connection) -> dict[str, list[tuple[str | None, str | None, Any]]]:
    """Per endpoint: (from, until, price row) of each price seen, the first from the start
    of time and the last until the end of it."""
    p = prices.c
    rows = conn.execute(sa.select(prices).order_by(p.endpoint_id, p.seen_at)).all()
    out: dict[str, list[tuple[str | None, str | None, Any]]] = {}
    for k, row in enumerate(rows):
        same_next = k + 1 < len(rows) and rows[k + 1].endpoint_id == row.endpoint_id
        periods = out.setdefault(row.endpoint_id, [])
        start = row.seen_at if periods else None
        periods.append((start, rows[k + 1].seen_at if same_next else None, row))
    return out


def _estimated(
    conn: Connection, filters: CostFilters, by: Sequence[str], acc: dict[tuple[Any, ...], _Spend]
) -> None:
    """Add the estimated part: per endpoint and period of one price, the unbilled requests'
    units at that price (in USD; any other currency leaves them unpriced), then the model
    requests of endpoints with no price at all, unpriced. The requests come counted per
    hour (``mirror.unbilled``); each group's units are priced once, rounded half to even."""

    def keys(endpoint: Any, at: Any) -> tuple[list[Any], list[Any]]:
        exprs = [_key_expr(g, endpoint=endpoint, at=at, who=sa.null()).label(g) for g in by]
        # estimates have no caller: a constant column, which PostgreSQL refuses to group by
        return exprs, [k for g, k in zip(by, exprs, strict=True) if g != "key"]

    since = to_text(filters.since) if filters.since else None
    until = to_text(filters.until) if filters.until else None
    periods = _price_periods(conn)
    for endpoint_id, spans in periods.items():
        for start, end, price in spans:
            lo = max((b for b in (start, since) if b), default=None)
            hi = min((b for b in (end, until) if b), default=None)
            found = unbilled(conn, keys, lo=lo, hi=hi,
                             endpoints=_endpoints(filters, only=endpoint_id))  # fmt: skip
            unit_nano = Decimal(repr(price.unit_price)) * NANO
            for key, (n, micro) in found.items():
                s = _slot(acc, by, key)
                if price.currency != CURRENCY:
                    s.unpriced += n
                    continue
                s.estimated += n
                s.estimated_nano += int(
                    (micro * unit_nano / MICRO).to_integral_value(ROUND_HALF_EVEN)
                )
    found = unbilled(conn, keys, lo=since, hi=until, history="model",
                     endpoints=_endpoints(filters, besides=list(periods)))  # fmt: skip
    for key, (n, _micro) in found.items():
        _slot(acc, by, key).unpriced += n


def _endpoints(
    filters: CostFilters, *, only: str | None = None, besides: Sequence[str] = ()
) -> Callable[[Any], list[Any]]:
    """The conditions on an endpoint column: the filters' endpoints, and ``only`` one or
    none of ``besides``."""

    def where(column: Any) -> list[Any]:
        out = [endpoint_clause(column, filters.endpoints)] if filters.endpoints else []
        if only is not None:
            out.append(column == only)
        if besides:
            out.append(column.not_in(besides))
        return out

    return where


def _slot(acc: dict[tuple[Any, ...], _Spend], by: Sequence[str], key: tuple[Any, ...]) -> _Spend:
    s = acc.get(key)
    if s is None:
        s = acc[key] = _Spend(keys=dict(zip(by, key, strict=True)))
    return s


def spend(
    conn: Connection, filters: CostFilters, *, by: Sequence[str] = (), estimate: bool = True
) -> list[dict[str, Any]]:
    """Spend per group of ``by`` (any of ``day``, ``endpoint``, ``key``), in ascending key
    order (null first: estimated requests have no ``key``): the billed part exact, the
    estimated part (unless ``estimate`` is false) and their total, as `COLUMNS` after the
    group keys. With no ``by``, one row for everything (zeros when nothing matches)."""
    groups = check_groups(by)
    acc: dict[tuple[Any, ...], _Spend] = {}
    for *key, n, nano in _billed(conn, filters, groups):
        if not n:
            continue
        s = _slot(acc, groups, tuple(key))
        s.events += n
        s.billed += int(nano or 0)  # PostgreSQL sums bigints as numeric: exact all the same
    if estimate:
        _estimated(conn, filters, groups, acc)
    if not acc and not groups:
        acc[()] = _Spend()
    return [acc[k].row() for k in sorted(acc, key=lambda k: tuple((v is not None, v) for v in k))]


def spend_notes(rows: Iterable[Mapping[str, Any]]) -> list[str]:
    """What a person reading `spend`'s table must be told: which part is an estimate, and
    how many requests could not be priced."""
    rows = list(rows)
    estimated = sum(r["estimated"] for r in rows)
    unpriced = sum(r["unpriced"] for r in rows)
    notes = []
    if estimated:
        notes.append(
            f"estimated_usd is an estimate: {estimated} requests without a billing event, "
            "priced at the price seen for their time"
        )
    if unpriced:
        notes.append(f"{unpriced} model requests without a billing event have no price in USD")
    return notes


def usage_differences(
    conn: Connection, lines: Iterable[UsageLine], filters: CostFilters
) -> list[dict[str, Any]]:
    """Where the billing events the mirror holds disagree with fal's own usage totals
    (``mirror.billing_api.fetch_usage`` for the same range, by UTC day): one row per day
    and endpoint whose sums differ, ``mirror_nano_usd`` against ``usage_nano_usd``, in
    day and endpoint order. Empty when every nano-USD agrees. Usage lines in another
    currency than USD are not compared."""
    theirs: dict[tuple[str, str], int] = {}
    for line in lines:
        if line.currency == CURRENCY:
            key = (line.bucket[:10], line.endpoint_id)
            theirs[key] = theirs.get(key, 0) + line.cost_total_nano
    ours = {
        (r["day"], r["endpoint"]): r["billed_nano_usd"]
        for r in spend(conn, filters, by=("day", "endpoint"), estimate=False)
    }
    out = []
    for day, endpoint in sorted(ours.keys() | theirs.keys()):
        mine, fal = ours.get((day, endpoint), 0), theirs.get((day, endpoint), 0)
        if mine != fal:
            out.append({"day": day, "endpoint": endpoint, "mirror_nano_usd": mine,
                        "usage_nano_usd": fal, "difference_nano_usd": mine - fal})  # fmt: skip
    return out
