"""The simulated fal Platform API over real HTTP on 127.0.0.1, standard library only.

`http.server` rather than a framework because fault injection needs the socket itself:
an RST instead of a response, a `Content-Length` the body never reaches, a body that
drips one byte at a time. Connections are HTTP/1.1 keep-alive, one daemon thread each,
with Nagle off so small pages are not held back.

The semantics follow docs/fal-api.md and the vendored OpenAPI file:
validation errors are 400 `validation_error`, auth 401, foreign endpoints and a key without
ADMIN scope on an ADMIN operation 403, unknown paths 404, all as fal's JSON error body.
Behaviour the service leaves open comes from the `World`'s `WorldConfig` switches (and, for
the cost operations, `mirror.simulator.billing.BillingConfig`). Decided here (fal documents
none of it): auth is checked before parameters, parameters before ownership; a scalar
parameter given twice uses its last value; `expand` also accepts a comma-joined value;
unknown parameters are ignored; explicit `start` later than explicit `end` is a 400; the
models operations (list and analytics) apply no ownership check (they show the caller's own
requests to anyone's endpoints); analytics pages its buckets 100 per page by default and at
most 1000 (larger limits are clamped); a served path asked with any other method than GET
or HEAD is a 405 with ``Allow: GET, HEAD`` (the error type ``not_found``), and a request
the standard library refuses before the API sees it (a malformed request line, a header
line too long) gets fal's JSON error too, never an HTML page. Parameters are read by
`mirror.simulator.params`; billing events, pricing and usage are answered by
`mirror.simulator.cost_ops`.
"""

from __future__ import annotations

import contextlib
import ipaddress
import socket
import ssl
import struct
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

import orjson

from mirror.simulator import analytics, cost_ops
from mirror.simulator import params as parse
from mirror.simulator.billing import BillingConfig, Ledger
from mirror.simulator.faults import (
    ANALYTICS_PATH,
    BILLING_EVENTS_PATH,
    MODELS_ANALYTICS_PATH,
    MODELS_LIST_PATH,
    PRICING_PATH,
    SERVERLESS_LIST_PATH,
    USAGE_PATH,
    Body,
    Decision,
    FaultConfig,
    FaultInjector,
    bad_body,
)
from mirror.simulator.params import ApiError, encode_cursor, parse_time
from mirror.simulator.serving import Served
from mirror.simulator.world import ItemView, Query, World, app_id_of

__all__ = [
    "DEFAULT_KEY",
    "Answer",
    "ApiError",
    "LoggedRequest",
    "SimulatedAPI",
    "encode_cursor",
    "parse_time",
]

#: The key a `SimulatedAPI` accepts unless told otherwise (fal's `<key_id>:<key_secret>`).
DEFAULT_KEY = "sim-key-id:sim-key-secret"
_JSON = "application/json"
#: how the simulator encodes every JSON body (``orjson.dumps(body, option=BODY_OPTIONS)``)
BODY_OPTIONS = orjson.OPT_UTC_Z
_LIST_EXPAND = {True: ("payloads", "billing"), False: ("payloads",)}
_ANALYTICS_DEFAULT_LIMIT = 100
_ANALYTICS_MAX_LIMIT = 1000
#: path -> (the operation, whether it needs an ADMIN key)
_COST_OPERATIONS = {
    BILLING_EVENTS_PATH: (cost_ops.billing_events, True),
    PRICING_PATH: (cost_ops.pricing, False),
    USAGE_PATH: (cost_ops.usage, True),
}


@dataclass(frozen=True, slots=True)
class LoggedRequest:
    """One request as the server saw it; the Authorization value is never kept.

    `time` is the real wall clock (for measuring client back-off), `world_time` the world's
    clock (for relating calls to simulated history). `status` is None when no status line
    was sent (a reset); `fault` names the injected fault, if any.
    """

    time: datetime
    method: str
    path: str
    params: dict[str, list[str]]
    status: int | None
    fault: str | None
    authorization_present: bool
    world_time: datetime | None = None


@dataclass(slots=True)
class Answer:
    """What the application decided, before faults decide how (or whether) it is sent.

    `page` is the decoded 200 page of a list operation, kept so bad-data faults can
    corrupt it.
    """

    status: int
    body: bytes
    content_type: str = _JSON
    headers: tuple[tuple[str, str], ...] = ()
    page: dict[str, Any] | None = field(default=None)
    #: which page of its walk `page` is (1 for the first)
    page_number: int = 1


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    api: SimulatedAPI

    def handle_error(self, request: Any, client_address: Any) -> None:
        """Stay quiet about clients that hang up; keep anything else for the tests."""
        exc = sys.exc_info()[1]
        if exc is not None and not isinstance(exc, OSError):
            self.api._record_error(exc)


