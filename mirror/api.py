"""The fal Platform API client: one ``httpx.Client`` passed in, retries, and strict pages.

``FalClient.list_requests`` returns a validated ``Page`` of rows ready for the store (what a
row is and how a page is checked: ``mirror.records``), or raises one of ``mirror.errors``:

- 429, 5xx, connection errors, timeouts, truncated or non-JSON bodies are retried with
  exponential backoff and full jitter (``Retry-After`` honoured when present), then
  ``ApiUnavailable``;
- 400/401/403/404 and other 4xx fail at once (``ApiError`` / ``AuthError``) with the API's
  ``error.message``, or a short description of a non-JSON (e.g. proxy HTML) body;
- a body over the size cap (``PageTooLarge``: never read past the cap; a walk asks for
  the window again in smaller pages, ``mirror.walk``), nesting beyond the JSON depth
  limit, wrong types, a missing ``request_id``, ``has_more`` without a cursor, a
  timestamp that is not a real time between 2000 and 2100, a status code outside
  100-599, a duration or unit count that is negative or past its bound, an ``ended_at``
  before its ``started_at``, or a row the call did not ask for (another endpoint, outside
  the window) raise ``BadDataError`` at once: the page is never handed to the store;
- every attempt has a total deadline, from connecting to the body's last byte, so a server
  or proxy trickling its headers or body in a byte at a time cannot hold a sync (and its
  lock) forever: httpx's own timeouts are per read, which a trickle never trips.

``FalClient.hourly_counts`` pages through ``/serverless/analytics``: the request counts per
hour that sync plans dense backfills by (leniently) and verify compares (strictly).

The key is sent in the ``Authorization`` header of each request and kept nowhere else; it
never appears in a message, a log line or an exception. Redirects are never followed, so
the key cannot be carried to another host.
"""

from __future__ import annotations

import contextlib
import copy
import ipaddress
import logging
import os
import random
import ssl
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from email.utils import parsedate_to_datetime
from typing import Any, TypeVar
from urllib.parse import urlsplit

import httpcore
import httpx
import orjson

from mirror import __version__, netenv
from mirror.errors import (
    ApiError,
    ApiUnavailable,
    AuthError,
    BadDataError,
    ConfigError,
    PageTooLarge,
    ProxyRefused,
    UntrustedCertificate,
)
from mirror.pacing import Pacer
from mirror.records import PAGE_LIMIT, Page, check_asked, parse_page
from mirror.redact import redact, register_key
from mirror.timeparse import api_param, from_text, to_text
from mirror.windows import align_down

log = logging.getLogger("mirror.api")
T = TypeVar("T")

DEFAULT_BASE_URL = "https://api.fal.ai/v1"
LIST_PATH = "/serverless/requests/by-endpoint"
#: the calls the key made to fal's hosted models: the same parameters and pages, items
#: without ``runner_id`` and ``billable_units`` (no ``expand=billing``)
MODELS_LIST_PATH = "/models/requests/by-endpoint"
#: which operation lists each history (``mirror.schema.HISTORIES``)
LIST_PATHS = {"serverless": LIST_PATH, "model": MODELS_LIST_PATH}
ANALYTICS_PATH = "/serverless/analytics"
#: the same counts for the key's calls to fal's hosted models (any endpoint, no ownership)
MODELS_ANALYTICS_PATH = "/models/analytics"
#: which operation counts each history per hour
ANALYTICS_PATHS = {"serverless": ANALYTICS_PATH, "model": MODELS_ANALYTICS_PATH}
#: analytics buckets asked for per page (the server may give fewer; the cursor is followed)
ANALYTICS_LIMIT = 1000
#: analytics pages followed at most (``FalClient.hourly_counts``)
ANALYTICS_MAX_PAGES = 10_000
_HOUR = timedelta(hours=1)


