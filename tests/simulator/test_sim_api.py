"""The HTTP API's semantics: paging, cursors, filters, expansions, auth, validation, analytics.

Served over real HTTP with a hand-moved clock; expected answers come from the world's own
query (itself checked against a brute-force model in test_sim_world.py) or are written
out in full.
"""

from __future__ import annotations

import base64
import itertools
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
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
    NOW,
    USAGE,
    client,
    req,
    rid,
    walk,
)

from mirror.simulator import (
    DEFAULT_KEY,
    LoggedRequest,
    ManualClock,
    Query,
    SimulatedAPI,
    World,
    WorldConfig,
    generate_world,
)

Serve = Callable[..., SimulatedAPI]


def _generated(clock: ManualClock, **switches: Any) -> World:
    return generate_world(
        WorldConfig(clock=clock, **switches),
        seed=21,
        now=NOW,
        days=1,
        requests_per_hour=30,
        running=5,
        big_tie_group=130,
    )


# -- paging ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("direction", "nulls", "sort_by"),
    list(itertools.product(("desc", "asc"), ("last", "first"), ("ended_at", "duration"))),
)
def test_walk_returns_the_window_exactly_once_in_order(
    clock: ManualClock, serve: Serve, direction: str, nulls: str, sort_by: str
) -> None:
    """Stable data: a walk is the query's full answer, in order, no duplicate, no gap,
    even through the 130 requests that share one `ended_at` (and one duration)."""
    world = _generated(clock, filter_field="sent_at", sort_direction=direction, nulls=nulls)
    api = serve(world)
    params: dict[str, Any] = {
        "endpoint_id": "acme/flux-lora,acme/upscaler",
        "limit": 100,
        "sort_by": sort_by,
    }
    with client(api) as http:
        items, cursors = walk(http, LIST, params)
    query = Query(("acme/flux-lora", "acme/upscaler"), sort_by=sort_by)  # type: ignore[arg-type]
    want = [r.request_id for r in world.query(query)]
    got = [i["request_id"] for i in items]
    assert len(got) == len(set(got)), "a request came back twice"
    assert got == want, f"walk differs from the window ({len(got)} vs {len(want)} items)"
    unfinished = [i for i in items if i["ended_at"] is None]
    assert unfinished, "the window should include running requests (nulls placement is under test)"
    assert (items.index(unfinished[0]) == 0) == (nulls == "first"), f"nulls {nulls}"
    pages = len(cursors)
    assert cursors == [base64.b64encode(str(k).encode()).decode() for k in range(2, pages + 1)] + [
        None
    ]
    assert cursors[0] == "Mg==", "the second page's cursor is base64('2') as in fal's example"


def test_cursor_edges(clock: ManualClock, serve: Serve) -> None:
    world = World(WorldConfig(clock=clock), [req(n, sent=-1000 + n) for n in range(1, 8)])
    api = serve(world)
    base: dict[str, Any] = {"endpoint_id": "acme/app", "limit": 3}
    with client(api) as http:
        pages = [
            http.get(LIST, params=dict(base, cursor=c) if c else base).json()
            for c in (None, "Mg==", "Mw==", "NA==")
        ]
        unpadded = http.get(LIST, params=dict(base, cursor="Mw")).json()
        first_again = http.get(LIST, params=dict(base, cursor="MQ==")).json()
        bigger_limit = http.get(LIST, params=dict(base, limit=5, cursor="Mg==")).json()
    ids = [[i["request_id"] for i in p["items"]] for p in pages]
    assert ids == [[rid(7), rid(6), rid(5)], [rid(4), rid(3), rid(2)], [rid(1)], []]
    assert [(p["next_cursor"], p["has_more"]) for p in pages] == [
        ("Mg==", True),
        ("Mw==", True),
        (None, False),
        (None, False),
    ]
    assert unpadded == pages[2], "an unpadded cursor is still page 3"
    assert first_again == pages[0]
    assert [i["request_id"] for i in bigger_limit["items"]] == [rid(2), rid(1)], (
        "offset = (page-1) x limit"
    )


def test_new_rows_shift_offset_pages(clock: ManualClock, serve: Serve) -> None:
    """The documented hazard of offset paging: a row landing at the head of a newest-first
    window while paging pushes a row from page 1 onto page 2 (a duplicate)."""
    world = World(WorldConfig(clock=clock), [req(n, sent=-1000 + n) for n in range(1, 5)])
    api = serve(world)
    with client(api) as http:
        page1 = http.get(LIST, params={"endpoint_id": "acme/app", "limit": 2}).json()
        world.add(req(9, sent=-500))
        page2 = http.get(
            LIST, params={"endpoint_id": "acme/app", "limit": 2, "cursor": page1["next_cursor"]}
        ).json()
    assert [i["request_id"] for i in page1["items"]] == [rid(4), rid(3)]
    assert [i["request_id"] for i in page2["items"]] == [rid(3), rid(2)]


# -- items ------------------------------------------------------------------------------------


