"""A simulated fal media CDN on loopback: the files the simulated requests refer to.

fal's outputs are files on its media hosts, referenced from ``json_output`` as ``File``
objects (docs/fal-api.md, "Output files"). `SimulatedCDN` serves such files over real HTTP
on 127.0.0.1 with what makes archiving them hard, file by file (`CdnFile`): sizes and
content types, files deleted at a known instant of the world's clock (then 404, as fal's
expired files), private files behind signed URLs (``?Expires=…&Signature=…``: 403 once
expired or when the signature is wrong), payloads that lie about a file's size, bodies
that drip slowly, that break off the first times they are asked for, that never end or
that have no length, redirects, fixed error statuses; and, across all files, seeded 5xx,
429 and connection resets.

Bytes are made from each file's seed, 64 KiB at a time, so a file of any size costs no
memory; an ``image/png`` starts with a real small PNG (a browser shows it). `content` and
`sha256` give the true bytes, for tests.

`SimulatedCDN.log` records every request: path, status, whether an ``Authorization``
header came, and whether any *canary* (a secret the test passes, such as the API key) was
anywhere in the request line or headers, never the values themselves.

`attach_media` gives some requests of a `World` outputs whose files this CDN serves, with
the mix of behaviours a `MediaMix` says; the rest of the world is left as it was.
"""

from __future__ import annotations

import hashlib
import hmac
import random
import socket
import struct
import threading
import time
import zlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

from mirror.simulator.serving import Served
from mirror.simulator.world import World, real_clock

__all__ = ["Attached", "CdnFile", "CdnHit", "MediaMix", "SimulatedCDN", "attach_media"]

BLOCK = 64 * 1024
_SECRET = b"simulated-cdn-signing-key"
_EXT = {"image/png": "png", "image/jpeg": "jpeg", "video/mp4": "mp4", "audio/mpeg": "mp3"}


@dataclass(frozen=True)
class CdnFile:
    """One file of the CDN and how it behaves. ``name`` is its path below ``/files/``."""

    name: str
    size: int
    content_type: str = "image/png"
    seed: int = 0
    #: deleted at this instant of the CDN's clock: 404 from then on
    expires_at: datetime | None = None
    #: private: served only through a signed URL, whose signature lasts until then
    signed_until: datetime | None = None
    #: what payloads declare as ``file_size`` (None: the true size)
    declared_size: int | None = None
    #: seconds between pieces of 1 KiB (a slow body)
    drip: float = 0.0
    #: the first this many GETs send half the body under the full Content-Length, then close
    truncate_first: int = 0
    #: no Content-Length (the body ends when the connection closes)
    no_length: bool = False
    #: a body that never ends (no Content-Length)
    endless: bool = False
    #: answer 302 to this location instead
    redirect_to: str | None = None
    #: always answer this status (with a short text body)
    status: int | None = None


@dataclass(frozen=True)
class CdnHit:
    """One request as the CDN saw it; no header value is kept."""

    path: str
    status: int | None
    authorization_present: bool
    canary_seen: bool
    header_names: tuple[str, ...]


@dataclass(frozen=True)
class MediaMix:
    """What `attach_media` gives the requests it touches (fractions of their files)."""

    min_size: int = 2_000
    max_size: int = 60_000
    #: already deleted (404: gone)
    p_expired: float = 0.05
    #: deleted at a known instant within the next hour of the clock
    p_expiring: float = 0.05
    #: private, behind a signed URL (a third of them already expired)
    p_signed: float = 0.1
    #: the payload's file_size is wrong
    p_lying: float = 0.02
    #: the first GET breaks off half-way
    p_truncated: float = 0.05


def png(seed: int, side: int = 16) -> bytes:
    """A small solid-colour PNG, its colour from ``seed``."""
    rng = random.Random(seed)
    pixel = bytes(rng.randrange(40, 230) for _ in range(3))
    raw = b"".join(b"\x00" + pixel * side for _ in range(side))

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    header = struct.pack(">IIBBBBB", side, side, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(raw))
        + chunk(b"IEND", b"")
    )


