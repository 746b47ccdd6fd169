"""The cost operations of the simulated API: ``/models/billing-events``, ``/models/pricing``
and ``/models/usage``, from a call's parameters to its 200 body (or an ``ApiError``).

The data is the `Ledger`'s (``mirror.simulator.billing``); the server checks the key's
scope (ADMIN for billing events and usage) and sends the answer. Decided here, where fal's
description is silent: billing events page 100 per page by default, and a larger ``limit``
than the documented 10,000 is served as 10,000; usage pages its buckets like analytics
(100 by default, at most 1,000), dense; pricing answers one page, leaving out endpoints
that are not priced per request (the account's own apps); a filter on ``api_key_id`` and
``login_username`` together selects calls matching either.
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Mapping
from datetime import datetime, timedelta
from typing import Any

from mirror.simulator import analytics
from mirror.simulator.billing import BillingEvent, EventQuery, Ledger, usage_lines
from mirror.simulator.params import (
    MAX_IDS,
    decode_cursor,
    encode_cursor,
    endpoint_ids,
    enum,
    integer,
    invalid,
    last,
    split,
    timezone,
    window_or_default,
)
from mirror.simulator.world import to_us

__all__ = [
    "EVENTS_DEFAULT_LIMIT",
    "EVENTS_MAX_LIMIT",
    "MAX_RANGE",
    "billing_events",
    "pricing",
    "usage",
]

#: the longest ``start``..``end`` one billing-events call may span (fal: "capped at 90 days")
MAX_RANGE = timedelta(days=90)
EVENTS_DEFAULT_LIMIT = 100
#: fal: "Limited to 10000 records per page"
EVENTS_MAX_LIMIT = 10_000
_USAGE_DEFAULT_LIMIT = 100
_USAGE_MAX_LIMIT = 1000
_DEFAULT_START = timedelta(hours=24)
_EVENT_EXPAND = ("auth_method", "auth_method_structured")
_USAGE_EXPAND = ("time_series", "summary", *_EVENT_EXPAND)


def _ids(params: Mapping[str, list[str]], name: str) -> tuple[str, ...]:
    values = split(params, name)
    if len(values) > MAX_IDS:
        raise invalid(f"Too many {name} values: {len(values)} given, at most 50 allowed")
    return tuple(values)


def _expand(params: Mapping[str, list[str]], allowed: tuple[str, ...]) -> list[str]:
    values = split(params, "expand")
    for value in values:
        if value not in allowed:
            raise invalid(f"Invalid expand value {value!r}; allowed: {', '.join(allowed)}")
    return values


def _range(params: Mapping[str, list[str]], now: datetime) -> tuple[datetime, datetime]:
    """``start`` and ``end`` with their defaults (24 hours ago, now)."""
    return window_or_default(params, now, _DEFAULT_START)


def _query(
    params: Mapping[str, list[str]], start: datetime, end: datetime, *, by_request: bool
) -> EventQuery:
    return EventQuery(
        start=start,
        end=end,
        endpoint_ids=tuple(endpoint_ids(params, required=False)),
        request_ids=_ids(params, "request_id") if by_request else (),
        api_key_ids=_ids(params, "api_key_id"),
        login_usernames=_ids(params, "login_username"),
    )


def billing_events(
    ledger: Ledger, params: Mapping[str, list[str]], now: datetime
) -> dict[str, Any]:
    """One page of billing events, newest first, paged by page-number cursor."""
    limit = min(integer(params, "limit", EVENTS_DEFAULT_LIMIT, 1, None), EVENTS_MAX_LIMIT)
    cursor = last(params, "cursor")
    page = decode_cursor(cursor) if cursor is not None else 1
    start, end = _range(params, now)
    if end - start > MAX_RANGE:
        raise invalid(
            f"Date range capped at 90 days per request: {start:%Y-%m-%dT%H:%M:%SZ} to "
            f"{end:%Y-%m-%dT%H:%M:%SZ} is {(end - start) / timedelta(days=1):.1f} days"
        )
    query = _query(params, start, end, by_request=True)
    expand = _expand(params, _EVENT_EXPAND)
    selected = ledger.select(query, now)
    offset = (page - 1) * limit
    chunk: list[BillingEvent] = selected[offset : offset + limit]
    more = offset + limit < len(selected)
    return {
        "billing_events": [
            e.item(
                auth_method="auth_method" in expand,
                structured="auth_method_structured" in expand,
            )
            for e in chunk
        ],
        "next_cursor": encode_cursor(page + 1) if more else None,
        "has_more": more,
    }


def pricing(ledger: Ledger, params: Mapping[str, list[str]], now: datetime) -> dict[str, Any]:
    """The caller's current price of each endpoint asked for that is priced per request."""
    prices = []
    for endpoint_id in endpoint_ids(params):
        price = ledger.price_at(endpoint_id, now)
        if price is not None:
            prices.append(
                {
                    "endpoint_id": endpoint_id,
                    "unit_price": price.unit_price,
                    "unit": price.unit,
                    "currency": price.currency,
                }
            )
    return {"prices": prices, "next_cursor": None, "has_more": False}


def usage(ledger: Ledger, params: Mapping[str, list[str]], now: datetime) -> dict[str, Any]:
    """Usage lines per time bucket and/or for the whole range, from the events that have
    appeared, bucketed by their ``timestamp``: summed, they equal the billing events."""
    limit = min(integer(params, "limit", _USAGE_DEFAULT_LIMIT, 1, None), _USAGE_MAX_LIMIT)
    cursor = last(params, "cursor")
    page = decode_cursor(cursor) if cursor is not None else 1
    start, end = _range(params, now)
    timeframe = enum(params, "timeframe", analytics.TIMEFRAMES)
    bound = enum(params, "bound_to_timeframe", ("true", "false")) or "true"
    tz = timezone(last(params, "timezone") or "UTC")
    expand = _expand(params, _USAGE_EXPAND) if "expand" in params else ["time_series"]
    if not {"time_series", "summary"} & set(expand):
        raise invalid("expand must name time_series and/or summary")
    rng = analytics.asked_range(start, end, timeframe, tz, bound)
    events = ledger.select(_query(params, rng.start, rng.end, by_request=False), now)
    show = {"auth_method": "auth_method" in expand,
            "structured": "auth_method_structured" in expand}  # fmt: skip
    body: dict[str, Any] = {}
    next_cursor = None
    if "time_series" in expand:
        starts = [to_us(b) for b in rng.buckets]
        groups: list[list[BillingEvent]] = [[] for _ in starts]
        for e in events:
            k = bisect_right(starts, e.timestamp_us) - 1
            if k >= 0:
                groups[k].append(e)
        offset = (page - 1) * limit
        body["time_series"] = [
            {"bucket": bucket.astimezone(tz).isoformat(), "results": usage_lines(group, **show)}
            for bucket, group in list(zip(rng.buckets, groups, strict=True))[
                offset : offset + limit
            ]
        ]
        if offset + limit < len(starts):
            next_cursor = encode_cursor(page + 1)
    if "summary" in expand:
        body["summary"] = usage_lines(events, **show)
    body["next_cursor"] = next_cursor
    body["has_more"] = next_cursor is not None
    return body
