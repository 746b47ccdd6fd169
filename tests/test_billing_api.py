"""The cost client: billing events, prices and usage, read from hostile answers (an
httpx.MockTransport) and from the simulated API over HTTP.

Every bad answer is refused whole with ``BadDataError`` naming the record and the field;
amounts are kept exact; a key without ADMIN scope is ``AdminRequired``.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import orjson
import pytest
from support.sim import API_SCOPE_KEY, KEYS, NOW, static_world

from mirror.api import MODELS_ANALYTICS_PATH, FalClient, RetryPolicy
from mirror.billing_api import (
    EVENTS_LIMIT,
    BillingEvent,
    Price,
    UsageLine,
    decode_lean,
    fetch_prices,
    fetch_usage,
    list_billing_events,
    usd_to_nano,
)
from mirror.errors import AdminRequired, BadDataError
from mirror.schema import BILLING_EVENT_FIELDS
from mirror.simulator import DEFAULT_KEY, SimulatedAPI, WorldConfig
from mirror.simulator.billing import BillingConfig, PriceBook
from mirror.simulator.generate import MODEL_ENDPOINTS
from mirror.simulator.world import to_us

KEY = "kid-123:very-secret-canary-0xC0FFEE"
START, END = NOW - timedelta(days=1), NOW
EVENT = {
    "request_id": "abc123",
    "endpoint_id": "fal-ai/flux/dev",
    "timestamp": "2025-01-15T10:30:45Z",
    "output_units": 2,
    "unit_price": 0.025,
    "percent_discount": 10,
    "cost_subtotal": 0.05,
    "cost_discount": 0.005,
    "cost_total": 0.045,
    "cost_estimate_nano_usd": 45000000,
    "auth_method": "Key 1",
    "auth_method_structured": {"detail": "Key 1", "api_key_id": "key-1"},
}
STORED = BillingEvent("abc123", "fal-ai/flux/dev", "2025-01-15T10:30:45.000000Z", 2.0, 0.025,
                      10.0, 0.05, 0.005, 0.045, 45_000_000, "Key 1", "key-1", None)  # fmt: skip


def client(handler: Any) -> FalClient:
    http = httpx.Client(transport=httpx.MockTransport(handler))
    return FalClient(http, KEY, base_url="https://api.example.test/v1",
                     retry=RetryPolicy(attempts=2, base=0.01, cap=0.01), sleep=lambda _: None)  # fmt: skip


def answering(*bodies: Any, status: int = 200) -> Any:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        body = bodies[min(len(seen) - 1, len(bodies) - 1)]
        return httpx.Response(status, content=orjson.dumps(body),
                              headers={"Date": "Sat, 28 Nov 2026 12:00:00 GMT"})  # fmt: skip

    handler.seen = seen  # type: ignore[attr-defined]
    return handler


def page(*events: Any, cursor: str | None = None, more: bool | None = None) -> dict[str, Any]:
    return {"billing_events": list(events), "next_cursor": cursor,
            "has_more": cursor is not None if more is None else more}  # fmt: skip


def test_the_record_type_is_the_table_s_column_order() -> None:
    assert BillingEvent._fields == BILLING_EVENT_FIELDS


def test_request_shape_and_the_stored_event() -> None:
    h = answering(page(EVENT, cursor="Mg=="))
    got = list_billing_events(client(h), start=START, end=END, endpoint_ids=["fal-ai/flux"],
                              cursor="MQ==")  # fmt: skip
    req = h.seen[0]
    assert req.url.path == "/v1/models/billing-events"
    assert req.url.params.multi_items() == [
        ("start", "2026-11-27T12:00:00Z"), ("end", "2026-11-28T12:00:00Z"),
        ("limit", "10000"), ("expand", "auth_method"), ("expand", "auth_method_structured"),
        ("endpoint_id", "fal-ai/flux"), ("cursor", "MQ=="),
    ]  # fmt: skip
    assert req.headers["authorization"] == f"Key {KEY}"
    assert got.events == [STORED]
    assert got.next_cursor == "Mg=="
    assert got.server_time == datetime(2026, 11, 28, 12, tzinfo=UTC)


def test_optional_fields_and_the_label_from_the_structured_object() -> None:
    event = {**EVENT, "output_units": None, "unit_price": None, "percent_discount": None,
             "cost_subtotal": 0.045, "cost_discount": 0, "cost_estimate_nano_usd": 45000000.0}  # fmt: skip
    del event["auth_method"]
    event["auth_method_structured"] = {"detail": "alice", "login_username": "alice"}
    got = list_billing_events(client(answering(page(event))), start=START, end=END).events
    assert got == [STORED._replace(output_units=None, unit_price=None, percent_discount=None,
                                   cost_subtotal=0.045, cost_discount=0.0, auth_method="alice",
                                   api_key_id=None, login_username="alice")]  # fmt: skip
    assert type(got[0].cost_estimate_nano_usd) is int


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"request_id": None}, "has no request_id|request_id is missing"),
        ({"request_id": 42}, "request_id is missing or not a string"),
        ({"endpoint_id": ""}, "endpoint_id is missing"),
        ({"timestamp": "2025-13-45T10:30:45Z"}, "timestamp '2025-13-45T10:30:45Z' is not a time"),
        ({"timestamp": "1970-01-01T00:00:00Z"}, "is not a time"),
        ({"timestamp": 1736937045}, "timestamp is missing or not text"),
        ({"cost_total": -0.045}, "cost_total -0.045 is not between 0"),
        ({"cost_total": "0.045"}, "cost_total is str, not a number"),
        ({"cost_total": True}, "cost_total is bool"),
        ({"cost_subtotal": None}, "has no cost_subtotal"),
        ({"cost_total": 1e6, "cost_subtotal": 1e6, "cost_discount": 0,
          "cost_estimate_nano_usd": 10**15}, "cost_subtotal 1000000.0 is not between 0 and 100000"),
        ({"cost_estimate_nano_usd": -1}, "cost_estimate_nano_usd -1 is not between 0"),
        ({"cost_estimate_nano_usd": 1.2e21}, "cost_estimate_nano_usd 1.2e\\+21 is not between"),
        ({"cost_estimate_nano_usd": None}, "has no cost_estimate_nano_usd"),
        ({"cost_estimate_nano_usd": 45000}, "45000 is not cost_total 0.045 in nano-USD"),
        ({"cost_total": 0.045 * 1000, "cost_subtotal": 45.005},
         "cost_estimate_nano_usd 45000000 is not cost_total 45.0"),
        ({"cost_discount": 0.5}, "cost_total 0.045 is not cost_subtotal 0.05 minus cost_discount 0.5"),
        ({"percent_discount": 150}, "percent_discount 150 is not between 0 and 100"),
        ({"output_units": -2}, "output_units -2 is not between 0"),
        ({"unit_price": 1e300}, "unit_price 1e\\+300 is not between"),
        ({"auth_method_structured": "Key 1"}, "auth_method_structured is not an object"),
        ({"auth_method_structured": {"api_key_id": "k"}}, "detail is missing"),
        ({"auth_method": ["Key 1"]}, "auth_method is missing or not a string"),
    ],
)  # fmt: skip
def test_bad_records_are_refused_naming_the_field(change: dict[str, Any], message: str) -> None:
    event = {**EVENT, **change}
    with pytest.raises(BadDataError, match=message) as caught:
        list_billing_events(client(answering(page(event))), start=START, end=END)
    if "request_id" not in change:
        assert "billing event 'abc123'" in str(caught.value), "the message must name the record"


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ([], "is list, not an object"),
        ({"items": [EVENT], "next_cursor": None, "has_more": False}, "no billing_events list"),
        (page(EVENT, more=True), "has_more but gives no next_cursor"),
        ({**page(EVENT), "has_more": "no"}, "has_more is not a boolean"),
        ({**page(EVENT), "next_cursor": 7}, "next_cursor is not a string"),
        (page("abc"), "a billing event is str, not an object"),
        (page({**EVENT, "endpoint_id": "someone/else"}), "endpoint someone/else, which the call"),
    ],
)
def test_bad_pages_are_refused(body: Any, message: str) -> None:
    with pytest.raises(BadDataError, match=message):
        list_billing_events(client(answering(body)), start=START, end=END,
                            endpoint_ids=["fal-ai/flux/dev"])  # fmt: skip


def test_more_records_than_asked_for_and_events_not_asked_for_are_refused() -> None:
    with pytest.raises(BadDataError, match="3 records, more than the 2 asked for"):
        list_billing_events(client(answering(page(EVENT, EVENT, EVENT))), start=START, end=END,
                            limit=2)  # fmt: skip
    with pytest.raises(BadDataError, match="not one of the requests asked for"):
        list_billing_events(client(answering(page(EVENT))), start=START, end=END,
                            request_ids=["other"])  # fmt: skip


def test_a_route_of_an_endpoint_asked_for_is_kept() -> None:
    route = {**EVENT, "endpoint_id": "fal-ai/flux/dev/turbo"}
    got = list_billing_events(client(answering(page(route))), start=START, end=END,
                              endpoint_ids=["fal-ai/flux/dev"]).events  # fmt: skip
    assert [e.endpoint_id for e in got] == ["fal-ai/flux/dev/turbo"]


@pytest.mark.parametrize(
    ("kw", "message"),
    [
        ({"start": END, "end": START}, "must be before"),
        ({"start": END - timedelta(days=90, seconds=1), "end": END}, "longer than the API's 90"),
        ({"limit": EVENTS_LIMIT + 1}, "limit 10001"),
        ({"endpoint_ids": [f"a/b{k}" for k in range(51)]}, "at most 50"),
    ],
)
def test_calls_the_api_would_refuse_are_not_made(kw: dict[str, Any], message: str) -> None:
    h = answering(page())
    args: dict[str, Any] = {"start": START, "end": END, **kw}
    with pytest.raises(ValueError, match=message):
        list_billing_events(client(h), **args)
    assert h.seen == []


def test_a_403_is_a_missing_admin_scope_and_the_key_is_never_shown() -> None:
    body = {"error": {"type": "authorization_error", "message": f"no: Key {KEY}"}}
    with pytest.raises(AdminRequired) as caught:
        list_billing_events(client(answering(body, status=403)), start=START, end=END)
    assert "ADMIN" in caught.value.hint
    assert KEY.split(":")[1] not in str(caught.value)
    with pytest.raises(AdminRequired):
        fetch_usage(client(answering(body, status=403)), start=START, end=END)


# --------------------------------------------------------------------------- prices


def prices(*items: Any, cursor: str | None = None) -> dict[str, Any]:
    return {"prices": list(items), "next_cursor": cursor, "has_more": cursor is not None}


FLUX_PRICE = {"endpoint_id": "fal-ai/flux/dev", "unit_price": 0.025, "unit": "image",
              "currency": "USD"}  # fmt: skip


def test_prices_are_asked_50_at_a_time_and_pages_followed() -> None:
    ids = [f"fal-ai/m{k}" for k in range(60)]
    h = answering(prices({**FLUX_PRICE, "endpoint_id": "fal-ai/m0"}, cursor="Mg=="),
                  prices({**FLUX_PRICE, "endpoint_id": "fal-ai/m1", "currency": "EUR"}),
                  prices())  # fmt: skip
    got = fetch_prices(client(h), ids)
    assert got == [Price("fal-ai/m0", "image", 0.025, "USD"),
                   Price("fal-ai/m1", "image", 0.025, "EUR")]  # fmt: skip
    calls = [r.url.params for r in h.seen]
    assert [len(c.get_list("endpoint_id")) for c in calls] == [50, 50, 10]
    assert [c.get("cursor") for c in calls] == [None, "Mg==", None]


@pytest.mark.parametrize(
    ("item", "message"),
    [
        ({**FLUX_PRICE, "currency": "usd"}, "currency 'usd' is not a three-letter ISO 4217"),
        ({**FLUX_PRICE, "currency": "DOLLARS"}, "is not a three-letter"),
        ({**FLUX_PRICE, "currency": None}, "is not a three-letter"),
        ({**FLUX_PRICE, "currency": "ZZZ"}, "currency 'ZZZ' is not a known ISO 4217 currency"),
        ({**FLUX_PRICE, "currency": "XXX"}, "currency 'XXX' is not a known ISO 4217 currency"),
        ({**FLUX_PRICE, "unit_price": -0.01}, "unit_price -0.01 is not between 0"),
        ({**FLUX_PRICE, "unit_price": 1e9}, "unit_price 1000000000.0 is not between 0"),
        ({**FLUX_PRICE, "unit": ""}, "unit is missing"),
        ({**FLUX_PRICE, "endpoint_id": "fal-ai/other"}, "fal-ai/other, which the call did not"),
    ],
)
def test_bad_prices_are_refused(item: dict[str, Any], message: str) -> None:
    with pytest.raises(BadDataError, match=message):
        fetch_prices(client(answering(prices(item))), ["fal-ai/flux/dev"])


def test_two_prices_for_one_endpoint_are_refused_and_a_repeated_cursor_too() -> None:
    twice = prices(FLUX_PRICE, {**FLUX_PRICE, "unit_price": 0.03})
    with pytest.raises(BadDataError, match="gives endpoint fal-ai/flux/dev two prices"):
        fetch_prices(client(answering(twice)), ["fal-ai/flux/dev"])
    assert fetch_prices(client(answering(prices(FLUX_PRICE, FLUX_PRICE))), ["fal-ai/flux/dev"]) == [
        Price("fal-ai/flux/dev", "image", 0.025, "USD")
    ]
    with pytest.raises(BadDataError, match="repeated a page cursor"):
        fetch_prices(client(answering(prices(FLUX_PRICE, cursor="Mg=="))), ["fal-ai/flux/dev"])


# --------------------------------------------------------------------------- usage

LINE = {"endpoint_id": "fal-ai/flux/dev", "unit": "image", "quantity": 4, "unit_price": 0.1,
        "percent_discount": 20, "cost_subtotal": 0.4, "cost_discount": 0.08, "cost_total": 0.32,
        "cost": 0.32, "currency": "USD", "auth_method": "Production Key"}  # fmt: skip


def test_usage_lines_are_exact_in_nano_usd() -> None:
    body = {"time_series": [{"bucket": "2025-01-15T00:00:00-05:00", "results": [LINE]}],
            "next_cursor": None, "has_more": False}  # fmt: skip
    h = answering(body)
    got = fetch_usage(client(h), start=START, end=END, endpoint_ids=["fal-ai/flux/dev"])
    assert got == [UsageLine("2025-01-15T05:00:00.000000Z", "fal-ai/flux/dev", "image", 4.0, 0.1,
                             20.0, 320_000_000, "USD", "Production Key")]  # fmt: skip
    params = h.seen[0].url.params
    assert (params["timeframe"], params["bound_to_timeframe"], params["timezone"]) == (
        "day", "false", "UTC")  # fmt: skip


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"summary": []}, "no time_series list"),
        ({"time_series": [{"bucket": "yesterday", "results": []}]}, "'yesterday' is not a time"),
        ({"time_series": [{"bucket": "2025-01-15T00:00:00", "results": []}]}, "with its offset"),
        ({"time_series": [{"bucket": "2025-01-15T00:00:00Z", "results": {}}]}, "not a list"),
        ({"time_series": [{"bucket": "2025-01-15T00:00:00Z",
                           "results": [{**LINE, "cost_total": -1}]}]}, "cost_total -1"),
        ({"time_series": [{"bucket": "2025-01-15T00:00:00Z",
                           "results": [{**LINE, "currency": "$"}]}]}, "'\\$' is not a three"),
        ({"time_series": [{"bucket": "2025-01-15T00:00:00Z",
                           "results": [{**LINE, "currency": "ZZZ"}]}]}, "'ZZZ' is not a known"),
        ({"time_series": [{"bucket": "2025-01-15T00:00:00Z",
                           "results": [{**LINE, "endpoint_id": "x/y"}]}]}, "x/y, which was not"),
    ],
)  # fmt: skip
def test_bad_usage_is_refused(body: dict[str, Any], message: str) -> None:
    body = {"next_cursor": None, "has_more": False, **body}
    with pytest.raises(BadDataError, match=message):
        fetch_usage(client(answering(body)), start=START, end=END, endpoint_ids=["fal-ai/flux/dev"])


def test_usd_to_nano_goes_through_the_decimal_text() -> None:
    assert [usd_to_nano(x) for x in (0.045, 0.0375, 0.1 + 0.2, 1e-9, 123456.789)] == [
        45_000_000, 37_500_000, 300_000_000, 1, 123_456_789_000_000]  # fmt: skip


# --------------------------------------------------------------------------- the simulator


@pytest.fixture(scope="module")
def api() -> Any:
    world = static_world(WorldConfig(), seed=4, hours=10, per_hour=90, endpoints=list(MODEL_ENDPOINTS),
                         now=NOW, big_tie_group=0)  # fmt: skip
    billing = BillingConfig(prices=PriceBook(changes=[NOW - timedelta(hours=5)]))
    with SimulatedAPI(world, keys=KEYS, admin_keys=frozenset({DEFAULT_KEY}),
                      billing=billing) as running:  # fmt: skip
        yield running


def real(api: SimulatedAPI, key: str = DEFAULT_KEY) -> FalClient:
    return FalClient(httpx.Client(), key, base_url=api.base_url)


def test_a_walk_of_the_simulator_is_every_event_once_and_usage_agrees(api: SimulatedAPI) -> None:
    c = real(api)
    events: list[BillingEvent] = []
    cursor = None
    while True:
        got = list_billing_events(c, start=START, end=END, cursor=cursor, limit=97)
        events += got.events
        assert got.server_time == NOW
        cursor = got.next_cursor
        if cursor is None:
            break
    lo, hi = to_us(START), to_us(END)
    server = [
        e for e in api.ledger.all_events() if e.appears_us <= hi and lo <= e.timestamp_us < hi
    ]
    assert len(server) > 200, "the world bills too few requests to page through"
    assert sorted(e.request_id for e in events) == sorted(e.request_id for e in server)
    assert c.stats.pages == -(-len(events) // 97)
    by_day: dict[str, int] = {}
    for e in events:
        by_day[e.timestamp[:10]] = by_day.get(e.timestamp[:10], 0) + e.cost_estimate_nano_usd
    usage: dict[str, int] = {}
    for line in fetch_usage(c, start=START, end=END):
        usage[line.bucket[:10]] = usage.get(line.bucket[:10], 0) + line.cost_total_nano
    assert usage == by_day, "usage totals differ from the summed events"


def test_prices_and_model_counts_from_the_simulator(api: SimulatedAPI) -> None:
    c = real(api, API_SCOPE_KEY)
    assert fetch_prices(c, ["fal-ai/flux/dev", "fal-ai/whisper", "acme/own"]) == [
        Price("fal-ai/flux/dev", "image", 0.03, "USD"),
        Price("fal-ai/whisper", "minute", 0.00132, "USD"),
    ]
    counts = dict(c.hourly_counts("fal-ai/flux/dev", START, END, strict=True,
                                  path=MODELS_ANALYTICS_PATH))  # fmt: skip
    assert sum(counts.values()) == sum(
        1 for r in api.world if r.endpoint_id == "fal-ai/flux/dev" and START <= r.ended_at < END
        and r.recorded_at <= NOW
    )  # fmt: skip
    with pytest.raises(AdminRequired):
        list_billing_events(c, start=START, end=END)


@pytest.mark.parametrize(
    "body",
    [
        b'{"billing_events": [{"request_id": "r\\u00e9", "x": 1.5e-7, "n": 12345678901}], '
        b'"next_cursor": null, "has_more": false}',
        '{"a": ["caf\u00e9 \u2603", -0.0, 1e300, true, null, {}]}'.encode(),
        b'{"emoji": "\\ud83d\\ude00", "also": "\\uD83D\\uDE00"}',
    ],
)
def test_billing_pages_decode_as_orjson_decodes_them(body: bytes) -> None:
    assert decode_lean(body) == orjson.loads(body), "the lean decoder read a page differently"


@pytest.mark.parametrize(
    "body",
    [b'{"a": NaN}', b'{"a": -Infinity}', b'{"a": "\xff"}', b'{"a": "\\ud800"}',
     b'{"a": "\\udc00x"}', b"{", b""],
)  # fmt: skip
def test_the_lean_decoder_refuses_what_orjson_refuses(body: bytes) -> None:
    with pytest.raises(ValueError):
        orjson.loads(body)
    with pytest.raises(ValueError):
        decode_lean(body)