def test_item_shapes_per_operation_and_expansion(clock: ManualClock, serve: Serve) -> None:
    r = req(
        1,
        sent=-100.25,
        started=-99,
        ended=-91.5,
        units=1.5,
        json_input={"prompt": "café ☕"},
        json_output={"ok": True},
    )
    api = serve(World(WorldConfig(clock=clock), [r]))
    base_item = {
        "request_id": rid(1),
        "endpoint_id": "acme/app",
        "started_at": "2026-11-28T11:58:21Z",
        "sent_at": "2026-11-28T11:58:19.750000Z",
        "ended_at": "2026-11-28T11:58:28.500000Z",
        "status_code": 200,
        "duration": 7.5,
    }
    payloads = {"json_input": {"prompt": "café ☕"}, "json_output": {"ok": True}}
    runner = {"runner_id": r.runner_id}
    cases: list[tuple[str, list[str], dict[str, Any]]] = [
        (LIST, [], {**base_item, **runner}),
        (LIST, ["payloads"], {**base_item, **runner, **payloads}),
        (LIST, ["billing"], {**base_item, **runner, "billable_units": 1.5}),
        (LIST, ["payloads", "billing"], {**base_item, **runner, **payloads, "billable_units": 1.5}),
        (LIST, ["billing,payloads"], {**base_item, **runner, **payloads, "billable_units": 1.5}),
        (MODELS, [], base_item),
        (MODELS, ["payloads"], {**base_item, **payloads}),
    ]
    with client(api) as http:
        for path, expand, want in cases:
            body = http.get(path, params={"endpoint_id": "acme/app", "expand": expand}).json()
            assert body == {"items": [want], "next_cursor": None, "has_more": False}, (
                f"{path} expand={expand}"
            )
        raw = http.get(LIST, params={"endpoint_id": "acme/app"}).content
    assert b'"started_at":"2026-11-28T11:58:21Z"' in raw, (
        "whole seconds are served without a fraction"
    )


def test_billing_lags_then_lands(clock: ManualClock, serve: Serve) -> None:
    api = serve(
        World(
            WorldConfig(clock=clock),
            [req(1, sent=-60, ended=-30, billing=90, units=3.0), req(2, sent=-60, units=None)],
        )
    )
    params = {"endpoint_id": "acme/app", "expand": "billing"}
    with client(api) as http:
        before = {
            i["request_id"]: i["billable_units"]
            for i in http.get(LIST, params=params).json()["items"]
        }
        clock.advance(90)
        after = {
            i["request_id"]: i["billable_units"]
            for i in http.get(LIST, params=params).json()["items"]
        }
    assert before == {rid(1): None, rid(2): None}
    assert after == {rid(1): 3.0, rid(2): None}


def test_billing_refused_only_with_expand_billing(clock: ManualClock, serve: Serve) -> None:
    world = World(
        WorldConfig(clock=clock, billing_refused=frozenset({"acme/secret"})),
        [
            req(1, endpoint_id="acme/secret/route", sent=-60),
            req(2, endpoint_id="acme/open", sent=-60),
        ],
    )
    api = serve(world)
    denied = {"error": {"type": "authorization_error", "message": "Access denied"}}
    with client(api) as http:
        answers = {
            (e, x): http.get(LIST, params={"endpoint_id": e, "expand": x}).status_code
            for e in ("acme/secret", "acme/secret/route", "acme/open", "acme/open,acme/secret")
            for x in ("payloads", "billing")
        }
        body = http.get(LIST, params={"endpoint_id": "acme/secret", "expand": "billing"}).json()
    assert answers == {
        ("acme/secret", "payloads"): 200,
        ("acme/secret", "billing"): 403,
        ("acme/secret/route", "payloads"): 200,
        ("acme/secret/route", "billing"): 403,
        ("acme/open", "payloads"): 200,
        ("acme/open", "billing"): 200,
        ("acme/open,acme/secret", "payloads"): 200,
        ("acme/open,acme/secret", "billing"): 403,
    }
    assert body == denied


def test_endpoint_matching_over_http(clock: ManualClock, serve: Serve) -> None:
    world = World(
        WorldConfig(clock=clock),
        [
            req(1, endpoint_id="acme/flux", sent=-30),
            req(2, endpoint_id="acme/flux/turbo", sent=-20),
            req(3, endpoint_id="acme/fluxx", sent=-15),
        ],
    )
    api = serve(world)
    with client(api) as http:

        def ids(**params: Any) -> list[str]:
            return [i["endpoint_id"] for i in http.get(LIST, params=params).json()["items"]]

        assert ids(endpoint_id="acme/flux") == ["acme/flux/turbo", "acme/flux"]
        assert ids(endpoint_id="acme/flux/turbo") == ["acme/flux/turbo"]
        assert ids(endpoint_id=["acme/flux/turbo", "acme/fluxx"]) == [
            "acme/fluxx",
            "acme/flux/turbo",
        ]
        assert ids(endpoint_id="acme/flux/turbo, acme/flux/turbo") == ["acme/flux/turbo"], (
            "duplicates collapse"
        )


