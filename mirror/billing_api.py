"""What fal says requests cost: billing events, prices and usage, read and checked.

Three operations of the Platform API (docs/fal-api.md, cost), called through a
``mirror.api.FalClient`` (its retries, pacing, deadline and key redaction):

- ``list_billing_events``: one page of ``/models/billing-events`` (ADMIN scope): one
  record per billed request, up to 10,000 a page, a range of at most 90 days per call;
- ``fetch_prices``: ``/models/pricing``, the key's current price per unit of each model;
- ``fetch_usage``: ``/models/usage`` (ADMIN), cost totals per time bucket, an independent
  figure to check summed billing events against.

Every field of every answer is checked before anything is handed on, and a bad answer
raises ``BadDataError`` naming the record and the field: money that is negative, not a
number, absurdly large (over ``MAX_EVENT_USD`` for one request), a nano-USD amount that
disagrees with the USD one, a total that is not the subtotal minus the discount, a
currency that is not a current ISO 4217 currency (``mirror.currencies``), a record the
call did not ask for (another endpoint, another request). A 403 from an ADMIN operation
is ``AdminRequired``.

Amounts are kept exactly: ``cost_estimate_nano_usd`` is an integer (fal documents it as
the same charge as ``cost_total`` in 1e-9 USD), and a usage total given in USD is turned
into nano-USD through its decimal text, never through binary floating point.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any, NamedTuple

import orjson

from mirror import currencies
from mirror.api import FalClient
from mirror.errors import AdminRequired, AuthError, BadDataError
from mirror.records import page_cursor, page_items
from mirror.timeparse import api_param, normalize, to_text

__all__ = [
    "BILLING_EVENTS_PATH",
    "EVENTS_LIMIT",
    "MAX_EVENT_USD",
    "MAX_RANGE",
    "PRICING_PATH",
    "USAGE_PATH",
    "BillingEvent",
    "BillingPage",
    "Price",
    "UsageLine",
    "event_from_item",
    "fetch_prices",
    "fetch_usage",
    "list_billing_events",
    "parse_billing_page",
    "parse_prices",
    "parse_usage",
    "usd_to_nano",
]

BILLING_EVENTS_PATH = "/models/billing-events"
PRICING_PATH = "/models/pricing"
USAGE_PATH = "/models/usage"
#: billing events per page: fal's documented maximum
EVENTS_LIMIT = 10_000
#: the longest range one billing-events call may ask for (fal: "capped at 90 days")
MAX_RANGE = timedelta(days=90)
#: The most one request may cost, in USD: more is a corrupt record, not a charge, and
#: summed a million times it still fits a 64-bit integer of nano-USD.
MAX_EVENT_USD = 100_000
#: The most one unit (an image, a GPU-second...) may cost, in the price's currency.
MAX_UNIT_PRICE = 100_000
#: The largest quantity one request or one usage line may bill.
MAX_UNITS = 1e12
NANO = 1_000_000_000
#: How far an amount in nano-USD may be from the same amount in USD (``cost_total`` and
#: ``cost_estimate_nano_usd``; a subtotal minus its discount and the total) and still be
#: the same charge: the larger of 10,000 nano-USD (a USD amount rounded to 5 decimals) and
#: 0.1 %. A unit mistake (micro for nano) is a factor of 1,000 and never passes.
TOLERANCE_NANO = 10_000
TOLERANCE_RATIO = 0.001
#: ids per call, fal's documented maximum for every list parameter
MAX_IDS = 50
#: pages of prices or usage followed at most
MAX_PAGES = 10_000
_CURRENCY = re.compile(r"^[A-Z]{3}$")
_MAX_TEXT = 512


class BillingEvent(NamedTuple):
    """One billed request, as stored (``mirror.schema.BILLING_EVENT_FIELDS`` order).

    Amounts in USD as fal gives them, ``cost_estimate_nano_usd`` exact; ``auth_method``
    is fal's label of who made the call, ``api_key_id`` / ``login_username`` which key
    or team member it was, where fal says.
    """

    request_id: str
    endpoint_id: str
    timestamp: str
    output_units: float | None
    unit_price: float | None
    percent_discount: float | None
    cost_subtotal: float
    cost_discount: float
    cost_total: float
    cost_estimate_nano_usd: int
    auth_method: str | None
    api_key_id: str | None
    login_username: str | None


@dataclass(frozen=True)
class BillingPage:
    events: list[BillingEvent]
    next_cursor: str | None
    #: the API's clock when it answered (its ``Date`` header), if it said
    server_time: datetime | None = None


class Price(NamedTuple):
    """One endpoint's price per ``unit`` as the key is charged it, in ``currency``."""

    endpoint_id: str
    unit: str
    unit_price: float
    currency: str