def _blocks(f: CdnFile) -> Iterator[bytes]:
    """The file's bytes, 64 KiB at a time (forever when ``endless``)."""
    head = png(f.seed) if f.content_type == "image/png" else b""
    k = 0
    sent = 0
    while f.endless or sent < f.size:
        n = BLOCK if f.endless else min(BLOCK, f.size - sent)
        block = random.Random(f.seed * 1_000_003 + k).randbytes(n)
        if k == 0 and head:
            block = (head + block[len(head) :])[:n]
        yield block
        sent += n
        k += 1


def _signature(name: str, expires: int) -> str:
    return hmac.new(_SECRET, f"{name}:{expires}".encode(), hashlib.sha256).hexdigest()[:32]


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    cdn: SimulatedCDN

    def handle_error(self, request: Any, client_address: Any) -> None:
        """Quiet: clients hang up, on purpose too (a download cut at its cap)."""


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "fal-cdn-sim/1.0"
    sys_version = ""
    disable_nagle_algorithm = True
    server: _Server
    #: whether this request is in the log yet, and how it is put there (`SimulatedCDN.serve`)
    logged = False
    log_hit: Callable[[int | None], None]

    def do_GET(self) -> None:
        self.server.cdn.serve(self, "GET")

    def do_HEAD(self) -> None:
        self.server.cdn.serve(self, "HEAD")

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet: the log is `SimulatedCDN.log`."""


class SimulatedCDN(Served):
    """The CDN over HTTP on loopback; a context manager, like ``SimulatedAPI``.

    ``clock``: the CDN's time (the world's, for expiries at known instants); ``latency``:
    seconds before each answer; ``canaries``: secrets whose appearance in a request is
    logged; ``p_5xx``, ``p_429``, ``p_reset``: faults per request, from ``seed``.
    """

    what = "the simulated CDN"

    def __init__(
        self,
        *,
        clock: Callable[[], datetime] = real_clock,
        latency: float = 0.0,
        canaries: Sequence[str] = (),
        seed: int = 0,
        p_5xx: float = 0.0,
        p_429: float = 0.0,
        p_reset: float = 0.0,
        host: str = "127.0.0.1",
        port: int = 0,
    ) -> None:
        if host not in ("127.0.0.1", "localhost"):
            raise ValueError(f"refusing to bind the simulated CDN to {host!r}: loopback only")
        self.clock = clock
        self.latency = latency
        self.canaries = tuple(c for c in canaries if c)
        self.p_5xx, self.p_429, self.p_reset = p_5xx, p_429, p_reset
        self._rng = random.Random(seed)
        self._host, self._port = host, port
        self._files: dict[str, CdnFile] = {}
        self._gets: dict[str, int] = {}
        self._lock = threading.Lock()
        self._log: list[CdnHit] = []
        self._arrivals: list[str] = []

    # -- lifecycle ------------------------------------------------------------------------

    def bind(self) -> _Server:
        httpd = _Server((self._host, self._port), _Handler)
        httpd.cdn = self
        return httpd

    @property
    def base_url(self) -> str:
        return f"http://{self._host}:{self.port}"

    # -- files ----------------------------------------------------------------------------

    def add(self, f: CdnFile) -> CdnFile:
        with self._lock:
            self._files[f.name] = f
        return f

    def file(self, name: str) -> CdnFile:
        return self._files[name]

    def url(self, name: str) -> str:
        """The URL payloads carry for the file: signed when it is private."""
        f = self._files[name]
        url = f"{self.base_url}/files/{name}"
        if f.signed_until is not None:
            expires = int(f.signed_until.timestamp())
            url += f"?Expires={expires}&Signature={_signature(name, expires)}"
        return url

    def file_object(self, name: str, file_name: str | None = None) -> dict[str, Any]:
        """fal's ``File`` object for the file, as an output would carry it."""
        f = self._files[name]
        return {
            "url": self.url(name),
            "content_type": f.content_type,
            "file_name": file_name or name.rsplit("/", 1)[-1],
            "file_size": f.size if f.declared_size is None else f.declared_size,
        }

    def content(self, name: str) -> bytes:
        """The file's true bytes (not for endless files)."""
        return b"".join(_blocks(self._files[name]))

    def sha256(self, name: str) -> str:
        h = hashlib.sha256()
        for block in _blocks(self._files[name]):
            h.update(block)
        return h.hexdigest()

    @property
    def log(self) -> list[CdnHit]:
        with self._lock:
            return list(self._log)

    # -- HTTP -----------------------------------------------------------------------------

    @property
    def arrivals(self) -> list[str]:
        """The path of every request, logged as it arrives (`log` has it once answered)."""
        with self._lock:
            return list(self._arrivals)

    def serve(self, handler: _Handler, method: str) -> None:
        raw = handler.requestline + "\n" + str(handler.headers)
        split = urlsplit(handler.path)
        names = tuple(k.lower() for k in handler.headers)
        with self._lock:
            self._arrivals.append(split.path)

        def log(status: int | None) -> None:
            """Logged before any byte of the answer goes out: a client that has its answer
            finds its request in the log."""
            if handler.logged:
                return
            handler.logged = True
            hit = CdnHit(
                path=split.path,
                status=status,
                authorization_present="authorization" in names,
                canary_seen=any(c in raw for c in self.canaries),
                header_names=names,
            )
            with self._lock:
                self._log.append(hit)

        handler.logged = False
        handler.log_hit = log
        try:
            if self.latency:
                time.sleep(self.latency)
            with self._lock:
                roll = self._rng.random()
            if roll < self.p_reset:
                log(None)
                handler.close_connection = True
                handler.connection.setsockopt(
                    socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0)
                )
                return
            if roll < self.p_reset + self.p_5xx:
                self._text(handler, method, 503, "upstream unavailable")
                return
            if roll < self.p_reset + self.p_5xx + self.p_429:
                self._text(handler, method, 429, "slow down")
                return
            self._answer(handler, method, split.path, parse_qs(split.query))
        except OSError:
            handler.close_connection = True
        finally:
            log(None)

    def _answer(
        self, handler: _Handler, method: str, path: str, query: dict[str, list[str]]
    ) -> int:
        name = path.removeprefix("/files/") if path.startswith("/files/") else None
        f = self._files.get(name) if name else None
        now = self.clock()
        if f is None or (f.expires_at is not None and now >= f.expires_at):
            return self._text(handler, method, 404, "not found")
        if f.signed_until is not None:
            expires = (query.get("Expires") or [""])[-1]
            signature = (query.get("Signature") or [""])[-1]
            good = expires.isdigit() and hmac.compare_digest(
                signature, _signature(f.name, int(expires))
            )
            if not good:
                return self._text(handler, method, 403, "AccessDenied: bad signature")
            if datetime.fromtimestamp(int(expires), UTC) <= now:
                return self._text(handler, method, 403, "AccessDenied: Request has expired")
        if f.status is not None:
            return self._text(handler, method, f.status, "refused")
        if f.redirect_to is not None:
            self._head(handler, 302, [("Location", f.redirect_to), ("Content-Length", "0")])
            return 302
        with self._lock:
            gets = self._gets[f.name] = self._gets.get(f.name, 0) + 1
        truncate = gets <= f.truncate_first
        headers = [("Content-Type", f.content_type)]
        if f.no_length or f.endless:
            handler.close_connection = True
            headers.append(("Connection", "close"))
        else:
            headers.append(("Content-Length", str(f.size)))
        self._head(handler, 200, headers)
        if method == "HEAD":
            return 200
        limit = f.size // 2 if truncate else None
        sent = 0
        for block in _blocks(f):
            if limit is not None and sent + len(block) > limit:
                handler.wfile.write(block[: limit - sent])
                handler.close_connection = True
                break
            if f.drip:
                for k in range(0, len(block), 1024):
                    time.sleep(f.drip)
                    handler.wfile.write(block[k : k + 1024])
            else:
                handler.wfile.write(block)
            sent += len(block)
        return 200

    def _head(self, handler: _Handler, status: int, headers: list[tuple[str, str]]) -> None:
        handler.log_hit(status)
        handler.send_response_only(status)
        handler.send_header("Server", handler.server_version)
        handler.send_header("Date", format_datetime(self.clock().astimezone(UTC), usegmt=True))
        for name, value in headers:
            handler.send_header(name, value)
        handler.end_headers()

    def _text(self, handler: _Handler, method: str, status: int, text: str) -> int:
        body = text.encode()
        self._head(
            handler,
            status,
            [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))],
        )
        if method != "HEAD":
            handler.wfile.write(body)
        return status


