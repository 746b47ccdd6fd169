"""The fal Platform API client: one ``httpx.Client`` passed in, retries, and strict pages.

``FalClient.list_requests`` returns a validated ``Page`` of rows ready for the store (what a
row is and how a page is checked: ``mirror.records``), or raises one of ``mirror.errors``:

- 429, 5xx, connection errors, timeouts, truncated or non-JSON bodies are retried with
  exponential backoff and full jitter (``Retry-After`` honoured when present), then
  ``ApiUnavailable``;
- 400/401/403/404 and other 4xx fail at once (``ApiError`` / ``AuthError``) with the API's
  ``error.message``, or a short description of a non-JSON (e.g. proxy HTML) body;
- a body over the size cap, nesting beyond the JSON depth limit, wrong types, a missing
  ``request_id``, ``has_more`` without a cursor, a timestamp that is not a real time
  between 2000 and 2100, a status code outside 100-599, a duration or unit count that is
  negative or past its bound, an ``ended_at`` before its ``started_at``, or a row the call
  did not ask for (another endpoint, outside the window) raise ``BadDataError`` at once:
  the page is never handed to the store;
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

import copy
import ipaddress
import logging
import random
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from email.utils import parsedate_to_datetime
from typing import Any
from urllib.parse import urlsplit

import httpcore
import httpx
import orjson

from mirror import __version__
from mirror.errors import ApiError, ApiUnavailable, AuthError, BadDataError, ConfigError
from mirror.pacing import Pacer
from mirror.records import PAGE_LIMIT, Page, check_asked, parse_page
from mirror.redact import redact, register_key
from mirror.timeparse import api_param, from_text, to_text
from mirror.windows import align_down

log = logging.getLogger("mirror.api")

DEFAULT_BASE_URL = "https://api.fal.ai/v1"
LIST_PATH = "/serverless/requests/by-endpoint"
ANALYTICS_PATH = "/serverless/analytics"
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
    if parts.scheme == "http" and not _is_loopback(parts.hostname):
        raise ConfigError(
            f"base URL {url!r} uses plain http to a non-loopback host; the key would travel "
            "unencrypted. Use https (plain http is allowed only for 127.0.0.1/localhost)"
        )
    if parts.username or parts.password:
        raise ConfigError("base URL must not contain credentials")
    return url.rstrip("/")


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def make_http_client() -> httpx.Client:
    """The client the CLI passes in: TLS verified, no redirects, pooled keep-alive, and
    every socket operation bounded by the running attempt's deadline (``_DeadlineBackend``)."""
    return httpx.Client(
        transport=_deadline_transport(
            httpx.Limits(max_connections=64, max_keepalive_connections=32)
        ),
        follow_redirects=False,
        headers={"User-Agent": f"fal-mirror/{__version__}"},
        trust_env=False,
    )


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
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Any = None,
    ) -> httpcore.NetworkStream:
        left = _time_left(timeout, httpcore.ConnectTimeout)
        return _DeadlineStream(
            self._inner.connect_tcp(host, port, left, local_address, socket_options)
        )

    def connect_unix_socket(
        self, path: str, timeout: float | None = None, socket_options: Any = None
    ) -> httpcore.NetworkStream:
        left = _time_left(timeout, httpcore.ConnectTimeout)
        return _DeadlineStream(self._inner.connect_unix_socket(path, left, socket_options))

    def sleep(self, seconds: float) -> None:
        self._inner.sleep(seconds)


def _deadline_transport(limits: httpx.Limits) -> httpx.HTTPTransport:
    """httpx's own transport, its connection pool given the deadline-bounded backend.

    httpx does not take a network backend as an argument, so it is set on the pool it
    made (still empty: each connection takes the backend when it is opened).
    tests/reliability/test_api_faults.py's dripped-headers test fails if this stops working.
    """
    transport = httpx.HTTPTransport(verify=True, limits=limits, trust_env=False)
    pool = transport._pool
    pool._network_backend = _DeadlineBackend(pool._network_backend)
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
    attempts: int = 0
    pages: int = 0
    retries: int = 0