class UsageLine(NamedTuple):
    """One line of ``/models/usage``: a bucket's (start, canonical UTC text) total for one
    endpoint, unit, price and discount; ``cost_total_nano`` exact."""

    bucket: str
    endpoint_id: str
    unit: str
    quantity: float
    unit_price: float
    percent_discount: float | None
    cost_total_nano: int
    currency: str
    auth_method: str | None


# --------------------------------------------------------------------------- field checks


def _object(value: Any, what: str) -> dict[str, Any]:
    """``value`` if it is a JSON object, else `BadDataError` naming ``what`` it was to be."""
    if not isinstance(value, dict):
        raise BadDataError(f"{what} is {type(value).__name__}, not an object")
    return value


def _what(item: Mapping[str, Any], kind: str) -> str:
    rid = item.get("request_id") if kind == "billing event" else item.get("endpoint_id")
    return f"{kind} {str(rid)[:80]!r}" if isinstance(rid, str) else kind


def _text(item: Mapping[str, Any], name: str, kind: str, *, required: bool) -> str | None:
    v = item.get(name)
    if v is None and not required:
        return None
    if not isinstance(v, str) or not v or len(v) > _MAX_TEXT:
        raise BadDataError(f"{_what(item, kind)}: {name} is missing or not a string")
    return v


def _amount(
    item: Mapping[str, Any], name: str, kind: str, hi: float, *, required: bool
) -> float | None:
    """A number from 0 to ``hi``; ints become floats (the column is a float)."""
    v = item.get(name)
    if v is None:
        if required:
            raise BadDataError(f"{_what(item, kind)} has no {name}")
        return None
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise BadDataError(f"{_what(item, kind)}: {name} is {type(v).__name__}, not a number")
    if not 0 <= v <= hi:  # NaN compares false
        raise BadDataError(f"{_what(item, kind)}: {name} {v!r} is not between 0 and {hi:g}")
    return float(v)


def _currency(item: Mapping[str, Any], kind: str) -> str:
    v = item.get("currency")
    if not isinstance(v, str) or not _CURRENCY.match(v):
        raise BadDataError(
            f"{_what(item, kind)}: currency {str(v)[:20]!r} is not a three-letter ISO 4217 code"
        )
    if not currencies.is_known(v):
        raise BadDataError(f"{_what(item, kind)}: currency {v!r} is not a known ISO 4217 currency")
    return v


def usd_to_nano(amount: float) -> int:
    """An amount in USD (or any currency) as an integer of billionths, through its
    shortest decimal text (``0.045`` is 45,000,000, not 44,999,999.99…)."""
    return int((Decimal(repr(amount)) * NANO).to_integral_value())


def _same(a_nano: int, b_nano: int) -> bool:
    return abs(a_nano - b_nano) <= max(TOLERANCE_NANO, TOLERANCE_RATIO * max(a_nano, b_nano))


def _nano_amount(item: Mapping[str, Any], name: str, kind: str) -> int:
    """A non-negative whole number of nano-USD; a float is rounded to the nearest (fal's
    schema calls it a number: sub-nano digits are noise, not money)."""
    v = item.get(name)
    if v is None:
        raise BadDataError(f"{_what(item, kind)} has no {name}")
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise BadDataError(f"{_what(item, kind)}: {name} is {type(v).__name__}, not a number")
    if isinstance(v, float) and not math.isfinite(v):
        raise BadDataError(f"{_what(item, kind)}: {name} is not finite")
    n = round(v)
    if not 0 <= n <= MAX_EVENT_USD * NANO:
        raise BadDataError(
            f"{_what(item, kind)}: {name} {v!r} is not between 0 and {MAX_EVENT_USD * NANO}"
        )
    return n


def _timestamp(item: Mapping[str, Any], kind: str) -> str:
    v = item.get("timestamp")
    if not isinstance(v, str):
        raise BadDataError(f"{_what(item, kind)}: timestamp is missing or not text")
    try:
        return normalize(v)
    except ValueError:
        raise BadDataError(f"{_what(item, kind)}: timestamp {v[:40]!r} is not a time") from None