# --------------------------------------------------------------------------- media worlds


@dataclass
class _Draw:
    rng: random.Random
    cdn: SimulatedCDN
    mix: MediaMix
    now: datetime
    made: list[str] = field(default_factory=list)

    def file(self, kind: str, content_type: str) -> dict[str, Any]:
        rng, mix = self.rng, self.mix
        seed = rng.getrandbits(48)
        name = f"{kind}/{seed:012x}.{_EXT.get(content_type, 'bin')}"
        f = CdnFile(name=name, size=rng.randint(mix.min_size, mix.max_size),
                    content_type=content_type, seed=seed)  # fmt: skip
        roll = rng.random()
        edges = [mix.p_expired, mix.p_expiring, mix.p_signed, mix.p_lying, mix.p_truncated]
        bounds = [sum(edges[: i + 1]) for i in range(len(edges))]
        if roll < bounds[0]:
            f = replace(f, expires_at=self.now - timedelta(hours=rng.randint(1, 48)))
        elif roll < bounds[1]:
            f = replace(f, expires_at=self.now + timedelta(minutes=rng.randint(5, 60)))
        elif roll < bounds[2]:
            days = -1 if rng.random() < 1 / 3 else 7
            f = replace(f, signed_until=self.now + timedelta(days=days))
        elif roll < bounds[3]:
            f = replace(f, declared_size=f.size + rng.choice((-1, 1)) * rng.randint(1, 500))
        elif roll < bounds[4]:
            f = replace(f, truncate_first=1)
        self.cdn.add(f)
        self.made.append(name)
        return self.cdn.file_object(name)


