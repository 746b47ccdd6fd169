"""Fault injection for the simulated API: what can go wrong between a client and fal.

`FaultConfig` says how often each kind of failure happens; a `FaultInjector` (one per
config, owned by the server) draws the decisions from a seeded RNG under a lock. Every
request to a faultable path draws the same number of random values whatever happens, so
a given seed and request order always yields the same faults: a failing test can be
replayed exactly.

The failures are the ones a mirror meets in the wild (docs/fal-api.md, errors and rate limits):
429s with and without `Retry-After`, HTML 5xx pages from a proxy, JSON 500s, connections
reset or cut mid-body, bodies or headers dripping in byte by byte, latency, a token-bucket
rate limit, a full outage, hostile 200 pages (huge, absurdly nested, wrongly typed,
impossible values, rows the call did not ask for, or a cursor that never ends) for the
client's defences, and a fixed answer of the test's own (e.g. an error message with
terminal escapes, or one echoing the ``Authorization`` header back as some proxies do).
"""

from __future__ import annotations

import base64
import random
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Any, Literal

import orjson

__all__ = [
    "ANALYTICS_PATH",
    "API_PATHS",
    "BAD_DATA_MODES",
    "BILLING_EVENTS_PATH",
    "MODELS_ANALYTICS_PATH",
    "MODELS_LIST_PATH",
    "PRICING_PATH",
    "SERVERLESS_LIST_PATH",
    "USAGE_PATH",
    "Body",
    "Decision",
    "FaultConfig",
    "FaultInjector",
    "bad_body",
    "html_error_page",
]

SERVERLESS_LIST_PATH = "/v1/serverless/requests/by-endpoint"
MODELS_LIST_PATH = "/v1/models/requests/by-endpoint"
ANALYTICS_PATH = "/v1/serverless/analytics"
MODELS_ANALYTICS_PATH = "/v1/models/analytics"
BILLING_EVENTS_PATH = "/v1/models/billing-events"
PRICING_PATH = "/v1/models/pricing"
USAGE_PATH = "/v1/models/usage"
#: The operations the simulator serves; the default `fault_paths`.
API_PATHS = frozenset(
    {
        SERVERLESS_LIST_PATH,
        MODELS_LIST_PATH,
        ANALYTICS_PATH,
        MODELS_ANALYTICS_PATH,
        BILLING_EVENTS_PATH,
        PRICING_PATH,
        USAGE_PATH,
    }
)

BadData = Literal[
    "oversize",
    "deep_nesting",
    "wrong_types",
    "missing_request_id",
    "has_more_no_cursor",
    "repeat_cursor",
    "not_json",
    "items_not_list",
    # values a well-typed page can still get wrong
    "bad_timestamp",
    "bad_status_code",
    "huge_duration",
    "negative_duration",
    "ended_before_started",
    # rows the call did not ask for
    "foreign_endpoint",
    "outside_window",
    # a cursor that never ends: empty pages, each with a new cursor
    "endless_cursor",
]
BAD_DATA_MODES: frozenset[str] = frozenset(BadData.__args__)  # type: ignore[attr-defined]

#: Size of the page body in "oversize" mode: past the 64 MiB a sane client accepts.
OVERSIZE_BYTES = 65 * 1024 * 1024 + 17
DEEP_NESTING = 100_000
_HTML_5XX = (500, 502, 503, 504)
_DRAWS = 11  # random values drawn per request, whatever is decided
#: in an `answer_with` body, replaced by the request's Authorization header (JSON-escaped)
AUTHORIZATION_ECHO = b"{authorization}"