def _auth(item: Mapping[str, Any], kind: str) -> tuple[str | None, str | None, str | None]:
    """(label, api_key_id, login_username): from ``auth_method`` and
    ``auth_method_structured``, whichever fal sent."""
    label = _text(item, "auth_method", kind, required=False)
    structured = item.get("auth_method_structured")
    if structured is None:
        return label, None, None
    if not isinstance(structured, dict):
        raise BadDataError(f"{_what(item, kind)}: auth_method_structured is not an object")
    detail = _text(structured, "detail", f"{_what(item, kind)}: auth_method_structured",
                   required=True)  # fmt: skip
    key_id = _text(structured, "api_key_id", f"{_what(item, kind)}: auth_method_structured",
                   required=False)  # fmt: skip
    user = _text(structured, "login_username", f"{_what(item, kind)}: auth_method_structured",
                 required=False)  # fmt: skip
    return label or detail, key_id, user


def event_from_item(item: Any) -> BillingEvent:
    """One ``billing_events`` record, every field checked (``BadDataError`` otherwise)."""
    kind = "billing event"
    item = _object(item, "a billing event")
    request_id = _text(item, "request_id", kind, required=True)
    endpoint_id = _text(item, "endpoint_id", kind, required=True)
    timestamp = _timestamp(item, kind)
    units = _amount(item, "output_units", kind, MAX_UNITS, required=False)
    unit_price = _amount(item, "unit_price", kind, MAX_UNIT_PRICE, required=False)
    percent = _amount(item, "percent_discount", kind, 100, required=False)
    subtotal = _amount(item, "cost_subtotal", kind, MAX_EVENT_USD, required=True)
    discount = _amount(item, "cost_discount", kind, MAX_EVENT_USD, required=True)
    total = _amount(item, "cost_total", kind, MAX_EVENT_USD, required=True)
    assert subtotal is not None and discount is not None and total is not None
    nano = _nano_amount(item, "cost_estimate_nano_usd", kind)
    if not _same(nano, usd_to_nano(total)):
        raise BadDataError(
            f"{_what(item, kind)}: cost_estimate_nano_usd {nano} is not cost_total {total!r} "
            "in nano-USD"
        )
    if not _same(usd_to_nano(subtotal) - usd_to_nano(discount), usd_to_nano(total)):
        raise BadDataError(
            f"{_what(item, kind)}: cost_total {total!r} is not cost_subtotal {subtotal!r} "
            f"minus cost_discount {discount!r}"
        )
    label, key_id, user = _auth(item, kind)
    assert request_id is not None and endpoint_id is not None
    return BillingEvent(request_id, endpoint_id, timestamp, units, unit_price, percent,
                        subtotal, discount, total, nano, label, key_id, user)  # fmt: skip


def _covers(asked: Sequence[str], endpoint_id: str) -> bool:
    """Whether ``endpoint_id`` is one of ``asked`` or a route of one (``owner/app/...``)."""
    return endpoint_id in asked or endpoint_id.startswith(tuple(e + "/" for e in asked))


# --------------------------------------------------------------------------- billing events


def parse_billing_page(
    data: Any,
    *,
    limit: int = EVENTS_LIMIT,
    endpoint_ids: Sequence[str] = (),
    request_ids: Sequence[str] = (),
) -> BillingPage:
    """A ``/models/billing-events`` answer, checked whole: no more records than ``limit``,
    each valid and one the call asked for (``endpoint_ids``, routes included, and
    ``request_ids``, when the call named some)."""
    data = _object(data, "the billing-events answer")
    items, cursor = page_items(
        data, "billing_events", limit, "the billing-events answer", "records"
    )
    events = []
    for k, item in enumerate(items):
        events.append(event_from_item(item))
        items[k] = None  # each decoded object goes as its event is made, not with the page
    asked_ids = set(request_ids)
    for e in events:
        if endpoint_ids and not _covers(endpoint_ids, e.endpoint_id):
            raise BadDataError(
                f"billing event {e.request_id!r} is for endpoint {e.endpoint_id}, which the "
                f"call did not ask for (asked for {', '.join(endpoint_ids)})"
            )
        if asked_ids and e.request_id not in asked_ids:
            raise BadDataError(
                f"billing event {e.request_id!r} is not one of the requests asked for"
            )
    return BillingPage(events, cursor)