class _Server6(_Server):
    address_family = socket.AF_INET6


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "fal-sim/1.0"
    sys_version = ""
    disable_nagle_algorithm = True
    server: _Server

    def setup(self) -> None:
        super().setup()
        self.server.api._track(self.connection, True)

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            self.server.api._track(self.connection, False)

    def __getattr__(self, name: str) -> Any:
        """``do_<METHOD>`` for every method, whatever its name (GET, HEAD, TRACE, PROPFIND...):
        the application answers them all, so none gets the standard library's 501 page."""
        if name.startswith("do_") and len(name) > 3:
            method = name[3:]
            return lambda: self.server.api._handle(self, method)
        raise AttributeError(name)

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        """A request too broken to reach the application (a malformed request line, headers
        too long, an HTTP version other than 1.x): fal's JSON error, not an HTML page."""
        kind = _ERROR_KINDS.get(code, "validation_error" if code < 500 else "server_error")
        body = ApiError(code, kind, message or _REASONS.get(code, "Error")).body()
        self.close_connection = True
        with contextlib.suppress(OSError):
            self.send_response(code, message)
            self.send_header("Content-Type", _JSON)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Connection", "close")
            self.end_headers()
            if self.command != "HEAD" and code >= 200 and code not in (204, 304):
                self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet: the request log is `SimulatedAPI.log`, not stderr."""


class SimulatedAPI(Served):
    """fal's request-history API over HTTP, backed by a `World`, with optional faults.

    Use as a context manager (or `start()`/`stop()`); `base_url` is the `/v1` root to give
    the client. `faults` may be replaced while running; `world` is shared, so a test can
    move the clock or add requests between calls. `keys` are accepted, `admin_keys` (by
    default all of them) also have ADMIN scope; `billing` sets what the cost operations
    (billing events, pricing, usage) derive from the world. Binds only to loopback
    addresses: it accepts any caller and serves fixed keys, so it must never face a
    network. With `tls` (a server-side context holding a certificate) it serves https, as
    fal does.
    """

    what = "the simulated API"

    def __init__(
        self,
        world: World,
        faults: FaultConfig | None = None,
        keys: frozenset[str] = frozenset({DEFAULT_KEY}),
        host: str = "127.0.0.1",
        port: int = 0,
        tls: ssl.SSLContext | None = None,
        *,
        admin_keys: frozenset[str] | None = None,
        billing: BillingConfig | None = None,
    ) -> None:
        if host != "localhost":
            try:
                loopback = ipaddress.ip_address(host).is_loopback
            except ValueError:
                loopback = False
            if not loopback:
                raise ValueError(f"refusing to bind the simulated API to non-loopback {host!r}")
        self.world = world
        self.keys = frozenset(keys)
        #: the keys with ADMIN scope (billing events, usage); None: every key
        self.admin_keys = self.keys if admin_keys is None else frozenset(admin_keys)
        #: the billing the cost operations answer from; its ``config`` may be replaced
        self.ledger = Ledger(world, billing)
        self._host = host
        self._port = port
        self._tls = tls
        self._injector = FaultInjector(faults or FaultConfig())
        self._lock = threading.Lock()
        self._log: list[LoggedRequest] = []
        self._errors: list[BaseException] = []
        self._connections: set[socket.socket] = set()

    # -- lifecycle ------------------------------------------------------------------------

    def bind(self) -> _Server:
        server_cls = _Server6 if ":" in self._host else _Server
        httpd = server_cls((self._host, self._port), _Handler)
        httpd.api = self
        if self._tls is not None:
            # the handshake happens in each connection's own thread, at its first read,
            # so a client that stalls in it holds up no other
            httpd.socket = self._tls.wrap_socket(
                httpd.socket, server_side=True, do_handshake_on_connect=False
            )
        return httpd

    def closed(self) -> None:
        """Cut open keep-alive connections, so clients see the server go."""
        with self._lock:
            connections = list(self._connections)
        for conn in connections:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)

    @property
    def base_url(self) -> str:
        """The API root to configure a client with, e.g. `http://127.0.0.1:PORT/v1`."""
        host = f"[{self._host}]" if ":" in self._host else self._host
        return f"{'https' if self._tls else 'http'}://{host}:{self.port}/v1"

    # -- faults, log, errors --------------------------------------------------------------

    @property
    def faults(self) -> FaultConfig:
        """Current fault configuration; assigning one restarts its RNG from its seed."""
        return self._injector.config

    @faults.setter
    def faults(self, config: FaultConfig | None) -> None:
        self._injector = FaultInjector(config or FaultConfig())

    @property
    def log(self) -> list[LoggedRequest]:
        """A snapshot of every request served so far, oldest first."""
        with self._lock:
            return list(self._log)

    def clear_log(self) -> None:
        """Forget logged requests (e.g. between phases of a test)."""
        with self._lock:
            self._log.clear()

    @property
    def errors(self) -> list[BaseException]:
        """Unexpected exceptions inside the simulator (answered as 500); tests assert none."""
        with self._lock:
            return list(self._errors)

    def _record_error(self, exc: BaseException) -> None:
        with self._lock:
            self._errors.append(exc)

    def _track(self, conn: socket.socket, alive: bool) -> None:
        with self._lock:
            if alive:
                self._connections.add(conn)
            else:
                self._connections.discard(conn)

    # -- HTTP -------------------------------------------------------------------------------

    def _handle(self, handler: _Handler, method: str) -> None:
        split = urlsplit(handler.path)
        params = parse_qs(split.query, keep_blank_values=True)
        length = handler.headers.get("Content-Length")
        if length and length.isdigit():
            handler.rfile.read(int(length))
        auth = handler.headers.get("Authorization")
        world_now = self.world.now()
        try:
            answer = self.respond(method, split.path, params, auth, now=world_now)
        except Exception as exc:  # a simulator bug: answer like fal would, keep it for tests
            self._record_error(exc)
            answer = Answer(
                500, ApiError(500, "server_error", "An unexpected error occurred").body()
            )
        decision = self._injector.decide(
            split.path, page=answer.page is not None, authorization=auth
        )
        if decision.latency:
            time.sleep(decision.latency)
        if decision.action == "reset":
            status: int | None = None
        elif decision.action == "respond":
            status = decision.status
        else:
            status = answer.status
        # logged before the first byte goes out, so a client that has its answer can
        # already see the entry (no race between a test's assertion and this thread)
        self._append_log(
            LoggedRequest(
                time=datetime.now(UTC),
                method=method,
                path=split.path,
                params=params,
                status=status,
                fault=decision.fault,
                authorization_present=auth is not None,
                world_time=world_now,
            )
        )
        try:
            self._deliver(handler, method, answer, decision, world_now)
        except OSError:  # the client hung up (or we reset it)
            handler.close_connection = True

    def _append_log(self, entry: LoggedRequest) -> None:
        with self._lock:
            self._log.append(entry)

    def _deliver(
        self, handler: _Handler, method: str, answer: Answer, decision: Decision, now: datetime
    ) -> None:
        """Send the answer as the fault decision says, dated by the world's clock."""
        if decision.action == "reset":
            _reset(handler)
            return
        date = format_datetime(now.astimezone(UTC), usegmt=True)
        if decision.action == "respond":
            body = Body(len(decision.body), iter((decision.body,)), decision.content_type)
            _send(handler, method, decision.status, decision.headers, body, date)
            return
        if decision.bad is not None and answer.page is not None:
            body = bad_body(decision.bad, answer.page, BODY_OPTIONS, answer.page_number)
        else:
            body = Body(len(answer.body), iter((answer.body,)), answer.content_type)
        if decision.action == "truncate":
            data = b"".join(body.chunks)
            cut = Body(len(data), iter((data[: len(data) // 2],)), body.content_type)
            _send(handler, method, answer.status, answer.headers, cut, date)
            handler.close_connection = True
        elif decision.action in ("stall", "stall_headers"):
            delay = decision.stall_byte_delay
            _send(
                handler,
                method,
                answer.status,
                answer.headers,
                body,
                date,
                byte_delay=delay if decision.action == "stall" else 0.0,
                head_byte_delay=delay if decision.action == "stall_headers" else 0.0,
            )
        else:
            _send(handler, method, answer.status, answer.headers, body, date)

    # -- the application ------------------------------------------------------------------

    def respond(
        self,
        method: str,
        path: str,
        params: Mapping[str, list[str]],
        authorization: str | None,
        *,
        now: datetime | None = None,
    ) -> Answer:
        """The API's answer to one request, without HTTP or faults (also handy in tests)."""
        now = now or self.world.now()
        routes = {
            SERVERLESS_LIST_PATH: "serverless",
            MODELS_LIST_PATH: "models",
            ANALYTICS_PATH: "analytics",
            MODELS_ANALYTICS_PATH: "models-analytics",
            **{p: "cost" for p in _COST_OPERATIONS},
        }
        operation = routes.get(path)
        try:
            if operation is None:
                raise ApiError(404, "not_found", f"Resource not found: {method} {path}")
            if method not in _ALLOWED:
                return Answer(
                    405,
                    ApiError(405, "not_found", f"Method {method} not allowed on {path}").body(),
                    headers=(("Allow", ", ".join(_ALLOWED)),),
                )
            key = self._authenticate(authorization)
            if operation == "cost":
                return self._cost(path, params, key, now)
            if operation in ("analytics", "models-analytics"):
                return self._analytics(params, now, owned=operation == "analytics")
            return self._list(params, serverless=operation == "serverless", now=now)
        except ApiError as err:
            return Answer(err.status, err.body())

    def _authenticate(self, authorization: str | None) -> str:
        if authorization is None or not authorization.startswith("Key "):
            raise ApiError(401, "authorization_error", "Authentication required")
        key = authorization[4:].strip()
        if key not in self.keys:
            raise ApiError(
                401, "authorization_error", "Invalid API key or malformed Authorization header"
            )
        return key

    def _cost(self, path: str, params: Mapping[str, list[str]], key: str, now: datetime) -> Answer:
        """Billing events, pricing or usage; the first and last need an ADMIN key."""
        operation, admin_only = _COST_OPERATIONS[path]
        if admin_only and key not in self.admin_keys:
            raise ApiError(
                403, "authorization_error", "Access denied: this operation needs an ADMIN key"
            )
        body = operation(self.ledger, params, now)
        return Answer(200, orjson.dumps(body, option=BODY_OPTIONS))

    def _check_owner(self, endpoint_ids: Sequence[str]) -> None:
        foreign = [e for e in endpoint_ids if not self.world.owns(e)]
        if foreign:
            raise ApiError(403, "authorization_error", "Access denied")

    def _check_model(self, endpoint_ids: Sequence[str]) -> None:
        """The models operations' refusal of the account's own endpoints, if it refuses
        them (``WorldConfig.models_refuse_owned``)."""
        status = self.world.config.models_refuse_owned
        own = [e for e in endpoint_ids if self.world.owns(e)]
        if status == 403 and own:  # what another account's endpoint gets: no word of why
            raise ApiError(403, "authorization_error", "Access denied")
        if status is not None and own:
            kind = "not_found" if status == 404 else "validation_error"
            raise ApiError(status, kind, f"Not a model endpoint: {own[0]}")

    def _list(self, params: Mapping[str, list[str]], *, serverless: bool, now: datetime) -> Answer:
        endpoint_ids = parse.endpoint_ids(params)
        limit = parse.integer(params, "limit", 50, 1, 100)
        cursor = parse.last(params, "cursor")
        page = parse.decode_cursor(cursor) if cursor is not None else 1
        start, end = parse.window(params)
        status = parse.enum(params, "status", ("success", "error", "user_error"))
        sort_by = parse.enum(params, "sort_by", ("ended_at", "duration")) or "ended_at"
        request_id = parse.last(params, "request_id")
        if request_id is not None and not parse.is_uuid(request_id):
            raise parse.invalid(f"Invalid request_id {request_id!r}: must be a UUID")
        allowed = _LIST_EXPAND[serverless]
        expand = parse.split(params, "expand")
        for value in expand:
            if value not in allowed:
                raise parse.invalid(
                    f"Invalid expand value {value!r}; allowed: {', '.join(allowed)}"
                )
        if not serverless:
            self._check_model(endpoint_ids)
        if serverless:
            self._check_owner(endpoint_ids)
            refused = self.world.config.billing_refused
            if "billing" in expand and any(app_id_of(e) in refused for e in endpoint_ids):
                raise ApiError(403, "authorization_error", "Access denied")
        query = Query(
            endpoint_ids=tuple(endpoint_ids),
            start=start,
            end=end,
            status=status,  # type: ignore[arg-type]
            sort_by=sort_by,  # type: ignore[arg-type]
            request_id=request_id.lower() if request_id is not None else None,
        )
        view = ItemView(
            serverless=serverless, payloads="payloads" in expand, billing="billing" in expand
        )
        items, more = self.world.page(
            query, offset=(page - 1) * limit, limit=limit, view=view, now=now
        )
        next_cursor = encode_cursor(page + 1) if more else None
        body = {"items": items, "next_cursor": next_cursor, "has_more": next_cursor is not None}
        return Answer(200, orjson.dumps(body, option=BODY_OPTIONS), page=body, page_number=page)

    def _analytics(self, params: Mapping[str, list[str]], now: datetime, *, owned: bool) -> Answer:
        """``/serverless/analytics`` (``owned``: endpoints of the key's account only) or
        ``/models/analytics`` (the key's calls to any endpoint)."""
        endpoint_ids = parse.endpoint_ids(params)
        limit = parse.integer(params, "limit", _ANALYTICS_DEFAULT_LIMIT, 1, None)
        limit = min(limit, _ANALYTICS_MAX_LIMIT)
        cursor = parse.last(params, "cursor")
        page = parse.decode_cursor(cursor) if cursor is not None else 1
        start, end = parse.window_or_default(params, now, timedelta(hours=24))
        timeframe = parse.enum(params, "timeframe", analytics.TIMEFRAMES)
        bound = parse.enum(params, "bound_to_timeframe", ("true", "false")) or "true"
        tz = parse.timezone(parse.last(params, "timezone") or "UTC")
        expand = (
            parse.split(params, "expand")
            if "expand" in params
            else ["time_series", "request_count"]
        )
        known = ("time_series", "summary", *analytics.METRICS)
        for value in expand:
            if value not in known:
                raise parse.invalid(f"Invalid expand value {value!r}; allowed: {', '.join(known)}")
        metrics = [m for m in analytics.METRICS if m in expand]
        if not {"time_series", "summary"} & set(expand) or not metrics:
            raise parse.invalid(
                "expand must name time_series and/or summary and at least one metric "
                "(e.g. expand=time_series&expand=request_count)"
            )
        if owned:
            self._check_owner(endpoint_ids)
        else:
            self._check_model(endpoint_ids)
        rng = analytics.asked_range(start, end, timeframe, tz, bound)
        series, summary = analytics.compute(self.world, endpoint_ids, rng, tz, metrics, now=now)
        body: dict[str, Any] = {}
        next_cursor = None
        if "time_series" in expand:
            offset = (page - 1) * limit
            body["time_series"] = series[offset : offset + limit]
            if offset + limit < len(series):
                next_cursor = encode_cursor(page + 1)
        if "summary" in expand:
            body["summary"] = summary
        body["next_cursor"] = next_cursor
        body["has_more"] = next_cursor is not None
        return Answer(200, orjson.dumps(body, option=BODY_OPTIONS))


_REASONS = {s.value: s.phrase for s in HTTPStatus}
#: fal's error type for a status the standard library refuses a request with
_ERROR_KINDS = {404: "not_found", 501: "not_implemented", 505: "not_implemented"}
#: the only methods the API answers; any other gets a 405 naming them
_ALLOWED = ("GET", "HEAD")


def _send(
    handler: _Handler,
    method: str,
    status: int,
    headers: Sequence[tuple[str, str]],
    body: Body,
    date: str,
    *,
    byte_delay: float = 0.0,
    head_byte_delay: float = 0.0,
) -> None:
    """Write a whole response (one write for small bodies, chunks for streamed ones);
    ``byte_delay`` drips the body a byte at a time, ``head_byte_delay`` the status line and
    headers (the body then follows at once). ``date`` is the world's clock when the answer
    was computed, as fal's ``Date`` header carries its own clock: the client bounds what it
    marks complete by it."""
    lines = [
        f"HTTP/1.1 {status} {_REASONS.get(status, 'Unknown')}",
        f"Server: {handler.server_version}",
        f"Date: {date}",
        f"Content-Type: {body.content_type}",
        f"Content-Length: {body.length}",
    ]
    lines.extend(f"{name}: {value}" for name, value in headers)
    if handler.close_connection:
        lines.append("Connection: close")
    head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
    write = handler.wfile.write
    if head_byte_delay:
        for k in range(len(head)):
            time.sleep(head_byte_delay)
            write(head[k : k + 1])
        head = b""
    if method == "HEAD":
        write(head)
        return
    if byte_delay:
        write(head)
        for chunk in body.chunks:
            for k in range(len(chunk)):
                time.sleep(byte_delay)
                write(chunk[k : k + 1])
        return
    first = next(body.chunks, b"")
    write(head + first)
    for chunk in body.chunks:
        write(chunk)


def _reset(handler: _Handler) -> None:
    """Abort the connection with an RST and no response (SO_LINGER 0, then close).

    The read buffer is closed first: it holds a reference that would otherwise keep the
    socket open past `close()`, turning the reset into a graceful FIN later.
    """
    conn = handler.connection
    handler.close_connection = True
    conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    handler.rfile.close()
    conn.close()
