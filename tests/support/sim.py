"""The simulated fal API as the tests use it.

- the environment that points a `mirror` process at a simulator, with fast retries;
- *static* worlds: the simulator's clock is a `ManualClock` frozen at generation time, so
  the server's answer never changes on its own and a mirror can be compared with it exactly
  after any failure (requests arriving while a sync runs are covered by the drift tests and
  the state machine, which move that clock on purpose);
- the readings of the API (docs/fal-api.md) the suites rotate through, and what a complete
  mirror must hold under each (``listable``);
- a simulator that also records who made each call and when (``IdentifyingAPI``);
- for the simulator's own tests: hand-made requests at times relative to ``NOW``, a
  brute-force reference model of the list operation, an HTTP client and a paging walk.
"""

from __future__ import annotations

import itertools
import os
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from mirror.simulator import (
    DEFAULT_KEY,
    ManualClock,
    Query,
    SimRequest,
    SimulatedAPI,
    World,
    WorldConfig,
    generate_world,
)
from mirror.simulator.faults import ANALYTICS_PATH
from mirror.simulator.server import Answer, ApiError
from support.compare import server_record

CANARY_KEY = "sim-key-id:sim-key-secret"  # the simulator's key doubles as the canary
assert CANARY_KEY == DEFAULT_KEY

#: the endpoints of generated worlds (one app with a route) and the app ids synced from them
ENDPOINTS = ("acme/flux-lora", "acme/flux-lora/turbo", "acme/upscaler", "acme/whisper-v3")
TARGETS = ("acme/flux-lora", "acme/upscaler", "acme/whisper-v3")

#: the fixed "now" of hand-made requests and rows (tests that need a real now take one)
NOW = datetime(2026, 11, 28, 12, 0, tzinfo=UTC)


# --------------------------------------------------------------------------- the environment


def fast_env(api_url: str, **extra: str) -> dict[str, str]:
    """The environment of a `mirror` process against the simulator at ``api_url``: its key,
    fast retries, a short deadline per attempt, and nothing of the caller's fal or mirror
    settings (the caller's TZ is kept)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FAL_", "MIRROR_"))}
    env.update(
        MIRROR_BASE_URL=api_url,
        FAL_KEY=DEFAULT_KEY,
        MIRROR_RETRY_BASE="0.01",
        MIRROR_RETRY_CAP="0.2",
        MIRROR_RETRY_ATTEMPTS="12",
        MIRROR_REQUEST_DEADLINE="5",
    )
    env.update(extra)
    return env


def env_for(api_url: str, **extra: str) -> dict[str, str]:
    """``fast_env``, without the parent's TZ unless asked."""
    env = fast_env(api_url, **extra)
    env.setdefault("TZ", "UTC")
    return env


# --------------------------------------------------------------------------- readings


#: the readings of the API (docs/fal-api.md) the suites rotate through, by name
READINGS: dict[str, WorldConfig] = {
    "ended_at-desc": WorldConfig(filter_field="ended_at"),
    "sent_at-desc": WorldConfig(filter_field="sent_at"),
    "sent_at-asc-nullsfirst": WorldConfig(
        filter_field="sent_at", sort_direction="asc", nulls="first"
    ),
    "started_at-hidden": WorldConfig(filter_field="started_at", unfinished_visible=False),
}

#: each reading's id in test names, the one the end-to-end suite has always given it
_READING_IDS = {
    "ended_at-desc": "filter-ended_at",
    "sent_at-desc": "filter-sent_at",
    "sent_at-asc-nullsfirst": "sent_at-asc-nullsfirst",
    "started_at-hidden": "started_at-hidden-unfinished",
}
#: the same readings as parameters of a test taking a ``config``
READING_PARAMS = [
    pytest.param(READINGS[name], id=test_id) for name, test_id in _READING_IDS.items()
]

#: the readings a test crossing both backends runs on PostgreSQL: the reading shapes the
#: walk, the backend the writes, so each reading runs on SQLite and PostgreSQL gets the two
#: that differ most in what the store is given (rows with null times first; unfinished rows
#: the list hides, refreshed by id) instead of every combination
PG_READINGS = ("sent_at-asc-nullsfirst", "started_at-hidden")


def on_backends(sqlite: Iterable[str], postgresql: Iterable[str]) -> list[Any]:
    """Parameters ``(db_url, config)`` for a test taking both, ``db_url`` indirect: each
    reading named for a backend runs on it (ids as the fixtures would give them)."""
    return [
        pytest.param(backend, READINGS[name], id=f"{backend}-{_READING_IDS[name]}")
        for backend, names in (("sqlite", sqlite), ("postgresql", postgresql))
        for name in names
    ]