def list_billing_events(
    client: FalClient,
    *,
    start: datetime,
    end: datetime,
    cursor: str | None = None,
    endpoint_ids: Sequence[str] = (),
    request_ids: Sequence[str] = (),
    limit: int = EVENTS_LIMIT,
) -> BillingPage:
    """One page of the billing events whose timestamp is in ``[start, end)`` (at most
    ``MAX_RANGE``), with who made each call; ``cursor`` from the previous page.

    ``AdminRequired`` when the key lacks ADMIN scope.
    """
    if not start < end:
        raise ValueError(f"start {start} must be before end {end}")
    if end - start > MAX_RANGE:
        raise ValueError(f"{start}..{end} is longer than the API's {MAX_RANGE.days} days")
    if not 1 <= limit <= EVENTS_LIMIT:
        raise ValueError(f"limit {limit} is not between 1 and {EVENTS_LIMIT}")
    if len(endpoint_ids) > MAX_IDS or len(request_ids) > MAX_IDS:
        raise ValueError(f"at most {MAX_IDS} endpoint ids and {MAX_IDS} request ids per call")
    params: list[tuple[str, str]] = [
        ("start", api_param(start)),
        ("end", api_param(end)),
        ("limit", str(limit)),
        ("expand", "auth_method"),
        ("expand", "auth_method_structured"),
    ]
    params += [("endpoint_id", e) for e in endpoint_ids]
    params += [("request_id", r) for r in request_ids]
    if cursor:
        params.append(("cursor", cursor))
    data, date = _admin(client, BILLING_EVENTS_PATH, params, decode=decode_lean)
    page = parse_billing_page(data, limit=limit, endpoint_ids=endpoint_ids,
                              request_ids=request_ids)  # fmt: skip
    return BillingPage(page.events, page.next_cursor, date)


#: a JSON escape of a UTF-16 surrogate (``\ud83d``)
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def decode_lean(body: bytes) -> Any:
    """A large page (10,000 billing events, ~4 MB) decoded at the cost of the objects it
    makes: the standard library's reader peaks at ~4x the body, orjson's at ~15x (it holds
    its own tree of the whole document while it builds the objects; a page of 10,000 events:
    15 MiB against 61, bench/cost_bench.py). It refuses what orjson refuses: bytes that are
    not UTF-8, ``NaN`` and ``Infinity``; a page that escapes a UTF-16 surrogate is read by
    orjson, which refuses one without its pair."""
    if _SURROGATE_ESCAPE.search(body):
        return orjson.loads(body)
    return json.loads(body.decode("utf-8"), parse_constant=_no_constant)


def _admin(
    client: FalClient,
    path: str,
    params: Sequence[tuple[str, str]],
    decode: Callable[[bytes], Any] = orjson.loads,
) -> tuple[Any, datetime | None]:
    try:
        return client.get_page(path, params, decode)
    except AuthError as e:
        if e.status != 403:
            raise
        raise AdminRequired(e.status, e.error_type, e.message, e.url) from None


def _pages(
    client: FalClient, path: str, params: Sequence[tuple[str, str]], what: str, *, admin: bool
) -> Iterator[Any]:
    """Every page of a paged answer, following its cursor; a cursor given twice, or more
    than ``MAX_PAGES`` pages, is ``BadDataError`` (the answer must be whole)."""
    cursor: str | None = None
    given: set[str] = set()
    for _ in range(MAX_PAGES):
        call = [*params, *([("cursor", cursor)] if cursor else [])]
        data = _admin(client, path, call)[0] if admin else client.get_page(path, call)[0]
        data = _object(data, f"the {what} answer")
        yield data
        cursor = page_cursor(data, f"the {what} answer")
        if cursor is None:
            return
        if cursor in given:
            raise BadDataError(f"the {what} answer repeated a page cursor")
        given.add(cursor)
    raise BadDataError(f"the {what} answer ran over {MAX_PAGES} pages")


# --------------------------------------------------------------------------- prices