def _output(draw: _Draw, endpoint_id: str) -> dict[str, Any]:
    name = endpoint_id.lower()
    if "upscal" in name:
        return {"image": draw.file("lion", "image/png"), "timings": {"inference": 9.5}}
    if "whisper" in name or "audio" in name:
        return {"audio_file": draw.file("rabbit", "audio/mpeg"), "text": "bonjour"}
    if "video" in name:
        return {"video": draw.file("tiger", "video/mp4")}
    n = draw.rng.choice((1, 1, 2))
    return {
        "images": [draw.file("panda", "image/png") for _ in range(n)],
        "seed": draw.rng.getrandbits(31),
        "has_nsfw_concepts": [False] * n,
    }


@dataclass(frozen=True)
class Attached:
    """What `attach_media` did: the requests given files, the files made, and the
    earliest ``ended_at`` among those requests (every successful request ended since has
    files on the CDN)."""

    request_ids: tuple[str, ...]
    names: tuple[str, ...]
    since: datetime | None


def attach_media(
    world: World,
    cdn: SimulatedCDN,
    *,
    seed: int = 1,
    count: int | None = None,
    mix: MediaMix | None = None,
    now: datetime | None = None,
) -> Attached:
    """Give the ``count`` most recent successful requests of ``world`` (all: None) outputs
    whose files ``cdn`` serves, drawn from ``seed`` with ``mix``; expiries are relative to
    ``now`` (default: the world's clock)."""
    now = now or world.now()
    draw = _Draw(random.Random(seed), cdn, mix or MediaMix(), now)
    chosen = [r for r in world if 200 <= r.status_code < 300 and r.ended_at <= now]
    chosen.sort(key=lambda r: (r.ended_at, r.request_id), reverse=True)
    chosen = chosen if count is None else chosen[:count]
    for r in chosen:
        world.update(r.request_id, json_output=_output(draw, r.endpoint_id))
    return Attached(
        request_ids=tuple(r.request_id for r in chosen),
        names=tuple(draw.made),
        since=chosen[-1].ended_at if chosen else None,
    )