# --------------------------------------------------------------------------- static worlds


def static_world(
    config: WorldConfig | None = None,
    *,
    seed: int = 1,
    hours: float = 12,
    per_hour: float = 60,
    now: datetime | None = None,
    endpoints: Sequence[str] = ENDPOINTS,
    running: int = 4,
    big_tie_group: int = 150,
    late_fraction: float = 0.01,
    **kw: Any,
) -> World:
    """A generated history whose clock stands still at ``now`` (default: a moment ago)."""
    now = (now or datetime.now(UTC) - timedelta(seconds=2)).replace(microsecond=0)
    cfg = replace(config or WorldConfig(), clock=ManualClock(now))
    return generate_world(
        cfg,
        seed=seed,
        now=now,
        days=hours / 24,
        requests_per_hour=per_hour,
        endpoints=list(endpoints),
        running=running,
        big_tie_group=big_tie_group,
        late_fraction=late_fraction,
        **kw,
    )


def listable(world: World) -> dict[str, dict[str, Any]]:
    """What a complete mirror must hold now: every request the list operation can return.

    With the window on ``ended_at`` a running request matches no window, so it is never
    listed (and is not expected); under the other readings it is listed with nulls.
    """
    ff = world.config.filter_field
    out = {}
    for rid, item in world.server_view().items():
        if ff == "ended_at" and item.get("ended_at") is None:
            continue
        out[rid] = server_record(item)
    return out


def sync_args(db: Path, *extra: str, targets: Iterable[str] = TARGETS) -> list[str]:
    """``mirror sync --db DB EXTRA… -e TARGET…``."""
    return ["sync", "--db", str(db), *extra, *itertools.chain(*(("-e", t) for t in targets))]


# --------------------------------------------------------------------------- who called


@dataclass(frozen=True)
class Call:
    """One API call as the server saw it: who (by key), for what, from when to when."""

    key: str
    path: str
    endpoint_ids: tuple[str, ...]
    began: float  # time.monotonic() when the server read the request
    ended: float  # ... and when it had answered


class IdentifyingAPI(SimulatedAPI):
    """The simulated API, also recording which key made each call and when it began and
    ended (the base log keeps neither): evidence outside the code under test of which
    process asked for what, and when."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.calls: list[Call] = []
        self._calls_lock = threading.Lock()

    def _handle(self, handler: Any, method: str) -> None:
        from urllib.parse import parse_qs, urlsplit

        began = time.monotonic()
        auth = handler.headers.get("Authorization") or ""
        split = urlsplit(handler.path)
        params = parse_qs(split.query)
        try:
            super()._handle(handler, method)
        finally:
            call = Call(
                key=auth.removeprefix("Key ").strip(),
                path=split.path,
                endpoint_ids=tuple(params.get("endpoint_id", ())),
                began=began,
                ended=time.monotonic(),
            )
            with self._calls_lock:
                self.calls.append(call)


# --------------------------------------------------------------------------- hand-made worlds

#: the operations' paths below the simulator's ``/v1`` root (``client`` is based there)
LIST = "/serverless/requests/by-endpoint"
MODELS = "/models/requests/by-endpoint"
ANALYTICS = "/serverless/analytics"
MODELS_ANALYTICS = "/models/analytics"
BILLING_EVENTS = "/models/billing-events"
PRICING = "/models/pricing"
USAGE = "/models/usage"
#: a key the simulator accepts, without ADMIN scope when the API is started with
#: ``keys=KEYS, admin_keys=frozenset({DEFAULT_KEY})``
API_SCOPE_KEY = "sim-api-key-id:sim-api-key-secret"
KEYS = frozenset({DEFAULT_KEY, API_SCOPE_KEY})


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


def analytics_refusing(status: int) -> type[SimulatedAPI]:
    """A simulated API whose analytics refuses, or answers nonsense, with ``status``."""

    class Refusing(SimulatedAPI):
        """The simulated API, but analytics answers ``status``: 403 (a key without
        access), 404 (no such operation) or 200 with a body that is not an analytics answer."""

        def respond(self, method: str, path: str, params: Any, authorization: Any, **kw: Any):  # type: ignore[no-untyped-def]
            if path != ANALYTICS_PATH:
                return super().respond(method, path, params, authorization, **kw)
            if status == 200:
                return Answer(200, b'{"time_series": "soon", "next_cursor": null}')
            kind = "not_found" if status == 404 else "authorization_error"
            message = "Resource not found" if status == 404 else "Access denied"
            return Answer(status, ApiError(status, kind, message).body())

    return Refusing