class _Retry(Exception):
    def __init__(self, reason: str, wait: float | None = None, throttled: bool = False) -> None:
        self.reason = redact(reason)  # it may quote an exception's text, which may quote the key
        self.wait = wait
        self.throttled = throttled


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
    ) -> None:
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
        self.stats = CallStats()

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
    ) -> Page:
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
        data, date = self._get(LIST_PATH, params)
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
    ) -> Any:
        return self.get_json(
            ANALYTICS_PATH, [*(("endpoint_id", e) for e in endpoint_ids), *params], attempts
        )

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
    ) -> Iterator[tuple[str, int]]:
        """The server's request counts per UTC hour of ``[lo, hi)``, bucket by bucket as the
        pages give them: (``YYYY-MM-DDTHH``, ``request_count`` summed over the bucket's
        endpoint ids). How a bucket given twice adds up is the caller's to say.

        Pages follow ``next_cursor`` until there is none. A cursor that is not a non-empty
        string or was given before, or a page past ``max_pages``: ``strict`` raises
        ``BadDataError`` (verify compares the counts, so they must be whole); otherwise the
        paging ends quietly with the buckets given so far (sync only plans by them). An
        answer that is not analytics is ``BadDataError`` either way. ``before_call`` runs
        before each call (verify stops there, and counts its calls).
        """
        base = analytics_params(lo, hi)
        cursor: str | None = None
        given: set[str] = set()
        for _ in range(max_pages):
            if before_call is not None:
                before_call()
            params = base + ([("cursor", cursor)] if cursor else [])
            data = self.analytics([target], params, attempts=attempts)
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

    def _get(
        self, path: str, params: Sequence[tuple[str, str]], attempts: int | None = None
    ) -> tuple[Any, datetime | None]:
        """The decoded answer, and the API's clock when it gave it (``Date``), if it said."""
        url = self.base_url + path
        shown = path + "?" + "&".join(f"{k}={v}" for k, v in params)
        policy = self.retry
        n_attempts = min(attempts, policy.attempts) if attempts else policy.attempts
        last = "no attempt"
        throttled = False
        for attempt in range(n_attempts):
            self.pacer.acquire(retry=throttled)
            throttled = False
            t0 = time.monotonic()
            outcome, pause = "error", 0.0
            try:
                answer = self._attempt(url, params, shown)
                outcome = "ok"
                log.debug("GET %s -> 200 in %.0f ms", shown, (time.monotonic() - t0) * 1000)
                return answer
            except _Retry as r:
                last = r.reason
                if r.wait is not None:
                    wait = r.wait
                elif r.throttled:
                    wait = policy.throttle_backoff(attempt, self._rng)
                else:
                    wait = policy.backoff(attempt, self._rng)
                if r.throttled:
                    outcome, pause, throttled = "throttled", wait, True
                log.info("GET %s: %s; retry %d in %.2fs", shown, r.reason, attempt + 1, wait)
            finally:
                self.pacer.release(
                    outcome,
                    latency=time.monotonic() - t0,
                    pause=pause,
                    retry=throttled and attempt + 1 < n_attempts,
                )
            if attempt + 1 < n_attempts:
                with self._stats_lock:
                    self.stats.retries += 1
                self.sleep(wait)
        raise ApiUnavailable(
            f"the API did not answer {path} after {n_attempts} attempts (last: {last}); "
            "mirror will pick up where it stopped on the next run"
        )

    def _attempt(
        self, url: str, params: Sequence[tuple[str, str]], shown: str
    ) -> tuple[Any, datetime | None]:
        policy = self.retry
        with self._stats_lock:
            self.stats.attempts += 1
        deadline = time.monotonic() + policy.deadline
        timeout = httpx.Timeout(policy.read_timeout, connect=policy.connect_timeout)
        headers_in = False
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
                declared = resp.headers.get("content-length")
                if declared and declared.isdigit() and int(declared) > policy.max_body:
                    raise BadDataError(
                        f"the API sent a {int(declared)}-byte page, over the {policy.max_body}-byte cap"
                    )
                chunks: list[bytes] = []
                size = 0
                for chunk in resp.iter_bytes():
                    size += len(chunk)
                    if size > policy.max_body:
                        raise BadDataError(
                            f"the API sent a page over the {policy.max_body}-byte cap"
                        )
                    if time.monotonic() > deadline:
                        raise _Retry(f"answer still incomplete after {policy.deadline:g}s")
                    chunks.append(chunk)
                body = b"".join(chunks)
                status = resp.status_code
                headers = resp.headers
        except httpx.TimeoutException as e:
            if time.monotonic() >= deadline - 0.05:  # the deadline, not one slow read
                what = "answer" if headers_in else "response headers"
                raise _Retry(f"{what} still incomplete after {policy.deadline:g}s") from None
            raise _Retry(f"timeout ({type(e).__name__})") from None
        except httpx.TransportError as e:
            raise _Retry(f"connection failed ({type(e).__name__}: {e})") from None
        finally:
            _attempt_deadline.at = None

        if status == 200:
            try:
                return orjson.loads(body), _http_date(headers.get("date"))
            except orjson.JSONDecodeError as e:
                if "depth" in str(e) or "recursion" in str(e):
                    raise BadDataError(
                        f"the API's page nests deeper than JSON allows: {e}"
                    ) from None
                raise _Retry(
                    f"200 with a body that is not JSON ({_describe_body(body, headers)})"
                ) from None
        if status == 429:
            return self._raise_throttled(headers)
        if status >= 500:
            raise _Retry(f"HTTP {status} ({_describe_body(body, headers)})")
        if 300 <= status < 400:
            where = urlsplit(headers.get("location", "")).netloc or "elsewhere"
            raise ApiError(status, None, f"the API redirected to {where}; not followed", _path(url))
        etype, message = _error_fields(body, headers)
        cls = AuthError if status in (401, 403) else ApiError
        raise cls(status, etype, message, _path(url))

    def _raise_throttled(self, headers: httpx.Headers) -> Any:
        ra = _retry_after(headers.get("retry-after"))
        if ra is not None:
            ra = min(ra, self.retry.max_retry_after)
        raise _Retry(
            f"429 rate limited{f' (Retry-After {ra:.0f}s)' if ra is not None else ''}",
            wait=ra,
            throttled=True,
        )


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