# -- time parameters ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("start", "end", "expected"),
    [
        ("2026-11-28", None, [3, 2]),
        ("2026-11-27", "2026-11-28", [1]),
        ("2026-11-28T00:00:00", None, [3, 2]),  # no offset: UTC
        ("2026-11-28T02:00:00+02:00", None, [3, 2]),
        ("2026-11-27T23:59:59.999999Z", "2026-11-28T10:00:00.000001Z", [2, 1]),
        ("2026-11-27T21:00:00-03:00", "2026-11-28T11:00:00.5z", [2]),
        (None, "2026-11-28T00:00:00.0000009Z", [1]),  # extra fraction digits are truncated
    ],
)
def test_start_and_end_forms(
    clock: ManualClock, serve: Serve, start: str | None, end: str | None, expected: list[int]
) -> None:
    world = World(
        WorldConfig(clock=clock, filter_field="sent_at"),
        [
            req(1, sent=-12 * 3600 - 0.000001),  # 2026-11-27T23:59:59.999999Z
            req(2, sent=-12 * 3600),  # midnight exactly
            req(3, sent=-3600 + 0.5),  # 11:00:00.5
        ],
    )
    api = serve(world)
    params = {
        "endpoint_id": "acme/app",
        **({"start": start} if start else {}),
        **({"end": end} if end else {}),
    }
    with client(api) as http:
        response = http.get(LIST, params=params)
    assert response.status_code == 200, response.text
    assert [i["request_id"] for i in response.json()["items"]] == [rid(n) for n in expected], params


def test_request_id_lookup(clock: ManualClock, serve: Serve) -> None:
    world = World(
        WorldConfig(clock=clock),
        [req(1, sent=-40 * 86400), req(2, sent=-100 * 86400), req(3, sent=-60)],
    )
    api = serve(world)
    with client(api) as http:

        def found(request_id: str, **extra: Any) -> list[str]:
            body = http.get(
                LIST, params={"endpoint_id": "acme/app", "request_id": request_id, **extra}
            ).json()
            return [i["request_id"] for i in body["items"]]

        assert found(rid(1)) == [rid(1)], "40 days old: inside the 90-day default"
        assert found(rid(1).upper()) == [rid(1)], "UUIDs compare case-insensitively"
        assert found(rid(2)) == [], "100 days old: outside the 90-day default"
        assert found(rid(2), start="2026-08-01") == [rid(2)]
        assert found(rid(3), status="error") == []
        assert found("0190a000-0000-7000-8000-0000000000ff") == []


def test_unknown_parameters_are_ignored(clock: ManualClock, serve: Serve) -> None:
    api = serve(World(WorldConfig(clock=clock), [req(1, sent=-60)]))
    with client(api) as http:
        plain = http.get(LIST, params={"endpoint_id": "acme/app"}).json()
        extra = http.get(
            LIST, params={"endpoint_id": "acme/app", "expand_payloads": "true", "order": "asc"}
        ).json()
    assert plain == extra


# -- errors -----------------------------------------------------------------------------------------


def _error(status: int, kind: str, message: str) -> tuple[int, dict[str, Any]]:
    return status, {"error": {"type": kind, "message": message}}


@pytest.mark.parametrize(
    ("params", "expected"),
    [
        (
            {},
            _error(
                400,
                "validation_error",
                "endpoint_id is required (1-50 ids, repeated or comma-separated)",
            ),
        ),
        (
            {"endpoint_id": ","},
            _error(
                400,
                "validation_error",
                "endpoint_id is required (1-50 ids, repeated or comma-separated)",
            ),
        ),
        (
            {"endpoint_id": [f"acme/e{k}" for k in range(51)]},
            _error(
                400, "validation_error", "Too many endpoint_id values: 51 given, at most 50 allowed"
            ),
        ),
        (
            {"endpoint_id": "acme/app", "limit": "0"},
            _error(400, "validation_error", "Invalid limit 0: must be between 1 and 100"),
        ),
        (
            {"endpoint_id": "acme/app", "limit": "1e2"},
            _error(400, "validation_error", "Invalid limit '1e2': must be an integer"),
        ),
        (
            {"endpoint_id": "acme/app", "status": "ok"},
            _error(
                400, "validation_error", "Invalid status 'ok'; allowed: success, error, user_error"
            ),
        ),
        (
            {"endpoint_id": "acme/app", "sort_by": "sent_at"},
            _error(
                400, "validation_error", "Invalid sort_by 'sent_at'; allowed: ended_at, duration"
            ),
        ),
        (
            {"endpoint_id": "acme/app", "request_id": "42"},
            _error(400, "validation_error", "Invalid request_id '42': must be a UUID"),
        ),
        (
            {"endpoint_id": "acme/app", "cursor": "%%%"},
            _error(
                400, "validation_error", "Invalid cursor '%%%': not a cursor returned by this API"
            ),
        ),
        (
            {"endpoint_id": "acme/app", "cursor": "MA=="},
            _error(
                400, "validation_error", "Invalid cursor 'MA==': not a cursor returned by this API"
            ),
        ),
        (
            {"endpoint_id": "acme/app", "expand": "payloads,everything"},
            _error(
                400,
                "validation_error",
                "Invalid expand value 'everything'; allowed: payloads, billing",
            ),
        ),
        (
            {"endpoint_id": "acme/app", "start": "2026-11-28T10:00:00 02:00"},
            _error(
                400,
                "validation_error",
                "Invalid start '2026-11-28T10:00:00 02:00': expected an RFC 3339 date-time such as 2025-01-01T00:00:00Z or a date such as 2025-01-01 (a '+' in the offset must be URL-encoded as %2B)",
            ),
        ),
        (
            {"endpoint_id": "acme/app", "start": "2026-11-28", "end": "2026-11-27"},
            _error(
                400,
                "validation_error",
                "start (2026-11-28) must not be later than end (2026-11-27)",
            ),
        ),
        ({"endpoint_id": "other/app"}, _error(403, "authorization_error", "Access denied")),
        (
            {"endpoint_id": "acme/app", "limit": "0", "x": "other/app"},
            _error(400, "validation_error", "Invalid limit 0: must be between 1 and 100"),
        ),
        (
            {"endpoint_id": "other/app", "limit": "0"},
            _error(400, "validation_error", "Invalid limit 0: must be between 1 and 100"),
        ),
    ],
)
def test_validation_and_ownership_errors(
    clock: ManualClock, serve: Serve, params: dict[str, Any], expected: tuple[int, dict[str, Any]]
) -> None:
    api = serve(World(WorldConfig(clock=clock), [req(1, sent=-60)]))
    with client(api) as http:
        response = http.get(LIST, params=params)
    assert (response.status_code, response.json()) == expected, params
    assert response.headers["content-type"] == "application/json"