@dataclass(frozen=True, slots=True)
class FaultConfig:
    """How often each failure happens. All probabilities are per request, in [0, 1].

    Decisions are checked in this order and the first that fires wins: `outage` (every
    call 503 HTML), `answer_with` (every call answered with this status and JSON body;
    `{authorization}` in the body becomes the request's Authorization header, as a proxy
    echoing it in an error message would send it), `rate_limit` (token bucket of `rate_limit` requests/second holding up
    to `burst`; over it 429 without `Retry-After`), `p_429` (of which `p_retry_after` carry
    `Retry-After: retry_after` seconds when `retry_after` is set; fractional seconds are
    sent as such, which real servers never do but keeps tests fast), `p_5xx` (HTML page,
    status 500/502/503/504), `p_json_500` (fal's JSON `server_error`), `p_reset` (RST, no
    response), `p_truncate` (full `Content-Length`, half the body, close), `p_stall` (body
    one byte every `stall_byte_delay` seconds), `p_stall_headers` (the status line and
    headers one byte every `stall_byte_delay` seconds, a stuck proxy), then `bad_data` with
    `p_bad_data` (only on
    200 pages of the two list operations). `latency` (+ uniform `latency_jitter`) delays
    every answer on `fault_paths`. After `max_faults` injected faults, none are injected.
    """

    seed: int = 0
    p_429: float = 0.0
    retry_after: float | None = None
    p_retry_after: float = 1.0
    p_5xx: float = 0.0
    p_json_500: float = 0.0
    p_reset: float = 0.0
    p_truncate: float = 0.0
    p_stall: float = 0.0
    p_stall_headers: float = 0.0
    stall_byte_delay: float = 0.05
    latency: float = 0.0
    latency_jitter: float = 0.0
    rate_limit: float | None = None
    burst: float = 10.0
    outage: bool = False
    max_faults: int | None = None
    fault_paths: frozenset[str] = field(default=API_PATHS)
    bad_data: BadData | None = None
    p_bad_data: float = 1.0
    answer_with: tuple[int, bytes] | None = None

    def __post_init__(self) -> None:
        for name in (
            "p_429",
            "p_retry_after",
            "p_5xx",
            "p_json_500",
            "p_reset",
            "p_truncate",
            "p_stall",
            "p_stall_headers",
            "p_bad_data",
        ):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be a probability in [0, 1], got {value!r}")
        for name in ("latency", "latency_jitter", "stall_byte_delay"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must not be negative")
        if self.retry_after is not None and self.retry_after < 0:
            raise ValueError("retry_after must not be negative")
        if self.rate_limit is not None and self.rate_limit <= 0:
            raise ValueError("rate_limit must be positive requests/second (or None)")
        if self.burst < 1:
            raise ValueError("burst must be at least 1")
        if self.bad_data is not None and self.bad_data not in BAD_DATA_MODES:
            modes = ", ".join(sorted(BAD_DATA_MODES))
            raise ValueError(f"unknown bad_data mode {self.bad_data!r}; known: {modes}")
        if self.max_faults is not None and self.max_faults < 0:
            raise ValueError("max_faults must not be negative")
        if self.answer_with is not None and not 100 <= self.answer_with[0] <= 599:
            raise ValueError("answer_with's status must be an HTTP status (100-599)")


@dataclass(frozen=True, slots=True)
class Decision:
    """What to do with one request.

    `action`: `serve` (the real answer, possibly `bad` data), `respond` (replace it with
    `status`/`body`), `reset`, `truncate`, `stall` or `stall_headers` (the real answer,
    badly delivered).
    `fault` is the label written to the request log, None when nothing was injected.
    """

    action: Literal["serve", "respond", "reset", "truncate", "stall", "stall_headers"] = "serve"
    fault: str | None = None
    latency: float = 0.0
    status: int = 200
    body: bytes = b""
    content_type: str = "application/json"
    headers: tuple[tuple[str, str], ...] = ()
    bad: str | None = None
    stall_byte_delay: float = 0.0


_NO_FAULT = Decision()


def html_error_page(status: int) -> bytes:
    """A proxy's error page, as nginx or a CDN would send it instead of fal's JSON."""
    titles = {
        500: "500 Internal Server Error",
        502: "502 Bad Gateway",
        503: "503 Service Temporarily Unavailable",
        504: "504 Gateway Time-out",
    }
    title = titles.get(status, f"{status} Error")
    return (
        f"<html>\r\n<head><title>{title}</title></head>\r\n<body>\r\n"
        f"<center><h1>{title}</h1></center>\r\n<hr><center>nginx</center>\r\n"
        "</body>\r\n</html>\r\n"
    ).encode()


def _error_json(kind: str, message: str) -> bytes:
    return orjson.dumps({"error": {"type": kind, "message": message}})


_RATE_LIMITED = _error_json("rate_limited", "Rate limit exceeded")


class FaultInjector:
    """The mutable side of a `FaultConfig`: RNG, fault count and token bucket.

    The server makes a fresh one whenever its `faults` is replaced, so a new config starts
    from its own seed.
    """

    def __init__(self, config: FaultConfig) -> None:
        self.config = config
        self._rng = random.Random(config.seed)
        self._lock = threading.Lock()
        self._injected = 0
        self._tokens = float(config.burst)
        self._refilled = time.monotonic()

    @property
    def injected(self) -> int:
        """How many faults were injected so far (latency is not a fault)."""
        with self._lock:
            return self._injected

    def decide(self, path: str, *, page: bool, authorization: str | None = None) -> Decision:
        """Decide the fate of one request to `path`; `page` says whether the real answer
        is a 200 page of a list operation (the only thing bad data can corrupt);
        `authorization` is the request's header (only an `answer_with` echo uses it)."""
        cfg = self.config
        if path not in cfg.fault_paths:
            return _NO_FAULT
        with self._lock:
            u = [self._rng.random() for _ in range(_DRAWS)]
            latency = cfg.latency + cfg.latency_jitter * u[10]
            decision = self._choose(u, page, authorization)
            if decision is not None and (cfg.max_faults is None or self._injected < cfg.max_faults):
                self._injected += 1
                return _with_latency(decision, latency)
        return Decision(latency=latency) if latency else _NO_FAULT

    def _choose(self, u: list[float], page: bool, authorization: str | None) -> Decision | None:
        cfg = self.config
        if cfg.outage:
            return _html_error("outage", 503)
        if cfg.answer_with is not None:
            status, body = cfg.answer_with
            echo = orjson.dumps(authorization or "")[1:-1]
            return _respond("answer-with", status, body.replace(AUTHORIZATION_ECHO, echo))
        if cfg.rate_limit is not None and not self._take_token():
            return _respond("rate-limit", 429, _RATE_LIMITED)
        if u[0] < cfg.p_429:
            if cfg.retry_after is not None and u[1] < cfg.p_retry_after:
                retry_after = (("Retry-After", f"{cfg.retry_after:g}"),)
                return _respond("429+retry-after", 429, _RATE_LIMITED, headers=retry_after)
            return _respond("429", 429, _RATE_LIMITED)
        if u[2] < cfg.p_5xx:
            return _html_error("5xx-html", _HTML_5XX[int(u[3] * len(_HTML_5XX))])
        if u[4] < cfg.p_json_500:
            return _respond("json-500", 500, _error_json("server_error", "Unexpected server error"))
        if u[5] < cfg.p_reset:
            return Decision(action="reset", fault="reset")
        if u[6] < cfg.p_truncate:
            return Decision(action="truncate", fault="truncate")
        if u[7] < cfg.p_stall:
            return Decision(action="stall", fault="stall", stall_byte_delay=cfg.stall_byte_delay)
        if u[9] < cfg.p_stall_headers:
            return Decision(
                action="stall_headers",
                fault="stall-headers",
                stall_byte_delay=cfg.stall_byte_delay,
            )
        if page and cfg.bad_data is not None and u[8] < cfg.p_bad_data:
            return Decision(action="serve", fault=f"bad:{cfg.bad_data}", bad=cfg.bad_data)
        return None

    def _take_token(self) -> bool:
        cfg = self.config
        assert cfg.rate_limit is not None
        now = time.monotonic()
        self._tokens = min(cfg.burst, self._tokens + (now - self._refilled) * cfg.rate_limit)
        self._refilled = now
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return True
        return False


def _respond(
    fault: str, status: int, body: bytes, headers: tuple[tuple[str, str], ...] = ()
) -> Decision:
    """Another answer instead of the real one, labelled ``fault`` in the request log."""
    return Decision(action="respond", fault=fault, status=status, body=body, headers=headers)


def _html_error(fault: str, status: int) -> Decision:
    """A proxy's HTML error page instead of the real answer."""
    return replace(
        _respond(fault, status, html_error_page(status)), content_type="text/html; charset=utf-8"
    )


def _with_latency(decision: Decision, latency: float) -> Decision:
    return replace(decision, latency=latency) if latency else decision


@dataclass(frozen=True, slots=True)
class Body:
    """A response body known by length and produced in chunks, so an oversize page can be
    streamed without ever being held in memory."""

    length: int
    chunks: Iterator[bytes]
    content_type: str = "application/json"


def _one(data: bytes, content_type: str = "application/json") -> Body:
    return Body(len(data), iter((data,)), content_type)


#: the item the value corruptions change when a page has none of its own
_STAND_IN = {
    "request_id": "00000000-0000-7000-8000-000000000000",
    "endpoint_id": "acme/stand-in",
    "sent_at": "2026-01-01T00:00:00.000000Z",
    "started_at": "2026-01-01T00:00:01.000000Z",
    "ended_at": "2026-01-01T00:00:02.000000Z",
    "status_code": 200,
    "duration": 1.0,
}


def bad_body(mode: str, page: dict[str, Any], dumps_option: int, page_number: int = 1) -> Body:
    """A hostile version of a real 200 page (`page` holds items, cursor and has_more;
    `page_number` is the page it answers, 1 for the first).

    Item-level corruptions touch the first item only: one bad row in a good page is the
    case that tests whether a client rejects the page or silently skips the row. The value
    corruptions and the rows not asked for apply to a stand-in item on an empty page, so
    that every page they touch is hostile.
    """
    items: list[dict[str, Any]] = [dict(item) for item in page["items"]]
    out: dict[str, Any] = {**page, "items": items}
    if mode in _VALUES:
        if not items:
            items.append(dict(_STAND_IN))
        _VALUES[mode](items)
        return _one(orjson.dumps(out, option=dumps_option))
    if mode == "endless_cursor":
        cursor = base64.b64encode(str(page_number + 1).encode()).decode()  # as the server's
        out = {"items": [], "next_cursor": cursor, "has_more": True}
        return _one(orjson.dumps(out, option=dumps_option))
    if mode == "wrong_types":
        if items:
            first = items[0]
            first["status_code"] = str(first.get("status_code"))
            first["duration"] = {"seconds": first.get("duration")}
            first["started_at"] = 1_700_000_000
        return _one(orjson.dumps(out, option=dumps_option))
    if mode == "missing_request_id":
        if items:
            del items[0]["request_id"]
        return _one(orjson.dumps(out, option=dumps_option))
    if mode == "has_more_no_cursor":
        out["has_more"] = True
        out["next_cursor"] = None
        return _one(orjson.dumps(out, option=dumps_option))
    if mode == "repeat_cursor":
        out["has_more"] = True
        out["next_cursor"] = "Mg=="
        return _one(orjson.dumps(out, option=dumps_option))
    if mode == "not_json":
        html = b"<!DOCTYPE html><html><head><title>Just a moment...</title></head><body>"
        html += b"<h1>Checking your browser before accessing api.fal.ai</h1></body></html>"
        return _one(html, "text/html; charset=utf-8")
    if mode == "items_not_list":
        out["items"] = {str(k): item for k, item in enumerate(items)}
        return _one(orjson.dumps(out, option=dumps_option))
    if mode == "deep_nesting":
        marker = "__deep_nesting_marker__"
        template = items[0] if items else {"request_id": "00000000-0000-7000-8000-000000000000"}
        template = {**template, "json_input": marker}
        out["items"] = [template, *items[1:]]
        raw = orjson.dumps(out, option=dumps_option)
        deep = b'{"a":' * DEEP_NESTING + b"null" + b"}" * DEEP_NESTING
        return _one(raw.replace(b'"' + marker.encode() + b'"', deep, 1))
    if mode == "oversize":
        return _oversize(items, dumps_option)
    raise ValueError(f"unknown bad_data mode {mode!r}")


def _at(when: datetime | str, seconds: float) -> datetime:
    """``seconds`` after ``when`` (a page holds datetimes; the stand-in item, text)."""
    t = when if isinstance(when, datetime) else datetime.fromisoformat(when)
    return t + timedelta(seconds=seconds)


def _ended_before_started(items: list[dict[str, Any]]) -> None:
    first = items[0]
    first.update(started_at=_at(first["sent_at"], 60), ended_at=_at(first["sent_at"], 30),
                 status_code=first.get("status_code") or 200)  # fmt: skip


def _outside_window(items: list[dict[str, Any]]) -> None:
    """Every timestamp years before any window a client asks for (their order kept)."""
    first = items[0]
    first["sent_at"] = "2001-01-01T00:00:00.000000Z"
    if first.get("started_at") is not None:
        first["started_at"] = "2001-01-01T00:00:01.000000Z"
    if first.get("ended_at") is not None:
        first["ended_at"] = "2001-01-01T00:00:02.000000Z"


def _huge_durations(items: list[dict[str, Any]]) -> None:
    """Two of them when the page has two rows: their sum overflows where one alone may not."""
    for item in items[:2]:
        item["duration"] = 1e308


_VALUES: dict[str, Callable[[list[dict[str, Any]]], None]] = {
    "bad_timestamp": lambda items: items[0].update(sent_at="2026-13-45T25:61:61.000000Z"),
    "bad_status_code": lambda items: items[0].update(status_code=2**63),
    "huge_duration": _huge_durations,
    "negative_duration": lambda items: items[0].update(duration=-1.5),
    "ended_before_started": _ended_before_started,
    "foreign_endpoint": lambda items: items[0].update(endpoint_id="someone-else/app"),
    "outside_window": _outside_window,
}


def _oversize(items: list[dict[str, Any]], dumps_option: int) -> Body:
    """A syntactically valid page of more than 64 MiB: real items padded with 1 MiB blobs.

    The length is computed up front (so `Content-Length` is honest) and the bytes are
    generated as they are written.
    """
    base = items[0] if items else {"request_id": "00000000-0000-7000-8000-000000000000"}
    blob = "x" * (1024 * 1024)
    item = orjson.dumps({**base, "json_output": {"blob": blob}}, option=dumps_option)
    head, sep, tail = b'{"items":[', b",", b'],"next_cursor":null,"has_more":false}'
    count = -(-(OVERSIZE_BYTES - len(head) - len(tail)) // (len(item) + 1))
    length = len(head) + count * len(item) + (count - 1) * len(sep) + len(tail)

    def chunks() -> Iterator[bytes]:
        yield head
        for k in range(count):
            yield item if k == 0 else sep + item
        yield tail

    return Body(length, chunks())
