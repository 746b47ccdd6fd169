"""Helpers shared by the simulator tests: hand-made requests, a reference model, OpenAPI checks.

Kept apart from conftest.py so tests can import plain functions; the module name is
prefixed so it cannot collide with helpers of the rest of the test suite.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
from openapi_core import OpenAPI
from openapi_core.testing import MockRequest, MockResponse
from werkzeug.datastructures import ImmutableMultiDict

import mirror.simulator
from mirror.simulator import DEFAULT_KEY, Query, SimRequest, SimulatedAPI, World

NOW = datetime(2026, 11, 28, 12, 0, tzinfo=UTC)
SPEC_PATH = Path(mirror.simulator.__file__).parent / "fal-openapi.json"
LIST = "/serverless/requests/by-endpoint"
MODELS = "/models/requests/by-endpoint"
ANALYTICS = "/serverless/analytics"


def rid(n: int) -> str:
    """A fixed, readable, valid UUID for hand-made request number `n`."""
    return f"0190a000-0000-7000-8000-{n:012x}"


def at(seconds: float) -> datetime:
    """`NOW` shifted by `seconds` (negative: the past)."""
    return NOW + timedelta(seconds=seconds)


def req(
    n: int,
    *,
    endpoint_id: str = "acme/app",
    sent: float,
    started: float | None = None,
    ended: float | None = None,
    status: int = 200,
    units: float | None = 1.0,
    billing: float | None = None,
    recorded: float | None = None,
    runner: str | None = "f1e2d3c4-b5a6-4890-9cba-0987654321fe",
    json_input: Any = None,
    json_output: Any = None,
) -> SimRequest:
    """A hand-made request; times are seconds relative to `NOW`.

    Defaults: started 1 s after sent, ended 10 s after started, billed at the end.
    """
    started = sent + 1 if started is None else started
    ended = started + 10 if ended is None else ended
    return SimRequest(
        request_id=rid(n),
        endpoint_id=endpoint_id,
        runner_id=runner,
        sent_at=at(sent),
        started_at=at(started),
        ended_at=at(ended),
        status_code=status,
        duration=ended - started,
        billable_units=units,
        billing_at=at(ended if billing is None else billing) if units is not None else None,
        json_input={"prompt": f"prompt {n}"} if json_input is None else json_input,
        json_output={"n": n} if json_output is None else json_output,
        recorded_at=at(sent if recorded is None else recorded),
    )


def endpoint_matches(wanted: str, endpoint_id: str) -> bool:
    """The documented rule, restated independently of the code under test."""
    return endpoint_id == wanted or (
        wanted.count("/") == 1 and endpoint_id.startswith(wanted + "/")
    )


def reference_ids(world: World, q: Query, now: datetime) -> list[str]:
    """Brute-force answer to `q` at `now`: what `World.query` must equal, row by row.

    Deliberately naive (scan everything, no index, no cache), following the rules of
    docs/fal-api.md and the `WorldConfig` switches as literally as possible.
    """
    cfg = world.config
    lookback = timedelta(days=90) if q.request_id else timedelta(hours=24)
    start = q.start if q.start is not None else now - lookback
    end = q.end if q.end is not None else now
    finished_rows: list[SimRequest] = []
    unfinished_rows: list[SimRequest] = []
    for r in world:
        if not any(endpoint_matches(w, r.endpoint_id) for w in q.endpoint_ids):
            continue
        if q.request_id is not None and r.request_id != q.request_id:
            continue
        if r.recorded_at > now or r.sent_at > now:
            continue
        finished = r.ended_at <= now
        if not finished and not cfg.unfinished_visible:
            continue
        value = getattr(r, cfg.filter_field) if finished or cfg.filter_field != "ended_at" else None
        if value is None or not start <= value < end:
            continue
        if q.status is not None:
            lo = {"success": 200, "user_error": 400, "error": 500}[q.status]
            if not finished or not lo <= r.status_code < lo + 100:
                continue
        (finished_rows if finished else unfinished_rows).append(r)
    desc = cfg.sort_direction == "desc"
    if q.sort_by == "ended_at":
        finished_rows.sort(key=lambda r: (r.ended_at, r.request_id), reverse=desc)
    else:
        finished_rows.sort(key=lambda r: (r.duration, r.request_id), reverse=desc)
    unfinished_rows.sort(key=lambda r: r.request_id, reverse=desc)
    rows = (
        finished_rows + unfinished_rows if cfg.nulls == "last" else unfinished_rows + finished_rows
    )
    return [r.request_id for r in rows]


def client(api: SimulatedAPI, key: str | None = DEFAULT_KEY, **kwargs: Any) -> httpx.Client:
    """An httpx client on the simulator's `/v1` root, authenticated unless `key` is None."""
    headers = {"Authorization": f"Key {key}"} if key is not None else {}
    return httpx.Client(base_url=api.base_url, headers=headers, **kwargs)


