"""Each injected fault looks, to a plain httpx client, like the failure it models.

No timing assertions: slow deliveries are checked by a client timeout tripping, and by
the body still arriving intact when the client waits.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import httpx
import orjson
import pytest
from support.sim import (
    ANALYTICS,
    BILLING_EVENTS,
    LIST,
    MODELS,
    MODELS_ANALYTICS,
    PRICING,
    USAGE,
    client,
    req,
)

from mirror.simulator import FaultConfig, ManualClock, SimulatedAPI, World, WorldConfig
from mirror.simulator.faults import OVERSIZE_BYTES

Serve = Callable[..., SimulatedAPI]
PARAMS: dict[str, Any] = {"endpoint_id": "acme/app", "limit": 3}
RATE_LIMITED = {"error": {"type": "rate_limited", "message": "Rate limit exceeded"}}
OPERATIONS = (LIST, MODELS, ANALYTICS, MODELS_ANALYTICS, BILLING_EVENTS, PRICING, USAGE)


@pytest.fixture
def world(clock: ManualClock) -> World:
    return World(WorldConfig(clock=clock), [req(n, sent=-1000 + n) for n in range(1, 8)])


def _faults(api: SimulatedAPI) -> list[tuple[int | None, str | None]]:
    return [(e.status, e.fault) for e in api.log]


def test_429_without_retry_after(world: World, serve: Serve) -> None:
    api = serve(world, faults=FaultConfig(p_429=1.0))
    with client(api) as http:
        response = http.get(LIST, params=PARAMS)
    assert (response.status_code, response.json()) == (429, RATE_LIMITED)
    assert "retry-after" not in response.headers
    assert _faults(api) == [(429, "429")]


def test_429_with_retry_after_for_a_fraction(world: World, serve: Serve) -> None:
    api = serve(world, faults=FaultConfig(seed=5, p_429=1.0, retry_after=1.5, p_retry_after=0.5))
    with client(api) as http:
        headers = [http.get(LIST, params=PARAMS).headers.get("retry-after") for _ in range(40)]
    assert set(headers) == {"1.5", None}, f"both kinds expected, got {headers}"
    assert 8 <= headers.count("1.5") <= 32, f"about half should carry Retry-After: {headers}"
    assert [f for _, f in _faults(api)] == ["429+retry-after" if h else "429" for h in headers]


def test_html_5xx_from_a_proxy(world: World, serve: Serve) -> None:
    api = serve(world, faults=FaultConfig(seed=1, p_5xx=1.0))
    with client(api) as http:
        responses = [http.get(path, params=PARAMS) for path in OPERATIONS * 5]
    statuses = {r.status_code for r in responses}
    assert statuses <= {500, 502, 503, 504} and len(statuses) >= 3, statuses
    for r in responses:
        assert r.headers["content-type"] == "text/html; charset=utf-8"
        assert r.text.startswith("<html>") and str(r.status_code) in r.text
        with pytest.raises(json.JSONDecodeError):
            r.json()
    assert {f for _, f in _faults(api)} == {"5xx-html"}


def test_json_500(world: World, serve: Serve) -> None:
    api = serve(world, faults=FaultConfig(p_json_500=1.0))
    with client(api) as http:
        response = http.get(LIST, params=PARAMS)
    assert (response.status_code, response.json()) == (
        500,
        {"error": {"type": "server_error", "message": "Unexpected server error"}},
    )


def test_reset_closes_without_a_response(world: World, serve: Serve) -> None:
    api = serve(world, faults=FaultConfig(p_reset=1.0, max_faults=2))
    with client(api) as http:
        for _ in range(2):
            with pytest.raises((httpx.ReadError, httpx.RemoteProtocolError, httpx.ConnectError)):
                http.get(LIST, params=PARAMS)
        recovered = http.get(LIST, params=PARAMS)
    assert recovered.status_code == 200, "after max_faults the server answers normally"
    assert _faults(api) == [(None, "reset"), (None, "reset"), (200, None)]


@pytest.mark.parametrize("path", OPERATIONS)
def test_every_operation_is_reset_then_answers(world: World, serve: Serve, path: str) -> None:
    api = serve(world, faults=FaultConfig(p_reset=1.0, max_faults=1))
    with client(api) as http:
        with pytest.raises((httpx.ReadError, httpx.RemoteProtocolError, httpx.ConnectError)):
            http.get(path, params=PARAMS)
        recovered = http.get(path, params=PARAMS)
    assert recovered.status_code == 200, recovered.text
    assert _faults(api) == [(None, "reset"), (200, None)]


def test_truncated_body(world: World, serve: Serve) -> None:
    api = serve(world, faults=FaultConfig(p_truncate=1.0, max_faults=1))
    with client(api) as http:
        with pytest.raises(httpx.RemoteProtocolError):
            http.get(LIST, params=PARAMS)
        assert http.get(LIST, params=PARAMS).status_code == 200
    assert _faults(api) == [(200, "truncate"), (200, None)]


def test_stalled_body_trips_a_read_timeout_but_arrives_whole(world: World, serve: Serve) -> None:
    api = serve(world, faults=FaultConfig(p_stall=1.0, stall_byte_delay=0.002))
    impatient = client(api, key="wrong:key", timeout=httpx.Timeout(5.0, read=0.001))
    with impatient, pytest.raises(httpx.ReadTimeout):
        impatient.get(LIST, params=PARAMS)
    with client(api, key="wrong:key", timeout=30) as patient:
        response = patient.get(LIST, params=PARAMS)
    assert (response.status_code, response.json()["error"]["type"]) == (401, "authorization_error")
    assert [f for _, f in _faults(api)] == ["stall", "stall"]


def test_stalled_headers_trip_a_read_timeout_but_arrive_whole(world: World, serve: Serve) -> None:
    api = serve(world, faults=FaultConfig(p_stall_headers=1.0, stall_byte_delay=0.002))
    impatient = client(api, timeout=httpx.Timeout(5.0, read=0.001))
    with impatient, pytest.raises(httpx.ReadTimeout):
        impatient.get(LIST, params=PARAMS)
    with client(api, timeout=30) as patient:
        response = patient.get(LIST, params=PARAMS)
    assert response.status_code == 200 and len(response.json()["items"]) == 3, response.text
    assert [f for _, f in _faults(api)] == ["stall-headers", "stall-headers"]


def test_answer_with_replaces_the_answer_and_can_echo_the_key(world: World, serve: Serve) -> None:
    body = b'{"error": {"type": "authorization_error", "message": "got {authorization}"}}'
    api = serve(world, faults=FaultConfig(answer_with=(401, body)))
    with client(api, key='id:se"cret') as http:
        response = http.get(LIST, params=PARAMS)
    assert (response.status_code, response.json()) == (
        401,
        {"error": {"type": "authorization_error", "message": 'got Key id:se"cret'}},
    )
    assert _faults(api) == [(401, "answer-with")]


def test_latency_trips_a_short_timeout(world: World, serve: Serve) -> None:
    api = serve(world, faults=FaultConfig(latency=0.3))
    with (
        client(api, timeout=httpx.Timeout(5.0, read=0.05)) as http,
        pytest.raises(httpx.ReadTimeout),
    ):
        http.get(LIST, params=PARAMS)
    with client(api) as http:
        assert http.get(LIST, params=PARAMS).status_code == 200
    assert [f for _, f in _faults(api)] == [None, None], "latency is not a fault"


def test_rate_limit_token_bucket(world: World, serve: Serve) -> None:
    api = serve(world, faults=FaultConfig(rate_limit=0.2, burst=2))
    with client(api) as http:
        responses = [http.get(LIST, params=PARAMS) for _ in range(4)]
    assert [r.status_code for r in responses] == [200, 200, 429, 429]
    assert responses[2].json() == RATE_LIMITED and "retry-after" not in responses[2].headers
    assert [f for _, f in _faults(api)] == [None, None, "rate-limit", "rate-limit"]


def test_outage_and_its_end(world: World, serve: Serve) -> None:
    api = serve(world, faults=FaultConfig(outage=True, max_faults=3))
    with client(api) as http:
        unaffected = http.get("/elsewhere")
        responses = [http.get(LIST, params=PARAMS) for _ in range(4)]
    assert unaffected.status_code == 404, "faults apply to the API operations only"
    assert [r.status_code for r in responses] == [503, 503, 503, 200]
    assert responses[0].headers["content-type"].startswith("text/html")
    assert _faults(api) == [
        (404, None),
        (503, "outage"),
        (503, "outage"),
        (503, "outage"),
        (200, None),
    ]


def test_fault_paths_and_runtime_replacement(world: World, serve: Serve) -> None:
    api = serve(world, faults=FaultConfig(p_429=1.0, fault_paths=frozenset({"/v1" + MODELS})))
    with client(api) as http:
        assert http.get(LIST, params=PARAMS).status_code == 200
        assert http.get(MODELS, params=PARAMS).status_code == 429
        api.faults = FaultConfig()
        assert http.get(MODELS, params=PARAMS).status_code == 200


def test_faults_replay_for_a_seed(world: World, serve: Serve) -> None:
    config = FaultConfig(
        seed=42,
        p_429=0.2,
        retry_after=1,
        p_retry_after=0.5,
        p_5xx=0.2,
        p_json_500=0.1,
        p_bad_data=0.3,
        bad_data="wrong_types",
    )

    def run() -> list[tuple[int | None, str | None]]:
        api = serve(world, faults=config)
        with client(api) as http:
            for k in range(60):
                http.get((LIST, MODELS, ANALYTICS)[k % 3], params=PARAMS)
        return _faults(api)

    first, second = run(), run()
    assert first == second, "same seed, same requests: same faults"
    assert len({f for _, f in first}) >= 5, f"the sequence should mix fault kinds: {first}"
    other = serve(world, faults=FaultConfig(**{**_fields(config), "seed": 43}))
    with client(other) as http:
        for k in range(60):
            http.get((LIST, MODELS, ANALYTICS)[k % 3], params=PARAMS)
    assert _faults(other) != first, "another seed gives another sequence"


def _fields(config: FaultConfig) -> dict[str, Any]:
    return {name: getattr(config, name) for name in config.__dataclass_fields__}


def test_config_is_validated() -> None:
    for bad in (
        {"p_429": 1.5},
        {"latency": -1},
        {"bad_data": "nonsense"},
        {"rate_limit": 0},
        {"burst": 0},
        {"answer_with": (1000, b"{}")},
        {"p_stall_headers": -0.1},
    ):
        with pytest.raises(ValueError):
            FaultConfig(**bad)  # type: ignore[arg-type]


# -- hostile 200 pages ----------------------------------------------------------------------


def _bad(serve: Serve, world: World, mode: str, **extra: Any) -> tuple[SimulatedAPI, httpx.Client]:
    api = serve(world, faults=FaultConfig(bad_data=mode, **extra))  # type: ignore[arg-type]
    return api, client(api)


def test_bad_data_wrong_types_and_missing_id(world: World, serve: Serve) -> None:
    api, http = _bad(serve, world, "wrong_types")
    with http:
        first = http.get(LIST, params=PARAMS).json()["items"][0]
        unauthorized = httpx.get(api.base_url + LIST, params=PARAMS)
    assert isinstance(first["status_code"], str) and isinstance(first["duration"], dict)
    assert isinstance(first["started_at"], int)
    assert (
        unauthorized.status_code == 401
        and unauthorized.json()["error"]["type"] == "authorization_error"
    )
    assert [f for _, f in _faults(api)] == ["bad:wrong_types", None], "only 200 pages are corrupted"

    api, http = _bad(serve, world, "missing_request_id")
    with http:
        items = http.get(LIST, params=PARAMS).json()["items"]
    assert "request_id" not in items[0] and all("request_id" in i for i in items[1:])


def test_bad_data_cursor_lies(world: World, serve: Serve) -> None:
    _, http = _bad(serve, world, "has_more_no_cursor")
    with http:
        last = http.get(LIST, params={**PARAMS, "cursor": "Mw=="}).json()
    assert (last["has_more"], last["next_cursor"]) == (True, None)

    _, http = _bad(serve, world, "repeat_cursor")
    with http:
        cursors = [
            http.get(LIST, params={**PARAMS, **({"cursor": c} if c else {})}).json()["next_cursor"]
            for c in (None, "Mg==", "Mw==", "NA==")
        ]
    assert cursors == ["Mg=="] * 4, "a cursor that never advances: a naive client loops forever"


def test_bad_data_not_json_and_items_not_list(world: World, serve: Serve) -> None:
    _, http = _bad(serve, world, "not_json")
    with http:
        response = http.get(LIST, params=PARAMS)
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/html")
    with pytest.raises(json.JSONDecodeError):
        response.json()

    _, http = _bad(serve, world, "items_not_list")
    with http:
        body = http.get(MODELS, params=PARAMS).json()
    assert isinstance(body["items"], dict) and len(body["items"]) == 3


def test_bad_data_deep_nesting(world: World, serve: Serve) -> None:
    _, http = _bad(serve, world, "deep_nesting")
    with http:
        content = http.get(LIST, params=PARAMS).content
    assert content.count(b'{"a":') == 100_000
    with pytest.raises(orjson.JSONDecodeError):
        orjson.loads(content)
    with pytest.raises(RecursionError):
        json.loads(content)


def test_bad_data_oversize_is_streamed(world: World, serve: Serve) -> None:
    api, http = _bad(serve, world, "oversize")
    with http, http.stream("GET", LIST, params=PARAMS) as response:
        declared = int(response.headers["content-length"])
        received = 0
        for chunk in response.iter_bytes():
            received += len(chunk)
            if received > 2 * 1024 * 1024:
                break  # a sane client gives up long before the end
    assert declared >= OVERSIZE_BYTES > 64 * 1024 * 1024
    assert received > 2 * 1024 * 1024
    assert _faults(api) == [(200, "bad:oversize")]


def test_bad_data_oversize_is_valid_json_when_read_whole(world: World, serve: Serve) -> None:
    """The page is hostile by size only: a client that reads it all gets well-formed JSON
    with exactly the declared length (so it cannot blame a framing error)."""
    _, http = _bad(serve, world, "oversize")
    with http:
        response = http.get(LIST, params={**PARAMS, "limit": 1})
    body = orjson.loads(response.content)
    assert len(response.content) == int(response.headers["content-length"])
    assert body["has_more"] is False and len(body["items"]) > 60


def test_bad_data_values_rows_not_asked_for_and_endless_cursor(world: World, serve: Serve) -> None:
    """Well-typed pages that are still wrong: the first item's value, or a cursor that never
    ends (an empty page with the next page's cursor, whatever page is asked for)."""
    firsts: dict[str, list[dict[str, Any]]] = {}
    for mode in ("bad_timestamp", "bad_status_code", "huge_duration", "negative_duration",
                 "ended_before_started", "foreign_endpoint", "outside_window"):  # fmt: skip
        _, http = _bad(serve, world, mode)
        with http:
            firsts[mode] = http.get(LIST, params=PARAMS).json()["items"]
    assert firsts["bad_timestamp"][0]["sent_at"] == "2026-13-45T25:61:61.000000Z"
    assert firsts["bad_status_code"][0]["status_code"] == 2**63
    assert [i["duration"] for i in firsts["huge_duration"][:2]] == [1e308, 1e308]
    assert firsts["negative_duration"][0]["duration"] == -1.5
    wrong_order = firsts["ended_before_started"][0]
    assert wrong_order["ended_at"] < wrong_order["started_at"], wrong_order
    assert firsts["foreign_endpoint"][0]["endpoint_id"] == "someone-else/app"
    assert firsts["outside_window"][0]["sent_at"].startswith("2001-01-01T")
    assert all(len(items) == 3 for items in firsts.values()), "only the first item changes"

    _, http = _bad(serve, world, "endless_cursor")
    with http:
        pages = [
            http.get(LIST, params={**PARAMS, **({"cursor": c} if c else {})}).json()
            for c in (None, "Mg==", "Mw==", "OTk=")
        ]
    assert [(p["items"], p["has_more"], p["next_cursor"]) for p in pages] == [
        ([], True, "Mg=="),
        ([], True, "Mw=="),
        ([], True, "NA=="),
        ([], True, "MTAw"),
    ], "every page is empty and points to the next one, past the end too"