def test_models_operation_refuses_billing_and_checks_no_owner(
    clock: ManualClock, serve: Serve
) -> None:
    api = serve(World(WorldConfig(clock=clock), [req(1, endpoint_id="fal-ai/flux/dev", sent=-60)]))
    with client(api) as http:
        billing = http.get(MODELS, params={"endpoint_id": "fal-ai/flux/dev", "expand": "billing"})
        own_calls = http.get(MODELS, params={"endpoint_id": "fal-ai/flux"})
        serverless = http.get(LIST, params={"endpoint_id": "fal-ai/flux"})
    assert (billing.status_code, billing.json()) == _error(
        400, "validation_error", "Invalid expand value 'billing'; allowed: payloads"
    )
    assert [i["request_id"] for i in own_calls.json()["items"]] == [rid(1)], (
        "the caller's own calls to a model"
    )
    assert serverless.status_code == 403, "the serverless operation is for endpoints you own"


@pytest.mark.parametrize(
    ("headers", "message"),
    [
        ({}, "Authentication required"),
        ({"Authorization": f"Bearer {DEFAULT_KEY}"}, "Authentication required"),
        ({"Authorization": f"key {DEFAULT_KEY}"}, "Authentication required"),
        ({"Authorization": "Key sim-key-id"}, "Invalid API key or malformed Authorization header"),
        (
            {"Authorization": "Key sim-key-id:wrong"},
            "Invalid API key or malformed Authorization header",
        ),
    ],
)
def test_authentication(
    clock: ManualClock, serve: Serve, headers: dict[str, str], message: str
) -> None:
    api = serve(World(WorldConfig(clock=clock)))
    for path in (LIST, MODELS, ANALYTICS):
        response = httpx.get(
            api.base_url + path, params={"endpoint_id": "acme/app"}, headers=headers
        )
        assert (response.status_code, response.json()) == _error(
            401, "authorization_error", message
        ), (path, headers)


def test_other_keys_and_the_log(clock: ManualClock, serve: Serve) -> None:
    api = serve(World(WorldConfig(clock=clock)), keys=frozenset({"team:one", "team:two"}))
    with client(api, "team:two") as http:
        ok = http.get(LIST, params={"endpoint_id": ["acme/a", "acme/b"], "expand": "payloads"})
    default = httpx.get(
        api.base_url + LIST,
        params={"endpoint_id": "acme/a"},
        headers={"Authorization": f"Key {DEFAULT_KEY}"},
    )
    missing = httpx.post(api.base_url + "/nowhere?x=1")
    assert (ok.status_code, default.status_code, missing.status_code) == (200, 401, 404)
    log = api.log
    assert [
        (e.method, e.path, e.params, e.status, e.fault, e.authorization_present) for e in log
    ] == [
        (
            "GET",
            "/v1" + LIST,
            {"endpoint_id": ["acme/a", "acme/b"], "expand": ["payloads"]},
            200,
            None,
            True,
        ),
        ("GET", "/v1" + LIST, {"endpoint_id": ["acme/a"]}, 401, None, True),
        ("POST", "/v1/nowhere", {"x": ["1"]}, 404, None, False),
    ]
    assert all(isinstance(e, LoggedRequest) and e.world_time == NOW for e in log)
    assert "team:two" not in repr(log) and DEFAULT_KEY not in repr(log), (
        "the log must never hold a key"
    )
    api.clear_log()
    assert api.log == []