def walk(
    http: httpx.Client, path: str, params: dict[str, Any]
) -> tuple[list[dict[str, Any]], list[str | None]]:
    """Follow `next_cursor` to the end; returns all items and the cursors seen per page."""
    items: list[dict[str, Any]] = []
    cursors: list[str | None] = []
    cursor: str | None = None
    for _ in range(10_000):
        page_params = dict(params, **({"cursor": cursor} if cursor else {}))
        response = http.get(path, params=page_params)
        assert response.status_code == 200, (
            f"page {len(cursors) + 1}: {response.status_code} {response.text}"
        )
        body = response.json()
        assert body["has_more"] == (body["next_cursor"] is not None), (
            f"has_more disagrees with next_cursor: {body}"
        )
        items.extend(body["items"])
        cursor = body["next_cursor"]
        cursors.append(cursor)
        if cursor is None:
            return items, cursors
    raise AssertionError("paging did not end after 10,000 pages")


class SpecChecker:
    """Validates requests and responses against the vendored fal OpenAPI description.

    The simulator serves at `http://127.0.0.1:PORT/v1`; requests are presented to
    openapi-core as if sent to the spec's server `https://api.fal.ai/v1`.
    """

    def __init__(self, spec_path: Path = SPEC_PATH) -> None:
        self.openapi = OpenAPI.from_dict(json.loads(spec_path.read_text()))

    @staticmethod
    def _request(request: httpx.Request, path: str | None = None) -> MockRequest:
        headers = {k: v for k, v in request.headers.items() if k.lower() != "content-type"}
        mock = MockRequest(
            "https://api.fal.ai", request.method, path or request.url.path, headers=headers
        )
        mock.parameters.query = ImmutableMultiDict(request.url.params.multi_items())
        return mock

    def request_errors(self, request: httpx.Request) -> list[str]:
        """Why the spec rejects this request (empty: it is a valid request)."""
        return [_describe(e) for e in self.openapi.iter_request_errors(self._request(request))]

    def response_errors(self, response: httpx.Response, *, as_path: str | None = None) -> list[str]:
        """Why the spec rejects this response to its request (status, content type, body).

        `as_path` validates against another operation's responses: used for the 404 of a
        path the spec does not describe, whose body must still be fal's error shape.
        """
        mock_response = MockResponse(
            response.content,
            status_code=response.status_code,
            headers=dict(response.headers),
            content_type=response.headers.get("content-type", ""),
        )
        request = self._request(response.request, as_path)
        return [_describe(e) for e in self.openapi.iter_response_errors(request, mock_response)]


def _describe(error: Exception) -> str:
    cause = error.__cause__
    detail = getattr(cause, "schema_errors", None) or cause
    return (
        f"{type(error).__name__}: {error} ({detail!r})"
        if detail
        else f"{type(error).__name__}: {error!r}"
    )