def parse_prices(data: Any, asked: Iterable[str]) -> list[Price]:
    """The ``prices`` of one ``/models/pricing`` answer: each for an endpoint asked for,
    with a unit, a price per unit from 0 to ``MAX_UNIT_PRICE`` and an ISO 4217 currency.
    An endpoint given twice with different prices is refused (which one is charged?)."""
    kind = "price"
    data = _object(data, "the pricing answer")
    items = data.get("prices")
    if not isinstance(items, list):
        raise BadDataError("the pricing answer has no prices list")
    wanted = set(asked)
    out: dict[str, Price] = {}
    for item in items:
        item = _object(item, "a price")
        endpoint_id = _text(item, "endpoint_id", kind, required=True)
        unit = _text(item, "unit", kind, required=True)
        unit_price = _amount(item, "unit_price", kind, MAX_UNIT_PRICE, required=True)
        currency = _currency(item, kind)
        assert endpoint_id is not None and unit is not None and unit_price is not None
        if endpoint_id not in wanted:
            raise BadDataError(f"price for endpoint {endpoint_id}, which the call did not ask for")
        price = Price(endpoint_id, unit, unit_price, currency)
        if out.setdefault(endpoint_id, price) != price:
            raise BadDataError(f"the pricing answer gives endpoint {endpoint_id} two prices")
    return list(out.values())


def fetch_prices(client: FalClient, endpoint_ids: Iterable[str]) -> list[Price]:
    """The key's current price of each endpoint fal prices (the others are left out),
    asked ``MAX_IDS`` at a time."""
    ids = list(dict.fromkeys(endpoint_ids))
    out: list[Price] = []
    for k in range(0, len(ids), MAX_IDS):
        chunk = ids[k : k + MAX_IDS]
        params = [("endpoint_id", e) for e in chunk]
        for data in _pages(client, PRICING_PATH, params, "pricing", admin=False):
            out.extend(parse_prices(data, chunk))
    return out


# --------------------------------------------------------------------------- usage


def parse_usage(data: Any, endpoint_ids: Sequence[str] = ()) -> list[UsageLine]:
    """The ``time_series`` lines of one ``/models/usage`` answer, every field checked."""
    kind = "usage line"
    series = data.get("time_series") if isinstance(data, dict) else None
    if not isinstance(series, list):
        raise BadDataError("the usage answer has no time_series list")
    out = []
    for bucket in series:
        if not isinstance(bucket, dict) or not isinstance(bucket.get("bucket"), str):
            raise BadDataError("a usage bucket has no timestamp")
        try:
            start = to_text(datetime.fromisoformat(bucket["bucket"]))
            normalize(start)
        except ValueError:
            raise BadDataError(
                f"usage bucket {bucket['bucket'][:40]!r} is not a time with its offset"
            ) from None
        results = bucket.get("results")
        if not isinstance(results, list):
            raise BadDataError("a usage bucket's results are not a list")
        for line in results:
            line = _object(line, "a usage line")
            endpoint_id = _text(line, "endpoint_id", kind, required=True)
            unit = _text(line, "unit", kind, required=True)
            quantity = _amount(line, "quantity", kind, MAX_UNITS, required=True)
            unit_price = _amount(line, "unit_price", kind, MAX_UNIT_PRICE, required=True)
            percent = _amount(line, "percent_discount", kind, 100, required=False)
            total = _amount(line, "cost_total", kind, MAX_EVENT_USD * 1e6, required=True)
            currency = _currency(line, kind)
            assert endpoint_id is not None and unit is not None
            assert quantity is not None and unit_price is not None and total is not None
            if endpoint_ids and not _covers(endpoint_ids, endpoint_id):
                raise BadDataError(
                    f"usage line for endpoint {endpoint_id}, which was not asked for"
                )
            label = _text(line, "auth_method", kind, required=False)
            out.append(UsageLine(start, endpoint_id, unit, quantity, unit_price, percent,
                                 usd_to_nano(total), currency, label))  # fmt: skip
    return out


def fetch_usage(
    client: FalClient,
    *,
    start: datetime,
    end: datetime,
    endpoint_ids: Sequence[str] = (),
    timeframe: str = "day",
) -> list[UsageLine]:
    """Usage lines of ``[start, end)`` exactly (not widened to whole buckets), per UTC
    ``timeframe`` bucket, every page. ``AdminRequired`` when the key lacks ADMIN scope."""
    if not start < end:
        raise ValueError(f"start {start} must be before end {end}")
    params: list[tuple[str, str]] = [
        ("start", api_param(start)),
        ("end", api_param(end)),
        ("timeframe", timeframe),
        ("timezone", "UTC"),
        ("bound_to_timeframe", "false"),
        ("expand", "time_series"),
        ("limit", "1000"),
    ]
    params += [("endpoint_id", e) for e in endpoint_ids]
    out: list[UsageLine] = []
    for data in _pages(client, USAGE_PATH, params, "usage", admin=True):
        out.extend(parse_usage(data, endpoint_ids))
    return out