def test_not_found_and_methods(clock: ManualClock, serve: Serve) -> None:
    """An unknown path is a 404; a path the API serves, asked with any other method than
    GET or HEAD (one no server knows included), a 405 that names the two; a request too
    broken to reach the API, a 400 or 505: each fal's JSON error, never the standard
    library's HTML page."""
    api = serve(World(WorldConfig(clock=clock)))
    methods = ("POST", "PUT", "PATCH", "DELETE", "TRACE", "OPTIONS", "PROPFIND")
    with client(api) as http:
        unknown = http.get("/serverless/requests")
        refused = {m: http.request(m, LIST, params={"endpoint_id": "acme/app"}) for m in methods}
        head = http.head(LIST, params={"endpoint_id": "acme/app"})
    assert (unknown.status_code, unknown.json()["error"]["type"]) == (404, "not_found")
    for method, r in refused.items():
        error = {"type": "not_found", "message": f"Method {method} not allowed on /v1{LIST}"}
        got = (r.status_code, r.headers.get("allow"), r.headers["content-type"], r.json())
        assert got == (405, "GET, HEAD", "application/json", {"error": error}), method
    assert (head.status_code, head.content, head.headers["content-type"]) == (
        200,
        b"",
        "application/json",
    )
    # a request line it cannot read is answered the HTTP/0.9 way, a bare body: JSON too
    for raw, status, kind in (
        (b"NONSENSE\r\n\r\n", None, "validation_error"),
        (b"GET /v1/x HTTP/2.0\r\n\r\n", None, "not_implemented"),
        (b"GET /v1/x HTTP/1.1\r\nX-Long: " + b"a" * 70_000 + b"\r\n\r\n", 431,
         "validation_error"),
    ):  # fmt: skip
        with socket.create_connection(("127.0.0.1", api.port), timeout=10) as sock:
            sock.sendall(raw)
            answer = b""
            while chunk := sock.recv(65536):
                answer += chunk
        got = None
        body = answer
        if answer.startswith(b"HTTP/"):
            head_text, _, body = answer.partition(b"\r\n\r\n")
            got = int(head_text.split()[1])
            assert b"Content-Type: application/json" in head_text, answer
        assert (got, orjson.loads(body)["error"]["type"]) == (status, kind), answer


def test_a_default_start_or_end_never_turns_the_range_over(
    clock: ManualClock, serve: Serve
) -> None:
    """Only ``end``, before the default start (24 hours ago), or only ``start``, after now:
    an empty range, answered empty like any other, not a 400 (only an explicit start after
    an explicit end is one)."""
    api = serve(World(WorldConfig(clock=clock)))
    past, future = "2020-01-01T00:00:00Z", "2030-01-01T00:00:00Z"
    with client(api) as http:
        answers = {
            (path, name): http.get(path, params={"endpoint_id": "acme/app", name: when})
            for path in (ANALYTICS, MODELS_ANALYTICS, BILLING_EVENTS, USAGE)
            for name, when in (("end", past), ("start", future))
        }
        inverted = http.get(ANALYTICS, params={"endpoint_id": "acme/app", "start": future,
                                               "end": past})  # fmt: skip
    for (path, name), r in answers.items():
        assert r.status_code == 200, f"{path} with only {name}: {r.status_code} {r.text}"
        body = r.json()
        assert body.get("billing_events", []) == [] and not any(
            item["results"] for item in body.get("time_series", [])
        ), f"{path} with only {name}: an empty range answered {body}"
    assert (inverted.status_code, inverted.json()["error"]["type"]) == (400, "validation_error")


# -- server lifecycle ----------------------------------------------------------------------------


def test_refuses_non_loopback_hosts() -> None:
    world = World()
    for host in ("0.0.0.0", "192.168.1.10", "example.com", "::"):
        with pytest.raises(ValueError, match="non-loopback"):
            SimulatedAPI(world, host=host)


def test_keep_alive_and_stop_cuts_connections(clock: ManualClock) -> None:
    api = SimulatedAPI(World(WorldConfig(clock=clock))).start()
    try:
        with client(api) as http:
            first = http.get(LIST, params={"endpoint_id": "acme/app"})
            second = http.get(LIST, params={"endpoint_id": "acme/app"})
            assert first.status_code == second.status_code == 200
            api.stop()
            with pytest.raises(httpx.TransportError):
                http.get(LIST, params={"endpoint_id": "acme/app"})
    finally:
        api.stop()
    with pytest.raises(RuntimeError, match="not running"):
        _ = api.base_url


def test_port_and_ipv6_loopback(clock: ManualClock) -> None:
    if not socket.has_ipv6:
        pytest.skip("no IPv6")
    try:
        api = SimulatedAPI(World(WorldConfig(clock=clock)), host="::1").start()
    except OSError as err:
        pytest.skip(f"IPv6 loopback unavailable: {err}")
    with api:
        assert api.base_url == f"http://[::1]:{api.port}/v1"
        with client(api) as http:
            assert http.get(LIST, params={"endpoint_id": "acme/app"}).status_code == 200


