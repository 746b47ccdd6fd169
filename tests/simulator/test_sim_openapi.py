"""The simulator speaks fal's OpenAPI description: every answer, every error class.

Each case sends a real request to a running `SimulatedAPI`, checks that the *request*
is valid or invalid per the spec exactly as the case expects (so the 400s the simulator
gives match what the spec itself forbids, where the spec can say it), and validates the
response: status declared for the operation, content type, body schema. Hostile faults
(HTML pages, resets, bad data) are deliberately outside the spec and tested elsewhere.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
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
    client,
)
from support.spec import SpecChecker

from mirror.simulator import DEFAULT_KEY, FaultConfig, ManualClock, SimulatedAPI, World, WorldConfig
from mirror.simulator import generate_world as gen
from mirror.simulator.billing import BillingConfig, PriceBook
from mirror.simulator.generate import MODEL_ENDPOINTS

REPO_ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def world() -> World:
    """Two days of history with running requests and arrivals after `NOW`; never mutated."""
    config = WorldConfig(clock=ManualClock(NOW), billing_refused=frozenset({"acme/whisper-v3"}))
    return gen(
        config,
        seed=11,
        now=NOW,
        days=2,
        requests_per_hour=45,
        dense_hour=(NOW - timedelta(hours=6), 400),
        future_minutes=20,
        running=6,
    )


@pytest.fixture(scope="module")
def api(world: World) -> Any:
    with SimulatedAPI(world) as running:
        yield running
        assert not running.errors, f"the simulator raised while serving: {running.errors!r}"


@dataclass(frozen=True)
class Case:
    """One request: where, what, who, and what the spec and the simulator must make of it."""

    name: str
    path: str
    params: list[tuple[str, Any]]
    status: int = 200
    spec_valid: bool = True
    key: str | None = DEFAULT_KEY
    authorization: str | None = None
    message: str | None = None  # substring of error.message for error answers
    error_type: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)


E = ("endpoint_id", "acme/flux-lora")
W = [("start", "2026-11-27T12:00:00Z"), ("end", "2026-11-28T12:00:00Z")]

CASES = [
    # -- successes: both list operations, expansions, sorts, filters, windows
    Case("serverless default", LIST, [E]),
    Case("serverless payloads", LIST, [E, ("expand", "payloads")]),
    Case("serverless billing", LIST, [E, ("expand", "billing")]),
    Case(
        "serverless both expands repeated", LIST, [E, ("expand", "payloads"), ("expand", "billing")]
    ),
    Case("serverless expand comma-joined", LIST, [E, ("expand", "payloads,billing")]),
    Case("sort by duration", LIST, [E, ("sort_by", "duration"), ("limit", "100")]),
    Case("sort by ended_at", LIST, [E, ("sort_by", "ended_at"), ("limit", "7")]),
    Case("status success", LIST, [E, ("status", "success"), *W]),
    Case("status user_error", LIST, [E, ("status", "user_error"), *W]),
    Case("status error", LIST, [E, ("status", "error"), *W]),
    Case("date-only window", LIST, [E, ("start", "2026-11-27"), ("end", "2026-11-28")]),
    Case(
        "offset window",
        LIST,
        [E, ("start", "2026-11-27T14:00:00+02:00"), ("end", "2026-11-28T08:30:00.5-03:30")],
    ),
    Case(
        "repeated endpoints",
        LIST,
        [E, ("endpoint_id", "acme/upscaler"), ("endpoint_id", "acme/whisper-v3")],
    ),
    Case("comma endpoints", LIST, [("endpoint_id", "acme/flux-lora,acme/upscaler")]),
    Case("route-level endpoint", LIST, [("endpoint_id", "acme/flux-lora/turbo")]),
    Case("unknown owned endpoint", LIST, [("endpoint_id", "acme/never-deployed")]),
    Case("cursor past the end", LIST, [E, ("cursor", "OTk5")]),
    Case("unknown parameter ignored", LIST, [E, ("expand_payloads", "true")]),
    Case("models default", MODELS, [E]),
    Case("models payloads", MODELS, [E, ("expand", "payloads"), ("sort_by", "duration")]),
    Case("models foreign endpoint", MODELS, [("endpoint_id", "fal-ai/flux/dev")]),
    Case("analytics default", ANALYTICS, [E]),
    Case(
        "analytics all metrics",
        ANALYTICS,
        [E, ("endpoint_id", "acme/upscaler"), ("expand", "time_series"), ("expand", "summary")]
        + [
            ("expand", m)
            for m in (
                "request_count",
                "success_count",
                "user_error_count",
                "error_count",
                "startup_error_count",
                "connection_error_count",
                "timeout_error_count",
                "runtime_error_count",
                "p25_duration",
                "p50_duration",
                "p75_duration",
                "p90_duration",
                "p95_duration",
                "p99_duration",
                "p50_prepare_duration",
                "p75_prepare_duration",
                "p90_prepare_duration",
                "p95_prepare_duration",
                "p99_prepare_duration",
                "cold_boot_count",
                "p50_cold_boot_duration",
                "p75_cold_boot_duration",
                "p90_cold_boot_duration",
                "total_billable_duration",
            )
        ],
    ),
    Case(
        "analytics summary only", ANALYTICS, [E, ("expand", "summary,request_count,p95_duration")]
    ),
    *(
        Case(
            f"analytics timeframe {tf}",
            ANALYTICS,
            [E, ("timeframe", tf), *W, ("expand", "time_series"), ("expand", "error_count")],
        )
        for tf in ("minute", "hour", "day", "week", "month")
    ),
    Case(
        "analytics timezone",
        ANALYTICS,
        [E, ("timezone", "America/New_York"), ("start", "2026-11-26"), ("end", "2026-11-28")],
    ),
    Case(
        "analytics unbound",
        ANALYTICS,
        [E, ("bound_to_timeframe", "false"), ("start", "2026-11-27T10:17:00Z")],
    ),
    # -- 400: values the spec itself forbids
    Case("limit 0", LIST, [E, ("limit", "0")], 400, False, message="limit"),
    Case("limit 101", LIST, [E, ("limit", "101")], 400, False, message="limit"),
    Case("limit not a number", LIST, [E, ("limit", "ten")], 400, False, message="limit"),
    Case("no endpoint_id", LIST, [("limit", "5")], 400, False, message="endpoint_id is required"),
    Case("bad status", LIST, [E, ("status", "failed")], 400, False, message="status"),
    Case("bad sort_by", LIST, [E, ("sort_by", "sent_at")], 400, False, message="sort_by"),
    Case(
        "request_id not a uuid", LIST, [E, ("request_id", "abc")], 400, False, message="request_id"
    ),
    Case("start not a date", LIST, [E, ("start", "yesterday")], 400, False, message="start"),
    Case("end not a date", MODELS, [E, ("end", "2026-11-28 noon")], 400, False, message="end"),
    Case(
        "analytics bad timeframe",
        ANALYTICS,
        [E, ("timeframe", "year")],
        400,
        False,
        message="timeframe",
    ),
    Case(
        "analytics bad bound",
        ANALYTICS,
        [E, ("bound_to_timeframe", "yes")],
        400,
        False,
        message="bound_to_timeframe",
    ),
    Case("analytics limit 0", ANALYTICS, [E, ("limit", "0")], 400, False, message="limit"),
    # -- 400: values the spec allows but the service refuses
    Case(
        "51 endpoint ids",
        LIST,
        [("endpoint_id", ",".join(f"acme/a{k}" for k in range(51)))],
        400,
        message="at most 50",
    ),
    Case("bad cursor", LIST, [E, ("cursor", "not*base64")], 400, message="cursor"),
    Case("cursor not a page", LIST, [E, ("cursor", "YWJj")], 400, message="cursor"),
    Case("unknown expand", LIST, [E, ("expand", "everything")], 400, message="expand"),
    Case("models expand billing", MODELS, [E, ("expand", "billing")], 400, message="expand"),
    Case("date pattern but month 13", MODELS, [E, ("end", "2026-13-01")], 400, message="end"),
    Case(
        "start after end",
        LIST,
        [E, ("start", "2026-11-28"), ("end", "2026-11-27")],
        400,
        message="start",
    ),
    Case("malformed endpoint id", LIST, [("endpoint_id", "flux")], 400, message="endpoint_id"),
    Case(
        "analytics bad timezone",
        ANALYTICS,
        [E, ("timezone", "Mars/Olympus")],
        400,
        message="timezone",
    ),
    Case("analytics no metric", ANALYTICS, [E, ("expand", "time_series")], 400, message="metric"),
    Case(
        "analytics minute buckets over a year",
        ANALYTICS,
        [E, ("timeframe", "minute"), ("start", "2025-11-01")],
        400,
        message="buckets",
    ),
    # -- 401, both kinds
    Case("no authorization", LIST, [E], 401, False, key=None, message="Authentication required"),
    Case(
        "bearer instead of key",
        LIST,
        [E],
        401,
        key=None,
        authorization="Bearer abc",
        message="Authentication required",
    ),
    Case(
        "unknown key",
        LIST,
        [E],
        401,
        key="someone:else",
        message="Invalid API key or malformed Authorization header",
    ),
    Case(
        "analytics unknown key", ANALYTICS, [E], 401, key="someone:else", message="Invalid API key"
    ),
    Case(
        "models no authorization",
        MODELS,
        [E],
        401,
        False,
        key=None,
        message="Authentication required",
    ),
    # -- 403
    Case(
        "foreign endpoint",
        LIST,
        [("endpoint_id", "fal-ai/flux/dev")],
        403,
        message="Access denied",
        error_type="authorization_error",
    ),
    Case(
        "owned and foreign", LIST, [E, ("endpoint_id", "other/app")], 403, message="Access denied"
    ),
    Case(
        "analytics foreign", ANALYTICS, [("endpoint_id", "other/app")], 403, message="Access denied"
    ),
    Case(
        "billing refused",
        LIST,
        [("endpoint_id", "acme/whisper-v3"), ("expand", "billing")],
        403,
        message="Access denied",
    ),
]


def _send(api: SimulatedAPI, case: Case) -> httpx.Response:
    with client(api, case.key) as http:
        headers = {"Authorization": case.authorization} if case.authorization else {}
        return http.get(case.path, params=case.params, headers=headers)


def _check(
    spec: SpecChecker, case: Case, response: httpx.Response, *, as_path: str | None = None
) -> None:
    request_errors = [] if as_path else spec.request_errors(response.request)
    if not as_path:
        assert (not request_errors) == case.spec_valid, (
            f"{case.name}: expected the spec to find the request "
            f"{'valid' if case.spec_valid else 'invalid'}, its errors: {request_errors}"
        )
    assert response.status_code == case.status, (
        f"{case.name}: expected {case.status}, got {response.status_code}: {response.text[:500]}"
    )
    assert response.headers["content-type"] == "application/json", (
        f"{case.name}: {response.headers}"
    )
    response_errors = spec.response_errors(response, as_path=as_path)
    assert not response_errors, f"{case.name}: response breaks the spec: {response_errors}"
    if case.status != 200:
        error = response.json()["error"]
        expected_type = (
            case.error_type
            or {
                400: "validation_error",
                401: "authorization_error",
                403: "authorization_error",
                404: "not_found",
                429: "rate_limited",
                500: "server_error",
            }[case.status]
        )
        assert error["type"] == expected_type, f"{case.name}: {error}"
        assert case.message is not None and case.message in error["message"], (
            f"{case.name}: {error}"
        )


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_answers_conform_to_the_spec(api: SimulatedAPI, spec: SpecChecker, case: Case) -> None:
    _check(spec, case, _send(api, case))


PAGED = [
    (
        LIST,
        [
            E,
            ("endpoint_id", "acme/upscaler"),
            ("limit", "100"),
            ("expand", "payloads"),
            ("expand", "billing"),
            *W,
        ],
    ),
    (
        LIST,
        [
            ("endpoint_id", "acme/flux-lora"),
            ("limit", "100"),
            ("sort_by", "duration"),
            ("start", "2026-11-26T12:00:00Z"),
            ("end", "2026-11-28T12:30:00Z"),
        ],
    ),
    (MODELS, [("endpoint_id", "acme/upscaler"), ("limit", "100"), ("expand", "payloads"), *W]),
    (
        ANALYTICS,
        [
            E,
            ("limit", "10"),
            ("timeframe", "hour"),
            ("expand", "time_series,summary,request_count,p99_duration"),
        ],
    ),
]


@pytest.mark.parametrize(
    ("path", "params"), PAGED, ids=["serverless", "by-duration", "models", "analytics"]
)
def test_every_page_of_a_walk_conforms(
    api: SimulatedAPI, spec: SpecChecker, path: str, params: list[tuple[str, Any]]
) -> None:
    """Paging to the end, each page (and each follow-up request with its cursor) is valid."""
    pages = 0
    cursor: str | None = None
    with client(api) as http:
        while True:
            response = http.get(path, params=params + ([("cursor", cursor)] if cursor else []))
            case = Case(f"{path} page {pages + 1}", path, params)
            _check(spec, case, response)
            pages += 1
            cursor = response.json()["next_cursor"]
            if cursor is None:
                break
    assert pages >= 2, f"{path}: expected the walk to need several pages, it took {pages}"


def test_not_found_is_fals_error_shape(api: SimulatedAPI, spec: SpecChecker) -> None:
    """An unknown path is not in the spec at all; its 404 body must still be the documented
    error, so it is validated as a 404 of the list operation."""
    with client(api) as http:
        response = http.get("/serverless/requests/by-app", params=[E])
    assert spec.request_errors(response.request), (
        "the spec unexpectedly describes /serverless/requests/by-app"
    )
    _check(
        spec,
        Case("unknown path", LIST, [E], 404, message="not found"),
        response,
        as_path="/v1" + LIST,
    )


@pytest.mark.parametrize(
    ("faults", "status", "message"),
    [
        (FaultConfig(p_429=1.0), 429, "Rate limit exceeded"),
        (FaultConfig(p_429=1.0, retry_after=2), 429, "Rate limit exceeded"),
        (FaultConfig(rate_limit=0.01, burst=1), 429, "Rate limit exceeded"),
        (FaultConfig(p_json_500=1.0), 500, "Unexpected server error"),
    ],
    ids=["429", "429-retry-after", "rate-limit", "json-500"],
)
def test_json_faults_conform(
    world: World,
    spec: SpecChecker,
    serve: Callable[..., SimulatedAPI],
    faults: FaultConfig,
    status: int,
    message: str,
) -> None:
    api = serve(world, faults=faults)
    for path in (LIST, MODELS, ANALYTICS):
        case = Case(f"{path} {faults}", path, [E], status, message=message)
        responses = [_send(api, case) for _ in range(2)]  # the bucket's one token goes first
        _check(spec, case, responses[-1])


def test_generated_world_is_module_fixture_sized(world: World) -> None:
    """Guards the premise of the paging cases: enough data for several pages each."""
    assert 1500 < len(world) < 6000, f"conformance world has {len(world)} requests"


# --------------------------------------------------------------------------- cost operations


@pytest.fixture(scope="module")
def model_api() -> Any:
    """Two days of calls to hosted models and an own app, priced with a change 20 hours
    before `NOW`, a discount on one model; the default key is ADMIN, `API_SCOPE_KEY` not."""
    world = gen(
        WorldConfig(clock=ManualClock(NOW)),
        seed=12,
        now=NOW,
        days=2,
        requests_per_hour=40,
        endpoints={**MODEL_ENDPOINTS, "acme/app": 0.2},
        future_minutes=20,
        running=4,
        big_tie_group=30,
    )
    billing = BillingConfig(
        prices=PriceBook(changes=[NOW - timedelta(hours=20)]),
        discounts={"fal-ai/flux/dev": 15},
    )
    with SimulatedAPI(
        world, keys=KEYS, admin_keys=frozenset({DEFAULT_KEY}), billing=billing
    ) as running:
        yield running
        assert not running.errors, f"the simulator raised while serving: {running.errors!r}"


F = ("endpoint_id", "fal-ai/flux/dev")
D = [("start", "2026-11-26T12:00:00Z"), ("end", "2026-11-28T12:00:00Z")]
BOTH = [("expand", "auth_method"), ("expand", "auth_method_structured")]
ADMIN_ONLY = "Access denied: this operation needs an ADMIN key"

COST_CASES = [
    # -- billing events
    Case("events default", BILLING_EVENTS, []),
    Case("events window, big page, callers", BILLING_EVENTS, [*D, ("limit", "10000"), *BOTH]),
    Case("events limit over the cap", BILLING_EVENTS, [*D, ("limit", "20000")]),
    Case("events expand comma-joined", BILLING_EVENTS, [("expand", "auth_method,auth_method_structured")]),
    Case("events by endpoints", BILLING_EVENTS, [F, ("endpoint_id", "fal-ai/whisper,acme/app"), *D]),
    Case("events by request id", BILLING_EVENTS, [("request_id", "abc123,def456")]),
    Case("events by key and member", BILLING_EVENTS,
         [*D, ("api_key_id", "sim-ci-key-id"), ("login_username", "alice"), *BOTH]),
    Case("events date-only window", BILLING_EVENTS, [("start", "2026-11-27"), ("end", "2026-11-28")]),
    Case("events exactly 90 days", BILLING_EVENTS, [("start", "2026-08-30T12:00:00Z"), ("end", "2026-11-28T12:00:00Z")]),
    Case("events cursor past the end", BILLING_EVENTS, [("cursor", "OTk5")]),
    Case("events limit 0", BILLING_EVENTS, [("limit", "0")], 400, False, message="limit"),
    Case("events start not a date", BILLING_EVENTS, [("start", "last week")], 400, False,
         message="start"),
    Case("events over 90 days", BILLING_EVENTS, [("start", "2026-08-01"), ("end", "2026-11-28")],
         400, message="capped at 90 days"),
    Case("events open start over 90 days", BILLING_EVENTS, [("start", "2026-08-01")], 400,
         message="capped at 90 days"),
    Case("events 51 endpoints", BILLING_EVENTS,
         [("endpoint_id", ",".join(f"fal-ai/m{k}" for k in range(51)))], 400, message="at most 50"),
    Case("events 51 request ids", BILLING_EVENTS,
         [("request_id", ",".join(f"r{k}" for k in range(51)))], 400, message="at most 50"),
    Case("events unknown expand", BILLING_EVENTS, [("expand", "billing")], 400, message="expand"),
    Case("events malformed endpoint", BILLING_EVENTS, [("endpoint_id", "flux")], 400,
         message="endpoint_id"),
    Case("events bad cursor", BILLING_EVENTS, [("cursor", "not*base64")], 400, message="cursor"),
    Case("events start after end", BILLING_EVENTS, [("start", "2026-11-28"), ("end", "2026-11-27")],
         400, message="start"),
    Case("events no authorization", BILLING_EVENTS, [], 401, False, key=None,
         message="Authentication required"),
    Case("events unknown key", BILLING_EVENTS, [], 401, key="someone:else",
         message="Invalid API key"),
    Case("events not admin", BILLING_EVENTS, [], 403, key=API_SCOPE_KEY, message=ADMIN_ONLY),
    # -- pricing
    Case("pricing one", PRICING, [F]),
    Case("pricing several, own app left out", PRICING,
         [F, ("endpoint_id", "fal-ai/whisper,fal-ai/flux/schnell"), ("endpoint_id", "acme/app")]),
    Case("pricing with an API key", PRICING, [F], key=API_SCOPE_KEY),
    Case("pricing no endpoint", PRICING, [], 400, False, message="endpoint_id is required"),
    Case("pricing 51 endpoints", PRICING,
         [("endpoint_id", ",".join(f"fal-ai/m{k}" for k in range(51)))], 400, message="at most 50"),
    Case("pricing malformed endpoint", PRICING, [("endpoint_id", "fal-ai/")], 400,
         message="endpoint_id"),
    Case("pricing no authorization", PRICING, [F], 401, False, key=None,
         message="Authentication required"),
    # -- usage
    Case("usage default", USAGE, []),
    Case("usage summary and series, callers", USAGE,
         [*D, ("expand", "time_series,summary"), *BOTH, ("timeframe", "day")]),
    Case("usage summary only", USAGE, [*D, ("expand", "summary"), F]),
    *(
        Case(f"usage timeframe {tf}", USAGE, [("timeframe", tf), *D, ("expand", "time_series")])
        for tf in ("hour", "day", "week", "month")
    ),
    Case("usage timezone", USAGE, [("timezone", "America/New_York"), ("timeframe", "day"), *D]),
    Case("usage unbound", USAGE, [("bound_to_timeframe", "false"), ("start", "2026-11-27T10:17:00Z")]),
    Case("usage by key", USAGE, [*D, ("api_key_id", "sim-key-id"), ("expand", "summary")]),
    Case("usage bad timeframe", USAGE, [("timeframe", "year")], 400, False, message="timeframe"),
    Case("usage bad bound", USAGE, [("bound_to_timeframe", "maybe")], 400, False,
         message="bound_to_timeframe"),
    Case("usage limit 0", USAGE, [("limit", "0")], 400, False, message="limit"),
    Case("usage callers only", USAGE, [("expand", "auth_method")], 400, message="time_series"),
    Case("usage unknown expand", USAGE, [("expand", "request_count")], 400, message="expand"),
    Case("usage bad timezone", USAGE, [("timezone", "Mars/Olympus")], 400, message="timezone"),
    Case("usage minute buckets over a year", USAGE, [("timeframe", "minute"), ("start", "2025-11-01")],
         400, message="buckets"),
    Case("usage unknown key", USAGE, [], 401, key="someone:else", message="Invalid API key"),
    Case("usage not admin", USAGE, [], 403, key=API_SCOPE_KEY, message=ADMIN_ONLY),
    # -- model analytics
    Case("model analytics default", MODELS_ANALYTICS, [F]),
    Case("model analytics own app too", MODELS_ANALYTICS, [F, ("endpoint_id", "acme/app"),
         ("expand", "time_series,summary,request_count,success_count,p50_duration")]),
    Case("model analytics with an API key", MODELS_ANALYTICS, [F, ("timeframe", "day"), *D],
         key=API_SCOPE_KEY),
    Case("model analytics no endpoint", MODELS_ANALYTICS, [], 400, False,
         message="endpoint_id is required"),
    Case("model analytics bad timeframe", MODELS_ANALYTICS, [F, ("timeframe", "year")], 400, False,
         message="timeframe"),
    Case("model analytics no metric", MODELS_ANALYTICS, [F, ("expand", "summary")], 400,
         message="metric"),
    Case("model analytics no authorization", MODELS_ANALYTICS, [F], 401, False, key=None,
         message="Authentication required"),
]  # fmt: skip


@pytest.mark.parametrize("case", COST_CASES, ids=lambda c: c.name)
def test_cost_answers_conform_to_the_spec(
    model_api: SimulatedAPI, spec: SpecChecker, case: Case
) -> None:
    response = _send(model_api, case)
    _check(spec, case, response)
    if case.status == 200 and case.path in (BILLING_EVENTS, USAGE):
        body = response.json()
        lines = (
            body.get("billing_events")
            or body.get("summary")
            or [line for bucket in body.get("time_series", []) for line in bucket["results"]]
        )
        if case.name not in ("events by request id", "events cursor past the end"):
            assert lines, f"{case.name}: an empty answer proves little about its items"


COST_PAGED = [
    (BILLING_EVENTS, [*D, ("limit", "50"), *BOTH]),
    (USAGE, [*D, ("limit", "5"), ("timeframe", "hour"), ("expand", "time_series,summary")]),
    (MODELS_ANALYTICS, [F, ("limit", "10"), ("timeframe", "hour"),
                        ("expand", "time_series,request_count,p99_duration")]),
]  # fmt: skip


@pytest.mark.parametrize(
    ("path", "params"), COST_PAGED, ids=["billing-events", "usage", "model-analytics"]
)
def test_every_page_of_a_cost_walk_conforms(
    model_api: SimulatedAPI, spec: SpecChecker, path: str, params: list[tuple[str, Any]]
) -> None:
    pages = 0
    cursor: str | None = None
    with client(model_api) as http:
        while True:
            response = http.get(path, params=params + ([("cursor", cursor)] if cursor else []))
            _check(spec, Case(f"{path} page {pages + 1}", path, params), response)
            pages += 1
            cursor = response.json()["next_cursor"]
            if cursor is None:
                break
    assert pages >= 2, f"{path}: expected the walk to need several pages, it took {pages}"


@pytest.mark.parametrize(
    ("faults", "status", "message", "paths"),
    [
        (FaultConfig(p_429=1.0), 429, "Rate limit exceeded",
         (BILLING_EVENTS, PRICING, USAGE, MODELS_ANALYTICS)),
        (FaultConfig(p_429=1.0, retry_after=2), 429, "Rate limit exceeded",
         (BILLING_EVENTS, PRICING, USAGE, MODELS_ANALYTICS)),
        # only the analytics operation declares a 500; the others' 500 is outside the spec
        (FaultConfig(p_json_500=1.0), 500, "Unexpected server error", (MODELS_ANALYTICS,)),
    ],
    ids=["429", "429-retry-after", "json-500"],
)  # fmt: skip
def test_json_faults_of_cost_operations_conform(
    model_api: SimulatedAPI,
    spec: SpecChecker,
    serve: Callable[..., SimulatedAPI],
    faults: FaultConfig,
    status: int,
    message: str,
    paths: tuple[str, ...],
) -> None:
    api = serve(model_api.world, faults=faults)
    for path in paths:
        case = Case(f"{path} {faults}", path, [F], status, message=message)
        _check(spec, case, _send(api, case))