@dataclass(frozen=True)
class RetryPolicy:
    attempts: int = 8
    base: float = 0.5  # seconds; the n-th retry waits up to base * 2**n (full jitter)
    cap: float = 30.0
    max_retry_after: float = 300.0
    deadline: float = 120.0  # total seconds for one attempt, body included
    connect_timeout: float = 10.0
    read_timeout: float = 60.0
    #: the largest answer body read, in bytes (``MIRROR_MAX_PAGE_BYTES``)
    max_body: int = 64 * 1024 * 1024

    #: first wait after a 429 without Retry-After (equal jitter, doubling per retry)
    throttle_base: float = 0.1

    def backoff(self, retry: int, rng: random.Random) -> float:
        return rng.uniform(0, min(self.cap, self.base * (2**retry)))

    def throttle_backoff(self, retry: int, rng: random.Random) -> float:
        """Equal jitter: never near zero, which would send the call straight back into an
        empty token bucket (bench/backfill_bench.py: the same call refused twice in a row)."""
        b = min(self.cap, self.throttle_base * (2**retry))
        return b / 2 + rng.uniform(0, b / 2)


def check_base_url(url: str) -> str:
    """https anywhere; plain http only to a loopback address (the simulated API)."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(f"base URL {url!r} is not an http(s) URL")
    if parts.scheme == "http" and not is_loopback_host(parts.hostname):
        raise ConfigError(
            f"base URL {url!r} uses plain http to a non-loopback host; the key would travel "
            "unencrypted. Use https (plain http is allowed only for 127.0.0.1/localhost)"
        )
    if parts.username or parts.password:
        raise ConfigError("base URL must not contain credentials")
    return url.rstrip("/")


def is_loopback_host(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def make_http_client(
    env: Mapping[str, str] = os.environ,
    *,
    connect: Callable[[httpcore.NetworkBackend], httpcore.NetworkBackend] | None = None,
) -> httpx.Client:
    """The client the CLI passes in: TLS verified, no redirects, pooled keep-alive, and
    every socket operation bounded by the running attempt's deadline (``_DeadlineBackend``).

    From ``env``, the proxies and CA certificates of ``mirror.netenv`` and nothing else
    (httpx's ``trust_env`` would also send ``.netrc`` credentials in place of the key).
    It carries no credentials: `FalClient` adds the key to each of its own requests.
    ``connect``: wraps the network backend that opens its connections (the media
    downloads' checks of where a connection goes, ``mirror.media_net``).
    """
    net = netenv.from_env(env)
    verify: ssl.SSLContext | bool = net.ssl_context() or True
    limits = httpx.Limits(max_connections=64, max_keepalive_connections=32)
    transport: httpx.BaseTransport = _deadline_transport(limits, verify, connect=connect)
    if net.proxies:
        # ``connect`` guards the connections this machine opens to the hosts themselves; a
        # proxy the user named is reached whatever its address (a company proxy is usually
        # on a private one), and it is the proxy that connects on to the host
        via = {p.url: _deadline_transport(limits, verify, p) for p in net.proxies.values()}
        transport = _ProxyRoutes(net, transport, via)
    for line in net.describe():
        log.info("%s", line)
    return httpx.Client(
        transport=transport,
        follow_redirects=False,
        headers={"User-Agent": f"fal-mirror/{__version__}"},
        trust_env=False,
    )


class _ProxyRefusal(httpx.ProxyError):
    """The proxy refused with ``status``: to a tunnel's CONNECT, or (407) to a plain
    http:// request it was to forward."""

    def __init__(self, message: str, status: int | None) -> None:
        super().__init__(message)
        self.status = status


class _ProxyRoutes(httpx.BaseTransport):
    """Each request through the proxy the environment names for its scheme and host
    (``NetworkEnv.proxy_for``), or directly; the first request to each host logs which."""

    def __init__(
        self,
        net: netenv.NetworkEnv,
        direct: httpx.BaseTransport,
        via: Mapping[str, httpx.BaseTransport],
    ) -> None:
        self._net = net
        self._direct = direct
        self._via = via
        self._told: set[tuple[str, str, int | None]] = set()
        self._lock = threading.Lock()

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        url = request.url
        port = url.port or {"https": 443, "http": 80}.get(url.scheme)
        proxy = self._net.proxy_for(url.scheme, url.host, port)
        self._tell(url, proxy)
        if proxy is None:
            return self._direct.handle_request(request)
        try:
            response = self._via[proxy.url].handle_request(request)
        except httpx.ProxyError as e:  # the proxy's own answer to CONNECT: "407 Proxy ..."
            code = str(e)[:3]
            raise _ProxyRefusal(
                f"the proxy {proxy} answered {e} to a tunnel to {url.netloc.decode('ascii', 'replace')}",
                int(code) if code.isdigit() else None,
            ) from None
        except httpx.ConnectError as e:
            raise httpx.ConnectError(f"through the proxy {proxy}: {e}", request=request) from None
        if response.status_code == 407:  # a plain http:// request the proxy would not forward
            response.close()
            raise _ProxyRefusal(
                f"the proxy {proxy} answered 407 Proxy Authentication Required to a request "
                f"for {url.netloc.decode('ascii', 'replace')}",
                407,
            )
        return response

    def _tell(self, url: httpx.URL, proxy: netenv.Proxy | None) -> None:
        key = (url.scheme, url.host, url.port)
        with self._lock:
            if key in self._told:
                return
            self._told.add(key)
        where = f"{url.scheme}://{url.netloc.decode('ascii', 'replace')}"
        if proxy is not None:
            log.info("%s: through the proxy %s", where, proxy)
        else:
            log.info("%s: directly (%s)", where, self._net.no_proxy_variable)

    def close(self) -> None:
        self._direct.close()
        for t in self._via.values():
            t.close()


# --------------------------------------------------------------------------- the deadline
#
# An attempt must end by its deadline, headers included. httpx's timeouts are per socket
# operation: a server sending its status line and headers a byte a second resets the read
# timeout with every byte, and httpx has no total timeout. A watchdog thread that closes
# the connection would need the connection's socket, which httpx does not expose before
# the headers are in (and a pooled connection is picked inside httpcore). Instead the
# socket operations themselves are bounded: the client's transport uses a network backend
# whose streams cap the timeout of every connect, read and write at the time the current
# attempt has left, and fail at once when none is left. Sync httpx does its I/O in the
# calling thread, so "the current attempt" is a thread-local set by ``FalClient._attempt``
# (a connection made by one worker and reused by another follows whoever uses it). The
# same bound holds for the body; ``_attempt``'s check between chunks remains for clients
# without this transport (tests' mock transports).


class _AttemptDeadline(threading.local):
    #: ``time.monotonic()`` by which this thread's attempt must end; None outside attempts
    at: float | None = None


_attempt_deadline = _AttemptDeadline()


@contextlib.contextmanager
def attempt_deadline(at: float) -> Iterator[None]:
    """Every socket operation of this thread's calls through a `make_http_client` client
    ends by ``at`` (``time.monotonic()``), or raises httpx's timeout."""
    _attempt_deadline.at = at
    try:
        yield
    finally:
        _attempt_deadline.at = None


def _time_left(timeout: float | None, expired: type[Exception]) -> float | None:
    """``timeout`` capped at what is left of this thread's attempt; ``expired`` if nothing."""
    at = _attempt_deadline.at
    if at is None:
        return timeout
    left = at - time.monotonic()
    if left <= 0:
        raise expired("the attempt's deadline has passed")
    return left if timeout is None else min(timeout, left)


class _DeadlineStream(httpcore.NetworkStream):
    def __init__(self, inner: httpcore.NetworkStream) -> None:
        self._inner = inner

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        return self._inner.read(max_bytes, _time_left(timeout, httpcore.ReadTimeout))

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        self._inner.write(buffer, _time_left(timeout, httpcore.WriteTimeout))

    def close(self) -> None:
        self._inner.close()

    def start_tls(
        self,
        ssl_context: Any,
        server_hostname: str | None = None,
        timeout: float | None = None,
    ) -> httpcore.NetworkStream:
        left = _time_left(timeout, httpcore.ConnectTimeout)
        return _DeadlineStream(self._inner.start_tls(ssl_context, server_hostname, left))

    def get_extra_info(self, info: str) -> Any:
        return self._inner.get_extra_info(info)


class _DeadlineBackend(httpcore.NetworkBackend):
    def __init__(self, inner: httpcore.NetworkBackend) -> None:
        self._inner = inner

    def connect_tcp(
        self, host: str, port: int, timeout: float | None = None, *args: Any, **kw: Any
    ) -> httpcore.NetworkStream:
        left = _time_left(timeout, httpcore.ConnectTimeout)
        return _DeadlineStream(self._inner.connect_tcp(host, port, left, *args, **kw))

    def connect_unix_socket(
        self, path: str, timeout: float | None = None, socket_options: Any = None
    ) -> httpcore.NetworkStream:
        left = _time_left(timeout, httpcore.ConnectTimeout)
        return _DeadlineStream(self._inner.connect_unix_socket(path, left, socket_options))

    def sleep(self, seconds: float) -> None:
        self._inner.sleep(seconds)


def _deadline_transport(
    limits: httpx.Limits,
    verify: ssl.SSLContext | bool,
    proxy: netenv.Proxy | None = None,
    *,
    connect: Callable[[httpcore.NetworkBackend], httpcore.NetworkBackend] | None = None,
) -> httpx.HTTPTransport:
    """httpx's own transport (through ``proxy``, if given), its connection pool given the
    deadline-bounded backend (wrapped by ``connect``, if given).

    httpx does not take a network backend as an argument, so it is set on the pool it
    made (still empty: each connection takes the backend when it is opened; a proxy's pool
    opens its connections to the proxy, and tunnels through them, with it too).
    tests/reliability/test_api_faults.py's dripped-headers test fails if this stops working,
    tests/test_proxies.py's for a tunnel through a proxy.
    """
    via = None
    if proxy is not None:
        # TLS to the proxy itself (an https:// proxy) trusts what the API's TLS trusts
        https = proxy.url.lower().startswith("https:")
        ctx = verify if isinstance(verify, ssl.SSLContext) and https else None
        via = httpx.Proxy(proxy.url, ssl_context=ctx)
    try:
        transport = httpx.HTTPTransport(verify=verify, limits=limits, trust_env=False, proxy=via)
    except ImportError:  # socks5:// without httpx's socks extra
        raise ConfigError(
            f"{proxy.variable if proxy else 'the proxy'} names a SOCKS proxy, which needs "
            "httpx's socks extra: pip install 'httpx[socks]'"
        ) from None
    pool = transport._pool
    backend = pool._network_backend
    pool._network_backend = _DeadlineBackend(connect(backend) if connect else backend)
    return transport


# --------------------------------------------------------------------------- analytics


def analytics_params(lo: datetime, hi: datetime) -> list[tuple[str, str]]:
    """The query for request counts per UTC hour of ``[lo, hi)`` (before any cursor)."""
    return [
        ("start", api_param(lo)),
        ("end", api_param(hi)),
        ("timeframe", "hour"),
        ("timezone", "UTC"),
        ("bound_to_timeframe", "false"),
        ("expand", "time_series"),
        ("expand", "request_count"),
        ("limit", str(ANALYTICS_LIMIT)),
    ]


def parse_analytics(data: Any) -> Iterator[tuple[str, int]]:
    """(hour key, request_count summed over the bucket's endpoint ids) per bucket."""
    if not isinstance(data, dict) or not isinstance(data.get("time_series"), list):
        raise BadDataError("the analytics answer has no time_series list")
    for bucket in data["time_series"]:
        if not isinstance(bucket, dict) or not isinstance(bucket.get("bucket"), str):
            raise BadDataError("an analytics bucket has no timestamp")
        try:
            at = from_text(bucket["bucket"])
        except ValueError:
            raise BadDataError(
                f"analytics bucket {bucket['bucket'][:40]!r} is not a time"
            ) from None
        results = bucket.get("results", [])
        if not isinstance(results, list):
            raise BadDataError("an analytics bucket's results are not a list")
        total = 0
        for r in results:
            n = r.get("request_count") if isinstance(r, dict) else None
            if isinstance(n, bool) or not isinstance(n, int) or n < 0:
                raise BadDataError("an analytics result has no request_count")
            total += n
        yield to_text(align_down(at, _HOUR))[:13], total


# --------------------------------------------------------------------------- the client


@dataclass
class CallStats:
    """What a client's calls came to: every attempt, by its answer's HTTP status code
    (``codes``; ``"none"`` when no answer came: a timeout or a failed connection)."""

    attempts: int = 0
    pages: int = 0
    retries: int = 0
    codes: dict[str, int] = field(default_factory=dict)

    def count(self, code: str) -> None:
        self.codes[code] = self.codes.get(code, 0) + 1


class Retryable(Exception):
    """An attempt that failed in a way worth trying again (429, 5xx, a reset, a timeout):
    ``wait`` seconds first if the server said (``Retry-After``), else the policy's backoff;
    ``throttled``: a 429, which the pacer is told of."""

    def __init__(self, reason: str, wait: float | None = None, throttled: bool = False) -> None:
        self.reason = redact(reason)  # it may quote an exception's text, which may quote the key
        self.wait = wait
        self.throttled = throttled


class RetriesExhausted(Exception):
    """Every attempt `with_retries` was allowed failed with `Retryable`; ``last``: why the
    last one did."""

    def __init__(self, attempts: int, last: str) -> None:
        super().__init__(f"{attempts} attempts (last: {last})")
        self.attempts = attempts
        self.last = last


def throttled(headers: httpx.Headers, policy: RetryPolicy) -> Retryable:
    """A 429 as `Retryable`: its ``Retry-After`` (capped by the policy) is the wait."""
    ra = _retry_after(headers.get("retry-after"))
    if ra is not None:
        ra = min(ra, policy.max_retry_after)
    return Retryable(
        f"429 rate limited{f' (Retry-After {ra:.0f}s)' if ra is not None else ''}",
        wait=ra,
        throttled=True,
    )


def with_retries(
    attempt: Callable[[], T],
    *,
    policy: RetryPolicy,
    pacer: Pacer,
    rng: random.Random,
    sleep: Callable[[float], None],
    shown: str,
    attempts: int | None = None,
    on_retry: Callable[[], None] | None = None,
    latency: Callable[[float], float] | None = None,
) -> T:
    """``attempt()`` until it returns, under the pacer, as long as it raises `Retryable`.

    Each attempt waits for the pacer's room and reports its outcome to it; between attempts
    the wait is the server's (``Retry-After``), or the policy's backoff (equal jitter after
    a 429, full jitter otherwise). Any other exception ends it at once. ``attempts``: fewer
    than the policy's; ``on_retry``: called before each wait; ``latency(seconds)``: what
    of an attempt's time the pacer is told (default all of it: a download reports its wait
    for the first byte, not the time its size took). After the last attempt:
    `RetriesExhausted`. ``shown`` names the call in log lines.
    """
    n_attempts = min(attempts, policy.attempts) if attempts else policy.attempts
    last = "no attempt"
    throttle = False
    for n in range(n_attempts):
        pacer.acquire(retry=throttle)
        throttle = False
        t0 = time.monotonic()
        outcome, pause, told = "error", 0.0, False
        try:
            answer = attempt()
            outcome = "ok"
            log.debug("GET %s -> 200 in %.0f ms", shown, (time.monotonic() - t0) * 1000)
            return answer
        except Retryable as r:
            last = r.reason
            if r.wait is not None:
                wait = r.wait
            elif r.throttled:
                wait = policy.throttle_backoff(n, rng)
            else:
                wait = policy.backoff(n, rng)
            if r.throttled:
                outcome, pause, throttle = "throttled", wait, True
                told = r.wait is not None
            log.info("GET %s: %s; retry %d in %.2fs", shown, r.reason, n + 1, wait)
        finally:
            took = time.monotonic() - t0
            pacer.release(
                outcome,
                latency=latency(took) if latency is not None else took,
                pause=pause,
                told=told,
            )
        if n + 1 < n_attempts:
            if on_retry is not None:
                on_retry()
            sleep(wait)
    raise RetriesExhausted(n_attempts, last)


class FalClient:
    def __init__(
        self,
        http: httpx.Client,
        key: str,
        *,
        base_url: str = DEFAULT_BASE_URL,
        retry: RetryPolicy | None = None,
        pacer: Pacer | None = None,
        sleep: Callable[[float], None] = time.sleep,
        seed: int | None = None,
        stats: CallStats | None = None,
    ) -> None:
        """``stats``: where the calls are counted (a caller that outlives the client keeps
        its own, to read after a failed run too); a new one by default."""
        self._http = http
        register_key(key)  # whatever echoes it back is redacted (mirror.redact)
        self._auth = f"Key {key}"
        self.base_url = check_base_url(base_url)
        self.retry = retry or RetryPolicy()
        self.pacer = pacer or Pacer(1)
        #: how the client waits between attempts (``with_sleep``: a copy that waits otherwise)
        self.sleep = sleep
        self._rng = random.Random(seed)
        self._stats_lock = threading.Lock()
        self.stats = stats if stats is not None else CallStats()

    def __repr__(self) -> str:  # never show the key
        return f"FalClient(base_url={self.base_url!r})"

    def with_sleep(self, sleep: Callable[[float], None]) -> FalClient:
        """This client (its connections, pacer, counts, key) waiting between attempts with
        ``sleep`` instead: a run that can be stopped passes a wait that ends when it stops
        (``mirror.walk.Stop.sleep``), and the client it was given is left as it was."""
        other = copy.copy(self)
        other.sleep = sleep
        return other

    def turn(self) -> AbstractContextManager[None]:
        """One worker's turn at a page (its call, decoding it, handing it over), under the
        pacer's limit: no more workers than that are in theirs at once."""
        return self.pacer.turn()

    def backlog(self, *, behind: bool) -> None:
        """From the consumer of the pages: ``behind`` (pages wait for it: fewer calls in
        flight, for now) or not (it waits for pages: more may help); see ``Pacer.backlog``."""
        self.pacer.backlog(behind=behind)

    def list_requests(
        self,
        endpoint_ids: Sequence[str],
        *,
        start: str,
        end: str,
        cursor: str | None = None,
        payloads: bool = True,
        billing: bool = True,
        request_id: str | None = None,
        limit: int = PAGE_LIMIT,
        history: str = "serverless",
    ) -> Page:
        """One page of ``history``'s list (``LIST_PATHS``). The model list has no billing
        to expand: ``billing`` is never asked of it."""
        billing = billing and history == "serverless"
        params: list[tuple[str, str]] = [("endpoint_id", e) for e in endpoint_ids]
        params += [("start", start), ("end", end), ("limit", str(limit))]
        if payloads:
            params.append(("expand", "payloads"))
        if billing:
            params.append(("expand", "billing"))
        if request_id:
            params.append(("request_id", request_id))
        if cursor:
            params.append(("cursor", cursor))
        data, date = self._get(LIST_PATHS[history], params)
        page = parse_page(data, payloads=payloads, billing=billing)
        check_asked(page.rows, endpoint_ids, start, end)
        if date is not None:
            page = replace(page, server_time=date)
        with self._stats_lock:
            self.stats.pages += 1
        return page

    def analytics(
        self,
        endpoint_ids: Sequence[str],
        params: Sequence[tuple[str, str]],
        *,
        attempts: int | None = None,
        path: str = ANALYTICS_PATH,
    ) -> Any:
        """``path``: ``ANALYTICS_PATH`` (the key's own apps) or ``MODELS_ANALYTICS_PATH``."""
        return self.get_json(path, [*(("endpoint_id", e) for e in endpoint_ids), *params], attempts)

    def hourly_counts(
        self,
        target: str,
        lo: datetime,
        hi: datetime,
        *,
        strict: bool,
        max_pages: int = ANALYTICS_MAX_PAGES,
        attempts: int | None = None,
        before_call: Callable[[], None] | None = None,
        path: str = ANALYTICS_PATH,
    ) -> Iterator[tuple[str, int]]:
        """The server's request counts per UTC hour of ``[lo, hi)``, bucket by bucket as the
        pages give them: (``YYYY-MM-DDTHH``, ``request_count`` summed over the bucket's
        endpoint ids). How a bucket given twice adds up is the caller's to say.

        Pages follow ``next_cursor`` until there is none. A cursor that is not a non-empty
        string or was given before, or a page past ``max_pages``: ``strict`` raises
        ``BadDataError`` (verify compares the counts, so they must be whole); otherwise the
        paging ends quietly with the buckets given so far (sync only plans by them). An
        answer that is not analytics is ``BadDataError`` either way. ``before_call`` runs
        before each call (verify stops there, and counts its calls). ``path``: the
        serverless counts, or ``MODELS_ANALYTICS_PATH`` for a model's.
        """
        base = analytics_params(lo, hi)
        cursor: str | None = None
        given: set[str] = set()
        for _ in range(max_pages):
            if before_call is not None:
                before_call()
            params = base + ([("cursor", cursor)] if cursor else [])
            data = self.analytics([target], params, attempts=attempts, path=path)
            yield from parse_analytics(data)
            nxt = data.get("next_cursor")
            if nxt is None:
                return
            if not isinstance(nxt, str) or not nxt or nxt in given:
                if strict:
                    raise BadDataError("the analytics answer repeated or garbled its cursor")
                return
            given.add(nxt)
            cursor = nxt
        if strict:
            raise BadDataError(f"the analytics answer ran over {max_pages} pages")

    def get_json(
        self, path: str, params: Sequence[tuple[str, str]], attempts: int | None = None
    ) -> Any:
        """``attempts``: fewer than the policy's, for a call whose answer is optional."""
        return self._get(path, params, attempts)[0]

    def get_page(
        self,
        path: str,
        params: Sequence[tuple[str, str]],
        decode: Callable[[bytes], Any] = orjson.loads,
    ) -> tuple[Any, datetime | None]:
        """One page of a paged operation (``mirror.billing_api``): the answer as ``decode``
        reads it (a ``ValueError`` for a body that is not JSON) and the API's clock when it
        gave it (``Date``), if it said; counted in ``stats.pages``."""
        answer = self._get(path, params, decode=decode)
        with self._stats_lock:
            self.stats.pages += 1
        return answer

    def _get(
        self,
        path: str,
        params: Sequence[tuple[str, str]],
        attempts: int | None = None,
        decode: Callable[[bytes], Any] = orjson.loads,
    ) -> tuple[Any, datetime | None]:
        """The decoded answer, and the API's clock when it gave it (``Date``), if it said."""
        url = self.base_url + path
        shown = path + "?" + "&".join(f"{k}={v}" for k, v in params)
        try:
            return with_retries(
                lambda: self._attempt(url, params, shown, decode),
                policy=self.retry,
                pacer=self.pacer,
                rng=self._rng,
                sleep=self.sleep,
                shown=shown,
                attempts=attempts,
                on_retry=self._count_retry,
            )
        except RetriesExhausted as e:
            raise ApiUnavailable(
                f"the API did not answer {path} after {e.attempts} attempts (last: {e.last}); "
                "mirror will pick up where it stopped on the next run"
            ) from None

    def _count_retry(self) -> None:
        with self._stats_lock:
            self.stats.retries += 1

    def _attempt(
        self,
        url: str,
        params: Sequence[tuple[str, str]],
        shown: str,
        decode: Callable[[bytes], Any] = orjson.loads,
    ) -> tuple[Any, datetime | None]:
        policy = self.retry
        with self._stats_lock:
            self.stats.attempts += 1
        deadline = time.monotonic() + policy.deadline
        timeout = httpx.Timeout(policy.read_timeout, connect=policy.connect_timeout)
        headers_in = False
        code = "none"  # the answer's status once its headers are in
        _attempt_deadline.at = deadline  # bounds every socket operation (_DeadlineBackend)
        try:
            with self._http.stream(
                "GET",
                url,
                params=list(params),
                headers={"Authorization": self._auth},
                timeout=timeout,
            ) as resp:
                headers_in = True
                code = str(resp.status_code)
                declared = resp.headers.get("content-length")
                if declared and declared.isdigit() and int(declared) > policy.max_body:
                    raise PageTooLarge(
                        f"the API sent a {int(declared)}-byte page, over the {policy.max_body}-byte cap",
                        size=int(declared),
                        cap=policy.max_body,
                    )
                chunks: list[bytes] = []
                size = 0
                for chunk in resp.iter_bytes():
                    size += len(chunk)
                    if size > policy.max_body:
                        # read no further: memory stays bounded by the cap, not by the page
                        raise PageTooLarge(
                            f"the API sent a page over the {policy.max_body}-byte cap",
                            size=None,
                            cap=policy.max_body,
                        )
                    if time.monotonic() > deadline:
                        raise Retryable(f"answer still incomplete after {policy.deadline:g}s")
                    chunks.append(chunk)
                body = b"".join(chunks)
                del chunks  # the page is in memory once, not twice, while it is decoded
                status = resp.status_code
                headers = resp.headers
        except httpx.TimeoutException as e:
            if time.monotonic() >= deadline - 0.05:  # the deadline, not one slow read
                what = "answer" if headers_in else "response headers"
                raise Retryable(f"{what} still incomplete after {policy.deadline:g}s") from None
            raise Retryable(f"timeout ({type(e).__name__})") from None
        except _ProxyRefusal as e:
            if e.status is not None and e.status >= 500:  # the proxy could not reach the API
                raise Retryable(str(e)) from None
            raise ProxyRefused(str(e)) from None
        except httpx.TransportError as e:
            untrusted = _certificate_failure(e)
            if untrusted is not None:
                host = urlsplit(url).hostname
                raise UntrustedCertificate(
                    f"the certificate of {host} does not verify ({untrusted})"
                ) from None
            raise Retryable(f"connection failed ({type(e).__name__}: {e})") from None
        finally:
            _attempt_deadline.at = None
            with self._stats_lock:
                self.stats.count(code)

        if status == 200:
            try:
                return decode(body), _http_date(headers.get("date"))
            except RecursionError:
                raise BadDataError("the API's page nests deeper than JSON allows") from None
            except ValueError as e:  # orjson's JSONDecodeError is one too
                if "depth" in str(e) or "recursion" in str(e):
                    raise BadDataError(
                        f"the API's page nests deeper than JSON allows: {e}"
                    ) from None
                raise Retryable(
                    f"200 with a body that is not JSON ({_describe_body(body, headers)})"
                ) from None
        if status == 429:
            raise throttled(headers, self.retry)
        if status >= 500:
            raise Retryable(f"HTTP {status} ({_describe_body(body, headers)})")
        if status == 407:  # only a proxy asks this: a plain http:// request it forwarded
            raise ProxyRefused("a proxy answered 407 Proxy Authentication Required")
        if 300 <= status < 400:
            where = urlsplit(headers.get("location", "")).netloc or "elsewhere"
            raise ApiError(status, None, f"the API redirected to {where}; not followed", _path(url))
        etype, message = _error_fields(body, headers)
        cls = AuthError if status in (401, 403) else ApiError
        raise cls(status, etype, message, _path(url))


def _certificate_failure(e: BaseException) -> str | None:
    """OpenSSL's reason when ``e`` comes of a certificate that did not verify; else None."""
    seen: BaseException | None = e
    for _ in range(10):  # httpx's error wraps httpcore's, which wraps ssl's
        if seen is None:
            return None
        if isinstance(seen, ssl.SSLCertVerificationError):
            return str(seen.verify_message or seen.reason or "certificate verify failed")
        seen = seen.__cause__ or seen.__context__
    return None


def _path(url: str) -> str:
    return urlsplit(url).path


def _retry_after(value: str | None) -> float | None:
    if not value:
        return None
    v = value.strip()
    try:
        return max(0.0, float(v))
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(v)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def _http_date(value: str | None) -> datetime | None:
    """An HTTP ``Date`` header as a UTC instant; None if absent or not a date with a zone."""
    if not value:
        return None
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        return None
    return when.astimezone(UTC)


def _describe_body(body: bytes, headers: httpx.Headers) -> str:
    ctype = headers.get("content-type", "no content-type").split(";")[0]
    return f"{len(body)} bytes of {ctype}"


def _error_fields(body: bytes, headers: httpx.Headers) -> tuple[str | None, str]:
    """fal's ``{"error": {"type", "message"}}``, or a description of whatever came instead."""
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        data = None
    if isinstance(data, dict) and isinstance(data.get("error"), dict):
        err = data["error"]
        etype = err.get("type")[:100] if isinstance(err.get("type"), str) else None
        msg = err.get("message") if isinstance(err.get("message"), str) else "no message"
        return etype, " ".join(msg.split())[:300]
    if isinstance(data, dict) and isinstance(data.get("detail"), str):
        return None, data["detail"][:300]
    return None, f"non-JSON error body ({_describe_body(body, headers)})"