@pytest.mark.parametrize("stop", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_serve_forever_stops_on_ctrl_c(tmp_path: Path, stop: int) -> None:
    """`mirror fake-api` blocks in `serve_forever`; Ctrl-C or SIGTERM must end it cleanly
    (exit 0), even in a process started with SIGINT ignored (a shell's background job)."""
    script = (
        "from datetime import datetime, UTC\n"
        "from mirror.simulator import SimulatedAPI, World\n"
        "api = SimulatedAPI(World()).start()\n"
        "print(api.base_url, flush=True)\n"
        "api.serve_forever()\n"
        "print('stopped', flush=True)\n"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
    proc = subprocess.Popen(
        [sys.executable, "-c", script],
        stdout=subprocess.PIPE,
        text=True,
        env=env,
        cwd=tmp_path,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN),
    )
    try:
        assert proc.stdout is not None
        base_url = proc.stdout.readline().strip()
        response = httpx.get(base_url + LIST, params={"endpoint_id": "acme/app"})
        assert response.status_code == 401, response.text
        proc.send_signal(stop)
        out, _ = proc.communicate(timeout=20)
    finally:
        proc.kill()
    assert (proc.returncode, out.strip()) == (0, "stopped")


# -- server_view ----------------------------------------------------------------------------------


def test_server_view_equals_a_full_walk(clock: ManualClock, serve: Serve) -> None:
    world = _generated(clock, filter_field="sent_at")
    api = serve(world)
    endpoints = ",".join(sorted({r.endpoint_id for r in world}))
    params = {
        "endpoint_id": endpoints,
        "limit": 100,
        "expand": ["payloads", "billing"],
        "start": "2026-11-01",
    }
    with client(api) as http:
        items, _ = walk(http, LIST, params)
    walked = {i["request_id"]: i for i in items}
    view = world.server_view()
    assert walked.keys() == view.keys(), f"{len(walked)} walked vs {len(view)} in server_view"
    assert walked == view
    non_ascii = [
        i for i in items if i.get("json_input") and any(ord(c) > 127 for c in str(i["json_input"]))
    ]
    assert non_ascii, "payloads with non-ASCII text survive the round trip"


# -- analytics ---------------------------------------------------------------------------------------


def _analytics_world(clock: ManualClock, **switches: Any) -> World:
    return World(
        WorldConfig(clock=clock, **switches),
        [
            req(
                1, endpoint_id="acme/app", sent=-7200 + 10, started=-7200 + 11, ended=-7200 + 21
            ),  # 10:00
            req(
                2,
                endpoint_id="acme/app",
                sent=-7200 + 20,
                started=-7200 + 22,
                ended=-7200 + 26,
                status=404,
                runner=None,
            ),
            req(
                3, endpoint_id="acme/app/turbo", sent=-3700, started=-3690, ended=-3590, status=500
            ),  # 10:58 -> 11:00
            req(4, endpoint_id="acme/app", sent=-1800, started=-1798, ended=-1790, status=504),
            req(5, endpoint_id="acme/app", sent=-60, started=-59, ended=600),  # running
        ],
    )


def test_analytics_buckets_and_metrics(clock: ManualClock, serve: Serve) -> None:
    api = serve(_analytics_world(clock))
    params = {
        "endpoint_id": "acme/app",
        "start": "2026-11-28T10:00:00Z",
        "end": "2026-11-28T12:00:00Z",
        "timeframe": "hour",
        "expand": [
            "time_series",
            "summary",
            "request_count",
            "success_count",
            "user_error_count",
            "error_count",
            "startup_error_count",
            "timeout_error_count",
            "runtime_error_count",
            "cold_boot_count",
            "p50_duration",
            "p90_duration",
            "total_billable_duration",
        ],
    }
    with client(api) as http:
        body = http.get(ANALYTICS, params=params).json()
    zero = {
        "success_count": 0,
        "user_error_count": 0,
        "error_count": 0,
        "startup_error_count": 0,
        "timeout_error_count": 0,
        "runtime_error_count": 0,
        "cold_boot_count": 0,
    }
    assert body == {
        "time_series": [
            {
                "bucket": "2026-11-28T10:00:00+00:00",
                "results": [
                    {
                        "endpoint_id": "acme/app",
                        **zero,
                        "request_count": 2,
                        "success_count": 1,
                        "user_error_count": 1,
                        "cold_boot_count": 1,
                        "p50_duration": 7.0,
                        "p90_duration": 9.4,
                        "total_billable_duration": 14.0,
                    },
                ],
            },
            {
                "bucket": "2026-11-28T11:00:00+00:00",
                "results": [
                    {
                        "endpoint_id": "acme/app",
                        **zero,
                        "request_count": 1,
                        "error_count": 1,
                        "timeout_error_count": 1,
                        "cold_boot_count": 1,
                        "p50_duration": 8.0,
                        "p90_duration": 8.0,
                        "total_billable_duration": 8.0,
                    },
                    {
                        "endpoint_id": "acme/app/turbo",
                        **zero,
                        "request_count": 1,
                        "error_count": 1,
                        "runtime_error_count": 1,
                        "cold_boot_count": 1,
                        "p50_duration": 100.0,
                        "p90_duration": 100.0,
                        "total_billable_duration": 100.0,
                    },
                ],
            },
        ],
        "summary": [
            {
                "endpoint_id": "acme/app",
                **zero,
                "request_count": 3,
                "success_count": 1,
                "user_error_count": 1,
                "error_count": 1,
                "timeout_error_count": 1,
                "cold_boot_count": 2,
                "p50_duration": 8.0,
                "p90_duration": 9.6,
                "total_billable_duration": 22.0,
            },
            {
                "endpoint_id": "acme/app/turbo",
                **zero,
                "request_count": 1,
                "error_count": 1,
                "runtime_error_count": 1,
                "cold_boot_count": 1,
                "p50_duration": 100.0,
                "p90_duration": 100.0,
                "total_billable_duration": 100.0,
            },
        ],
        "next_cursor": None,
        "has_more": False,
    }


@pytest.mark.parametrize("filter_field", ["ended_at", "sent_at", "started_at"])
def test_analytics_counts_match_the_list_operation(
    clock: ManualClock, serve: Serve, filter_field: str
) -> None:
    """Per-bucket request counts equal what the list operation returns for that bucket,
    under every reading of which timestamp the window applies to."""
    world = _generated(clock, filter_field=filter_field)
    api = serve(world)
    endpoints = "acme/flux-lora,acme/whisper-v3"
    with client(api) as http:
        body = http.get(
            ANALYTICS,
            params={
                "endpoint_id": endpoints,
                "start": "2026-11-27T12:00:00Z",
                "end": "2026-11-28T12:00:00Z",
                "timeframe": "hour",
                "limit": 100,
            },
        ).json()
        assert len(body["time_series"]) == 24
        for bucket in body["time_series"]:
            start = bucket["bucket"].replace("+00:00", "Z")
            end = (
                (datetime.fromisoformat(bucket["bucket"]) + timedelta(hours=1))
                .isoformat()
                .replace("+00:00", "Z")
            )
            items, _ = walk(
                http, LIST, {"endpoint_id": endpoints, "start": start, "end": end, "limit": 100}
            )
            per_endpoint: dict[str, int] = {}
            for item in items:
                per_endpoint[item["endpoint_id"]] = per_endpoint.get(item["endpoint_id"], 0) + 1
            counted = {r["endpoint_id"]: r["request_count"] for r in bucket["results"]}
            assert counted == per_endpoint, f"bucket {start} ({filter_field})"


@pytest.mark.parametrize("bound", [True, False], ids=["bound", "unbound"])
@pytest.mark.parametrize(
    "unfinished_visible", [True, False], ids=["running-shown", "running-hidden"]
)
@pytest.mark.parametrize("filter_field", ["ended_at", "sent_at", "started_at"])
def test_count_only_analytics_equal_counting_the_rows(
    clock: ManualClock, filter_field: str, unfinished_visible: bool, bound: bool
) -> None:
    """mirror's planning call asks ``request_count`` alone; the simulator answers it by
    bisection where every row has settled and row by row elsewhere. It must give exactly the
    counts of the full computation (the path every other metric takes), at instants when
    rows are still running, have not arrived yet (late arrivals recorded later), or just
    settled, for whole and partial buckets."""
    from mirror.simulator import analytics

    world = _generated(clock, filter_field=filter_field, unfinished_visible=unfinished_visible)
    clock.set(NOW + timedelta(minutes=20))
    world.backdate(40, hours_ago=5, endpoint_id="acme/flux-lora", seed=3)  # recorded at +20 min
    endpoints = ["acme/flux-lora", "acme/whisper-v3", "acme"]
    ranges = [
        (NOW - timedelta(hours=30), NOW + timedelta(hours=2), "hour"),
        (NOW - timedelta(hours=7, minutes=13), NOW + timedelta(minutes=47), "hour"),
        (NOW - timedelta(days=2), NOW + timedelta(days=1), "day"),
        (NOW - timedelta(hours=2, seconds=7), NOW - timedelta(minutes=1), "minute"),
    ]
    compared = 0
    counted = set()
    for now in (NOW - timedelta(hours=2), NOW, NOW + timedelta(minutes=19),
                NOW + timedelta(minutes=20), NOW + timedelta(hours=3)):  # fmt: skip
        for eps in (endpoints[:1], endpoints[:2], endpoints[2:]):
            for start, end, tf in ranges:
                rng = analytics.resolve_range(start, end, tf, UTC, bound_to_timeframe=bound)
                fast = analytics.compute(world, eps, rng, UTC, ["request_count"], now=now)
                full = analytics.compute(
                    world, eps, rng, UTC, ["request_count", "success_count"], now=now
                )

                def counts_only(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
                    return [
                        {"endpoint_id": r["endpoint_id"], "request_count": r["request_count"]}
                        for r in records
                    ]

                expected = (
                    [
                        {"bucket": b["bucket"], "results": counts_only(b["results"])}
                        for b in full[0]
                    ],
                    counts_only(full[1]),
                )
                assert fast == expected, f"{eps} {start}..{end} by {tf} at {now}"
                compared += 1
                counted.add(sum(r["request_count"] for r in fast[1]))
    assert compared == 60 and len(counted) > 10, "the instants and ranges gave too few answers"


def test_analytics_timezone_and_alignment(clock: ManualClock, serve: Serve) -> None:
    api = serve(_analytics_world(clock))
    with client(api) as http:

        def buckets(**params: Any) -> list[str]:
            body = http.get(ANALYTICS, params={"endpoint_id": "acme/app", **params}).json()
            assert "time_series" in body, body
            return [b["bucket"] for b in body["time_series"]]

        # New York's DST ends on 2026-11-01: that day is 25 hours long, and the offset changes
        assert buckets(
            start="2026-10-31T12:00:00Z",
            end="2026-11-02T12:00:00Z",
            timeframe="day",
            timezone="America/New_York",
        ) == [
            "2026-10-31T00:00:00-04:00",
            "2026-11-01T00:00:00-04:00",
            "2026-11-02T00:00:00-05:00",
        ]
        assert buckets(start="2026-11-28T10:20:00Z", end="2026-11-28T10:22:30Z") == [
            "2026-11-28T10:20:00+00:00",
            "2026-11-28T10:21:00+00:00",
            "2026-11-28T10:22:00+00:00",
        ], "auto timeframe: minute under 2 h; bound end rounds up to the next minute"
        assert buckets(
            start="2026-11-28T10:20:00Z", end="2026-11-28T12:20:00Z", timezone="Asia/Kolkata"
        )[:2] == [
            "2026-11-28T15:00:00+05:30",
            "2026-11-28T16:00:00+05:30",
        ], "2 h is hour buckets, laid out in local time (09:30Z, 10:30Z)"
        assert buckets(start="2026-11-01", end="2026-11-28", timeframe="week") == [
            "2026-10-26T00:00:00+00:00",
            "2026-11-02T00:00:00+00:00",
            "2026-11-09T00:00:00+00:00",
            "2026-11-16T00:00:00+00:00",
            "2026-11-23T00:00:00+00:00",
        ], "ISO weeks start on Monday"
        assert buckets(start="2026-01-15", end="2026-11-28") == [
            f"2026-{m:02d}-01T00:00:00+00:00" for m in range(1, 12)
        ], "≥183 days: months"

        unbound = http.get(
            ANALYTICS,
            params={
                "endpoint_id": "acme/app",
                "start": "2026-11-28T10:00:22Z",
                "end": "2026-11-28T10:00:30Z",
                "timeframe": "hour",
                "bound_to_timeframe": "false",
                "expand": "summary,request_count",
            },
        ).json()
        bound = http.get(
            ANALYTICS,
            params={
                "endpoint_id": "acme/app",
                "start": "2026-11-28T10:00:22Z",
                "end": "2026-11-28T10:00:30Z",
                "timeframe": "hour",
                "expand": "summary,request_count",
            },
        ).json()
    assert unbound["summary"] == [{"endpoint_id": "acme/app", "request_count": 1}], (
        "exact range: only request 2 (ended 10:00:26)"
    )
    assert bound["summary"] == [{"endpoint_id": "acme/app", "request_count": 2}], (
        "aligned to 10:00-11:00: requests 1 and 2"
    )


def test_analytics_paging_and_ownership(clock: ManualClock, serve: Serve) -> None:
    api = serve(_analytics_world(clock))
    with client(api) as http:
        params: dict[str, Any] = {"endpoint_id": "acme/app", "timeframe": "hour", "limit": 10}
        pages = [
            http.get(ANALYTICS, params=dict(params, **({"cursor": c} if c else {}))).json()
            for c in (None, "Mg==", "Mw==")
        ]
        denied = http.get(ANALYTICS, params={"endpoint_id": "acme/app,other/app"})
    assert [len(p["time_series"]) for p in pages] == [10, 10, 4]
    assert [p["next_cursor"] for p in pages] == ["Mg==", "Mw==", None]
    assert pages[0]["time_series"][0]["bucket"] == "2026-11-27T12:00:00+00:00"
    assert (denied.status_code, denied.json()) == _error(
        403, "authorization_error", "Access denied"
    )


def test_world_config_switch_at_runtime_changes_answers(clock: ManualClock, serve: Serve) -> None:
    world = _analytics_world(clock)
    api = serve(world)
    with client(api) as http:
        before = [
            i["request_id"]
            for i in http.get(LIST, params={"endpoint_id": "acme/app"}).json()["items"]
        ]
        world.config = replace(world.config, filter_field="sent_at", sort_direction="asc")
        after = [
            i["request_id"]
            for i in http.get(LIST, params={"endpoint_id": "acme/app"}).json()["items"]
        ]
    assert before == [rid(n) for n in (4, 3, 2, 1)]
    assert after == [rid(n) for n in (1, 2, 3, 4, 5)]
