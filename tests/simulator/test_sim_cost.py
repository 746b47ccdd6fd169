"""The cost operations' semantics: which requests are billed and when their events appear,
exact amounts at the price of their time, paging and the 90-day cap, filters, ADMIN scope,
usage totals that are the events summed, and model analytics.

Served over real HTTP with a hand-moved clock; expected answers are written out in full
or computed from the world's requests independently of the simulator's ledger.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable
from dataclasses import replace
from datetime import timedelta
from decimal import Decimal
from typing import Any

import pytest
from support.sim import (
    ANALYTICS,
    API_SCOPE_KEY,
    BILLING_EVENTS,
    KEYS,
    LIST,
    MODELS,
    MODELS_ANALYTICS,
    NOW,
    PRICING,
    USAGE,
    at,
    client,
    req,
    rid,
)

from mirror.simulator import DEFAULT_KEY, ManualClock, SimulatedAPI, World, WorldConfig
from mirror.simulator import generate_world as gen
from mirror.simulator.billing import BillingConfig, Caller, Price, PriceBook
from mirror.simulator.generate import MODEL_ENDPOINTS

Serve = Callable[..., SimulatedAPI]
FLUX = "fal-ai/flux/dev"
#: the price of FLUX: 0.025 until an hour before NOW, 0.03 after
CHANGE = NOW - timedelta(hours=1)
BOOK_SCHEDULES = {FLUX: [(NOW - timedelta(days=30), Price(25_000_000, "image")),
                         (CHANGE, Price(30_000_000, "image"))]}  # fmt: skip
BOOK = PriceBook(BOOK_SCHEDULES)
ONE_CALLER = (Caller("Production key", "Production key", api_key_id="sim-key-id"),)
LAG = timedelta(minutes=2)


def _billing(**kw: Any) -> BillingConfig:
    return BillingConfig(**{"prices": BOOK, "callers": ONE_CALLER, "lag": LAG, **kw})


def _events(api: SimulatedAPI, key: str = DEFAULT_KEY, **params: Any) -> list[dict[str, Any]]:
    with client(api, key) as http:
        response = http.get(BILLING_EVENTS, params=params)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["next_cursor"] is None and body["has_more"] is False, "expected one page"
    events: list[dict[str, Any]] = body["billing_events"]
    return events


def _event(n: int, ended: float, units: float, nano_price: int, percent: int | None = None,
           endpoint_id: str = FLUX) -> dict[str, Any]:  # fmt: skip
    """The event of hand-made request ``n`` as the API must show it, amounts worked out
    here by hand-rule: units x price in nano-USD, discount rounded half to even."""
    subtotal = int((Decimal(repr(units)) * nano_price).to_integral_value())
    discount = int((Decimal(subtotal) * (percent or 0) / 100).to_integral_value())
    total = subtotal - discount
    return {
        "request_id": rid(n),
        "endpoint_id": endpoint_id,
        "timestamp": at(ended).isoformat().replace("+00:00", "Z"),
        "output_units": units,
        "unit_price": nano_price / 1e9,
        "percent_discount": percent,
        "cost_subtotal": subtotal / 1e9,
        "cost_discount": discount / 1e9,
        "cost_total": total / 1e9,
        "cost_estimate_nano_usd": total,
    }


def test_only_billed_requests_have_events_and_only_once_they_appear(
    clock: ManualClock, serve: Serve
) -> None:
    world = World(
        WorldConfig(clock=clock),
        [
            req(1, endpoint_id=FLUX, sent=-7200, ended=-7000, units=2.0),
            req(2, endpoint_id=FLUX, sent=-7100, ended=-6900, units=1.5, status=500),
            req(3, endpoint_id=FLUX, sent=-7000, ended=-6800, units=None),
            replace(req(4, endpoint_id=FLUX, sent=-6900, ended=-6700), billing_at=None),
            req(5, endpoint_id="acme/app", sent=-6800, ended=-6600, units=3.0),
            req(6, endpoint_id=FLUX, sent=-600, ended=-100, units=1.0, billing=-30),
            req(7, endpoint_id=FLUX, sent=-60, ended=600, units=0.75),
        ],
    )
    api = serve(world, billing=_billing())
    window = {"start": at(-86400).isoformat(), "end": at(3600).isoformat()}
    # request 6 billed 30 s ago: its event appears 2 minutes after that; 7 is still running
    assert _events(api, **window) == [_event(1, -7000, 2.0, 25_000_000)]
    clock.set(at(-30 + LAG.total_seconds()))
    assert _events(api, **window) == [
        _event(6, -100, 1.0, 30_000_000),
        _event(1, -7000, 2.0, 25_000_000),
    ], "the event of request 6 should appear exactly its lag after its billing landed"
    clock.set(at(600 + LAG.total_seconds()))
    assert [e["request_id"] for e in _events(api, **window)] == [rid(7), rid(6), rid(1)]
    api.ledger.config = _billing(bill_owned=True)
    assert [e["request_id"] for e in _events(api, **window)] == [rid(7), rid(6), rid(5), rid(1)], (
        "with bill_owned, the call to the account's own app is billed too"
    )


def test_amounts_are_exact_with_discounts_and_the_price_of_their_time(
    clock: ManualClock, serve: Serve
) -> None:
    world = World(
        WorldConfig(clock=clock),
        [
            req(1, endpoint_id=FLUX, sent=-7300, ended=-7200, units=1.5),
            req(2, endpoint_id=FLUX, sent=-3700, ended=-3601, units=0.75),
            req(3, endpoint_id=FLUX, sent=-3700, ended=-3599, units=2.333),
        ],
    )
    clock.set(at(3600))
    api = serve(world, billing=_billing(discounts={FLUX: 10}))
    got = _events(api, start=at(-86400).isoformat(), end=NOW.isoformat())
    assert got == [
        _event(3, -3599, 2.333, 30_000_000, 10),
        _event(2, -3601, 0.75, 25_000_000, 10),
        _event(1, -7200, 1.5, 25_000_000, 10),
    ]
    first = got[2]
    assert (first["cost_subtotal"], first["cost_discount"], first["cost_total"]) == (
        0.0375,
        0.00375,
        0.03375,
    )
    assert first["cost_estimate_nano_usd"] == 33_750_000


def test_pricing_shows_the_price_of_the_moment_and_leaves_own_apps_out(
    clock: ManualClock, serve: Serve
) -> None:
    world = World(WorldConfig(clock=clock), [req(1, endpoint_id=FLUX, sent=-100)])
    api = serve(world, billing=_billing(prices=PriceBook(BOOK_SCHEDULES, changes=[CHANGE])))
    params = [("endpoint_id", f"{FLUX},fal-ai/whisper"), ("endpoint_id", "acme/app")]

    def prices() -> list[dict[str, Any]]:
        with client(api) as http:
            body = http.get(PRICING, params=params).json()
        assert (body["next_cursor"], body["has_more"]) == (None, False)
        result: list[dict[str, Any]] = body["prices"]
        return result

    now = [
        {"endpoint_id": FLUX, "unit_price": 0.03, "unit": "image", "currency": "USD"},
        {"endpoint_id": "fal-ai/whisper", "unit_price": 0.00132, "unit": "minute",
         "currency": "USD"},
    ]  # fmt: skip
    assert prices() == now
    clock.set(CHANGE - timedelta(microseconds=1))
    assert prices() == [
        {"endpoint_id": FLUX, "unit_price": 0.025, "unit": "image", "currency": "USD"},
        {"endpoint_id": "fal-ai/whisper", "unit_price": 0.0011, "unit": "minute",
         "currency": "USD"},
    ], "before the change instant, the old prices"  # fmt: skip


@pytest.fixture(scope="module")
def model_world() -> World:
    """A day of calls to hosted models and one own app; never mutated."""
    return gen(
        WorldConfig(clock=ManualClock(NOW)),
        seed=5,
        now=NOW,
        days=1,
        requests_per_hour=60,
        endpoints={**MODEL_ENDPOINTS, "acme/app": 0.2},
        running=4,
        big_tie_group=40,
    )


def _walk(api: SimulatedAPI, path: str, params: dict[str, Any], key: str = DEFAULT_KEY,
          field: str = "billing_events") -> tuple[list[dict[str, Any]], int]:  # fmt: skip
    out: list[dict[str, Any]] = []
    cursor = None
    pages = 0
    with client(api, key) as http:
        while True:
            response = http.get(path, params={**params, **({"cursor": cursor} if cursor else {})})
            assert response.status_code == 200, response.text
            body = response.json()
            assert body["has_more"] == (body["next_cursor"] is not None)
            out.extend(body[field])
            pages += 1
            cursor = body["next_cursor"]
            if cursor is None:
                return out, pages


def _billed(world: World, lag: timedelta = timedelta(minutes=2)) -> dict[str, Any]:
    """Request id -> request, for what must be billed by NOW: successful calls to hosted
    models with units whose billing landed at least ``lag`` before NOW (restated from the
    documented rules, without the ledger)."""
    return {
        r.request_id: r
        for r in world
        if not r.endpoint_id.startswith("acme/")
        and 200 <= r.status_code < 300
        and r.billable_units is not None
        and r.billing_at is not None
        and max(r.billing_at, r.ended_at) + lag <= NOW
    }


def test_a_walk_returns_every_event_once_newest_first(model_world: World, serve: Serve) -> None:
    api = serve(model_world)
    events, pages = _walk(api, BILLING_EVENTS, {"limit": 37, "start": at(-2 * 86400).isoformat()})
    ids = [e["request_id"] for e in events]
    assert len(ids) == len(set(ids)), "an event came back twice"
    assert set(ids) == set(_billed(model_world)), "the walk is not exactly the billed requests"
    order = [(e["timestamp"], e["request_id"]) for e in events]
    assert order == sorted(order, reverse=True), "events are not newest first"
    assert pages == -(-len(ids) // 37)
    for e in events:
        r = model_world.get(e["request_id"])
        assert r is not None and e["timestamp"] == r.ended_at.isoformat().replace("+00:00", "Z")
        assert e["cost_estimate_nano_usd"] == round(e["cost_total"] * 1e9)


def test_filters_select_what_they_name(model_world: World, serve: Serve) -> None:
    api = serve(model_world)
    whole = {"start": at(-2 * 86400).isoformat(), "limit": 10_000}
    every = _walk(api, BILLING_EVENTS, {**whole, "expand": "auth_method_structured"})[0]
    some = [e["request_id"] for e in every[:3]]

    def ids(**params: Any) -> list[str]:
        return [e["request_id"] for e in _walk(api, BILLING_EVENTS, {**whole, **params})[0]]

    assert ids(endpoint_id="fal-ai/whisper") == [
        e["request_id"] for e in every if e["endpoint_id"] == "fal-ai/whisper"
    ]
    assert ids(request_id=",".join(some)) == some
    assert ids(api_key_id="sim-ci-key-id") == [
        e["request_id"]
        for e in every
        if e["auth_method_structured"].get("api_key_id") == "sim-ci-key-id"
    ]
    assert ids(login_username="alice") == [
        e["request_id"]
        for e in every
        if e["auth_method_structured"].get("login_username") == "alice"
    ]
    assert {e["auth_method_structured"]["detail"] for e in every} == {
        "Production key",
        "CI key",
        "alice",
    }, "the default callers should each have made some calls"


def test_a_page_holds_at_most_10000_events(serve: Serve) -> None:
    world = gen(WorldConfig(clock=ManualClock(NOW)), seed=9, now=NOW, days=1,
                requests_per_hour=560, endpoints={FLUX: 1.0}, running=0,
                big_tie_group=0)  # fmt: skip
    api = serve(world)
    with client(api) as http:
        body = http.get(BILLING_EVENTS, params={"limit": 50_000}).json()
    assert len(_billed(world)) > 10_000, "the world is too small to test the cap"
    assert (len(body["billing_events"]), body["has_more"]) == (10_000, True)


def test_the_range_is_capped_at_90_days(model_world: World, serve: Serve) -> None:
    api = serve(model_world)
    with client(api) as http:
        ok = http.get(BILLING_EVENTS, params={"start": at(-90 * 86400).isoformat(),
                                              "end": NOW.isoformat()})  # fmt: skip
        over = http.get(BILLING_EVENTS, params={"start": at(-90 * 86400 - 1).isoformat(),
                                                "end": NOW.isoformat()})  # fmt: skip
        open_ended = http.get(BILLING_EVENTS, params={"start": at(-91 * 86400).isoformat()})
    assert ok.status_code == 200, ok.text
    for response in (over, open_ended):
        assert response.status_code == 400, response.text
        assert "capped at 90 days" in response.json()["error"]["message"]


def test_billing_events_and_usage_need_an_admin_key(model_world: World, serve: Serve) -> None:
    api = serve(model_world, keys=KEYS, admin_keys=frozenset({DEFAULT_KEY}))
    endpoint = {"endpoint_id": FLUX}
    with client(api, API_SCOPE_KEY) as http:
        statuses = {path: http.get(path, params=endpoint).status_code
                    for path in (BILLING_EVENTS, USAGE, PRICING, MODELS, MODELS_ANALYTICS)}  # fmt: skip
        refused = http.get(BILLING_EVENTS).json()
    assert statuses == {BILLING_EVENTS: 403, USAGE: 403, PRICING: 200, MODELS: 200,
                        MODELS_ANALYTICS: 200}  # fmt: skip
    assert refused["error"]["type"] == "authorization_error"
    assert "ADMIN" in refused["error"]["message"]
    with client(api) as http:
        assert http.get(BILLING_EVENTS).status_code == 200


def _nano(x: float) -> int:
    return round(Decimal(repr(x)) * 1_000_000_000)


def test_usage_totals_are_the_events_summed(model_world: World, serve: Serve) -> None:
    api = serve(model_world)
    window = {"start": at(-2 * 86400).isoformat(), "end": NOW.isoformat()}
    events = _walk(api, BILLING_EVENTS, {**window, "limit": 10_000})[0]
    want: dict[tuple[str, str], int] = defaultdict(int)
    units: dict[tuple[str, str], float] = defaultdict(float)
    for e in events:
        key = (e["timestamp"][:10], e["endpoint_id"])
        want[key] += e["cost_estimate_nano_usd"]
        units[key] += e["output_units"]
    series = _walk(api, USAGE, {**window, "timeframe": "day", "limit": 1},
                   field="time_series")[0]  # fmt: skip
    got: dict[tuple[str, str], int] = defaultdict(int)
    quantity: dict[tuple[str, str], float] = defaultdict(float)
    for bucket in series:
        for line in bucket["results"]:
            key = (bucket["bucket"][:10], line["endpoint_id"])
            got[key] += _nano(line["cost_total"])
            quantity[key] += line["quantity"]
            assert line["cost"] == line["cost_total"]
            assert _nano(line["cost_subtotal"]) - _nano(line["cost_discount"]) == _nano(
                line["cost_total"]
            )
    assert got == want, "usage per day and endpoint is not the events summed"
    assert quantity == pytest.approx(units)
    with client(api) as http:
        summary = http.get(USAGE, params={**window, "expand": "summary"}).json()
    assert "time_series" not in summary
    assert sum(_nano(line["cost_total"]) for line in summary["summary"]) == sum(want.values())


def test_usage_by_caller_splits_the_lines(model_world: World, serve: Serve) -> None:
    api = serve(model_world)
    params = [("start", at(-2 * 86400).isoformat()), ("expand", "summary"),
              ("expand", "auth_method"), ("endpoint_id", FLUX)]  # fmt: skip
    with client(api) as http:
        lines = http.get(USAGE, params=params).json()["summary"]
        alice = http.get(USAGE, params=[*params, ("login_username", "alice")]).json()["summary"]
    assert {line["auth_method"] for line in lines} == {"Production key", "CI key", "User token"}
    assert alice == [line for line in lines if line["auth_method"] == "User token"]


def test_model_analytics_counts_any_endpoint(model_world: World, serve: Serve) -> None:
    api = serve(model_world)
    params = {"endpoint_id": "acme/app", "timeframe": "hour", "start": at(-86400).isoformat(),
              "end": NOW.isoformat(), "expand": "time_series,summary,request_count"}  # fmt: skip
    with client(api) as http:
        own_models = http.get(MODELS_ANALYTICS, params=params).json()
        own_serverless = http.get(ANALYTICS, params=params).json()
        hosted = http.get(MODELS_ANALYTICS, params={**params, "endpoint_id": FLUX})
        refused = http.get(ANALYTICS, params={**params, "endpoint_id": FLUX})
        listed = http.get(LIST, params={"endpoint_id": FLUX})
    assert own_models == own_serverless, "both analytics count the same requests"
    assert (hosted.status_code, refused.status_code, listed.status_code) == (200, 403, 403)
    total = sum(r["request_count"] for r in hosted.json()["summary"])
    want = sum(
        1
        for r in model_world
        if r.endpoint_id == FLUX and at(-86400) <= r.ended_at < NOW and r.recorded_at <= NOW
    )
    assert total == want
