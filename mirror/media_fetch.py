"""One file's download: from its URL into the media store, or a reason why not.

`Fetcher.fetch` checks the URL (``mirror.media_net.UrlPolicy``), then asks the host with
the API's retry policy and pacing (``mirror.api.with_retries``): 429s, 5xx answers, resets,
timeouts and truncated bodies are tried again with the same backoff as the API's calls. The
body is streamed into a temporary file and checked while it arrives, not after:

- the per-file cap (`FetchLimits.max_file`): a ``Content-Length`` over it is refused before
  a byte is read, and a body that runs past it (an endless one too) is cut there;
- the run's byte budget (`Budget`): a file that would take the run past it is stopped and
  left for the next run;
- the declared size (the payload's ``file_size``): a body longer than it is cut, and one
  of another length is not kept (a file that lies about its size is not the file);
- the deadline (`FetchLimits.deadline`): the whole download, redirects and retries
  included, ends by it, whatever the server trickles; a file that does not finish in time
  is abandoned and tried again by the next run.

Only then is the file renamed to its hash's name (``mirror.media_files``). Each redirect is
followed by hand, its target checked like the first URL. 404 and 410, and a refusal of a
signed URL whose expiry has passed, mean the file is gone: fal deletes expired files for
good, so that is recorded as a state (a tombstone), not an error.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import random
import threading
import time
from collections.abc import Callable
from dataclasses import KW_ONLY, dataclass, field
from datetime import UTC, datetime, timedelta
from email.utils import parsedate_to_datetime
from pathlib import Path
from urllib.parse import parse_qsl, urlsplit

import httpx

from mirror.api import (
    RetriesExhausted,
    Retryable,
    RetryPolicy,
    attempt_deadline,
    throttled,
    with_retries,
)
from mirror.media_files import MediaDir
from mirror.media_net import Refused, UrlPolicy
from mirror.pacing import Pacer

#: the default per-file cap: 512 MiB (fal's longest videos are far smaller)
DEFAULT_MAX_FILE = 512 * 1024 * 1024
#: the default deadline of one file's download, retries included
DEFAULT_DEADLINE = 900.0
MAX_REDIRECTS = 5
_REDIRECTS = (301, 302, 303, 307, 308)
_CHUNK = 64 * 1024


@dataclass(frozen=True)
class FetchLimits:
    max_file: int = DEFAULT_MAX_FILE
    deadline: float = DEFAULT_DEADLINE


class Budget:
    """The bytes a run may still download (None: no limit), taken as they arrive by every
    download at once."""

    def __init__(self, limit: int | None) -> None:
        self.limit = limit
        self.used = 0
        self.exhausted = False
        self._lock = threading.Lock()

    def left(self) -> int | None:
        with self._lock:
            return None if self.limit is None else self.limit - self.used

    def take(self, n: int) -> bool:
        """Count ``n`` more bytes; False (and nothing counted) if that passes the limit."""
        with self._lock:
            if self.limit is not None and self.used + n > self.limit:
                self.exhausted = True
                return False
            self.used += n
            return True


@dataclass(frozen=True)
class Fetched:
    """What became of one URL: ``archived`` (``sha256``, ``size``, ``content_type``),
    ``gone``, ``failed`` (try again next run), ``refused`` (unsafe or over a limit), or
    ``deferred`` (not tried or stopped: the run's byte budget); ``reason`` says why."""

    outcome: str
    sha256: str | None = None
    size: int | None = None
    content_type: str | None = None
    reason: str | None = None
    #: whether a host was contacted (a refusal by the URL alone contacts none)
    contacted: bool = True


class _Gone(Exception):
    pass


class _Failed(Exception):
    pass


class _OverBudget(Exception):
    pass


def signed_expiry(url: str) -> datetime | None:
    """When a signed URL stops working, if its query says: ``Expires`` (seconds since the
    epoch: CloudFront, GCS v2, the simulated CDN), ``X-Amz-Date`` + ``X-Amz-Expires``,
    ``X-Goog-Date`` + ``X-Goog-Expires``, or ``se`` (Azure)."""
    params = {k.lower(): v for k, v in parse_qsl(urlsplit(url).query)}
    try:
        if params.get("expires", "").isdigit():
            return datetime.fromtimestamp(int(params["expires"]), UTC)
        for prefix in ("x-amz-", "x-goog-"):
            date, seconds = params.get(prefix + "date"), params.get(prefix + "expires")
            if date and seconds and seconds.isdigit():
                start = datetime.strptime(date, "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC)
                return start + timedelta(seconds=int(seconds))
        if "se" in params:
            return datetime.fromisoformat(params["se"].replace("Z", "+00:00")).astimezone(UTC)
    except (ValueError, OverflowError, OSError):
        return None
    return None


def _server_now(resp: httpx.Response) -> datetime:
    """The host's clock from its ``Date`` header (the signature's clock), else ours."""
    try:
        when = parsedate_to_datetime(resp.headers.get("date", ""))
    except (TypeError, ValueError, IndexError):
        when = None
    if when is None or when.tzinfo is None:
        return datetime.now(UTC)
    return when.astimezone(UTC)


def _content_type(resp: httpx.Response) -> str | None:
    value = resp.headers.get("content-type", "").split(";")[0].strip().lower()
    return value if value and len(value) <= 255 and value.isprintable() else None


def _mib(n: int) -> str:
    return f"{n / 1048576:.1f} MiB" if n >= 1048576 else f"{n} bytes"


@dataclass(eq=False)
class Fetcher:
    """Downloads into one `MediaDir` through one key-less client (``media_net.media_client``);
    thread-safe: several workers share it."""

    http: httpx.Client
    files: MediaDir
    policy: UrlPolicy
    _: KW_ONLY
    retry: RetryPolicy
    pacer: Pacer
    limits: FetchLimits
    budget: Budget
    sleep: Callable[[float], None] = time.sleep
    _rng: random.Random = field(default_factory=random.Random, init=False, repr=False)
    _ttfb: threading.local = field(default_factory=threading.local, init=False, repr=False)

    def fetch(
        self, url: str, declared_size: int | None = None, expect_sha: str | None = None
    ) -> Fetched:
        """Download ``url`` into the store; never raises for what the host or URL does.

        ``expect_sha``: the bytes must hash to it (a repair), else nothing is kept."""
        try:
            self.policy.check(url)
        except Refused as e:
            return Fetched("refused", reason=str(e), contacted=False)
        if declared_size is not None and declared_size > self.limits.max_file:
            return Fetched(
                "refused",
                reason=f"declared {_mib(declared_size)}, over the per-file cap of "
                f"{_mib(self.limits.max_file)}",
                contacted=False,
            )
        deadline = time.monotonic() + self.limits.deadline
        try:
            return with_retries(
                lambda: self._attempt(url, declared_size, expect_sha, deadline),
                policy=self.retry,
                pacer=self.pacer,
                rng=self._rng,
                sleep=self._sleep_within(deadline),
                shown=urlsplit(url).path[-60:],
                latency=lambda took: getattr(self._ttfb, "seconds", took),
            )
        except RetriesExhausted as e:
            return Fetched("failed", reason=f"no answer after {e.attempts} attempts ({e.last})")
        except Refused as e:
            return Fetched("refused", reason=str(e))
        except _Gone as e:
            return Fetched("gone", reason=str(e))
        except _Failed as e:
            return Fetched("failed", reason=str(e))
        except _OverBudget:
            return Fetched("deferred", reason="the run's byte budget (--max-bytes) is spent")

    def _sleep_within(self, deadline: float) -> Callable[[float], None]:
        def sleep(seconds: float) -> None:
            if time.monotonic() + seconds >= deadline:
                raise _Failed(self._late())
            self.sleep(seconds)

        return sleep

    def _late(self) -> str:
        return f"not finished within {self.limits.deadline:g}s; tried again next run"

    def _attempt(
        self, url: str, declared: int | None, expect_sha: str | None, deadline: float
    ) -> Fetched:
        if time.monotonic() >= deadline:
            raise _Failed(self._late())
        t0 = time.monotonic()
        current = url
        for _ in range(MAX_REDIRECTS + 1):
            try:
                with (
                    attempt_deadline(deadline),
                    self.http.stream(
                        "GET",
                        current,
                        headers={"Accept-Encoding": "identity"},
                        timeout=httpx.Timeout(
                            self.retry.read_timeout, connect=self.retry.connect_timeout
                        ),
                    ) as resp,
                ):
                    self._ttfb.seconds = time.monotonic() - t0
                    status = resp.status_code
                    if status in _REDIRECTS:
                        location = resp.headers.get("location")
                        if not location:
                            raise _Failed(f"HTTP {status} without a Location")
                        try:
                            target = str(resp.url.join(location))
                        except (httpx.InvalidURL, ValueError):
                            raise Refused("a redirect to an invalid URL") from None
                        try:
                            current = self.policy.check(target)
                        except Refused as e:
                            raise Refused(f"redirected: {e}") from None
                        continue
                    if status == 200:
                        return self._save(resp, declared, expect_sha, deadline)
                    self._judge(resp, current)
            except httpx.TimeoutException as e:
                if time.monotonic() >= deadline - 0.05:
                    raise _Failed(self._late()) from None
                raise Retryable(f"timeout ({type(e).__name__})") from None
            except httpx.TransportError as e:
                raise Retryable(f"connection failed ({type(e).__name__})") from None
        raise _Failed(f"more than {MAX_REDIRECTS} redirects")

    def _judge(self, resp: httpx.Response, url: str) -> None:
        """A status other than 200 or a redirect: raises what it means."""
        status = resp.status_code
        if status in (404, 410):
            raise _Gone(f"HTTP {status}")
        if status == 429:
            raise throttled(resp.headers, self.retry)
        if status >= 500:
            raise Retryable(f"HTTP {status}")
        expiry = signed_expiry(url)
        if status in (400, 401, 403) and expiry is not None and expiry <= _server_now(resp):
            raise _Gone(f"HTTP {status}: the signed URL expired at {expiry:%Y-%m-%dT%H:%M:%SZ}")
        raise _Failed(f"HTTP {status}")

    def _save(
        self, resp: httpx.Response, declared: int | None, expect_sha: str | None, deadline: float
    ) -> Fetched:
        cap = self.limits.max_file
        raw_length = resp.headers.get("content-length", "")
        length = int(raw_length) if raw_length.isdigit() else None
        if length is not None and length > cap:
            raise Refused(f"{_mib(length)} is over the per-file cap of {_mib(cap)}")
        if length is not None and declared is not None and length != declared:
            raise _Failed(f"the host sends {length} bytes, the payload declares {declared}")
        fd, tmp = self.files.new_temp()
        try:
            sha, size = self._stream(resp, fd, cap, declared, deadline)
            if length is not None and size != length:
                raise Retryable(f"the body ended at {size} of {length} bytes")
            if declared is not None and size != declared:
                raise _Failed(f"{size} bytes arrived, the payload declares {declared}")
            if expect_sha is not None and sha != expect_sha:
                raise _Failed("the URL now serves other bytes than the ones archived")
            self.files.keep(tmp, sha)
        except BaseException:
            _remove(tmp)
            raise
        return Fetched("archived", sha256=sha, size=size, content_type=_content_type(resp))

    def _stream(
        self, resp: httpx.Response, fd: int, cap: int, declared: int | None, deadline: float
    ) -> tuple[str, int]:
        h = hashlib.sha256()
        size = 0
        with os.fdopen(fd, "wb") as f:
            for chunk in resp.iter_bytes(_CHUNK):
                size += len(chunk)
                if size > cap:
                    raise Refused(f"the body runs past the per-file cap of {_mib(cap)}")
                if declared is not None and size > declared:
                    raise _Failed(f"the body runs past the {declared} bytes the payload declares")
                if not self.budget.take(len(chunk)):
                    raise _OverBudget
                if time.monotonic() > deadline:
                    raise _Failed(self._late())
                h.update(chunk)
                f.write(chunk)
        return h.hexdigest(), size


def _remove(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
