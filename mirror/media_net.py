"""Where a media download may go: the URL policy, the address check, and the key-less client.

A payload is data from outside: a URL in it may point anywhere, and a media host may
redirect anywhere. So a download goes only

- over HTTPS (plain http only to the simulated CDN, below),
- to a host on the media host list: fal's (``fal.media`` and its subdomains) plus what
  the user adds with ``--media-host`` or ``MIRROR_MEDIA_HOSTS`` (``host`` for one name,
  ``*.domain`` for its subdomains),
- with no credentials in the URL, no backslash, control character or whitespace, no
  ``.``/``..`` path segment (plain or percent-encoded), no encoded ``/``, ``\\`` or NUL, and
  on the default port,
- and, whatever DNS says, never to a loopback, private, link-local, multicast or otherwise
  non-global address: the connection is made to the address that was checked
  (`GuardedBackend`), so a name that resolves differently a moment later changes nothing.

Every redirect's target passes the same `UrlPolicy.check` and, when connected to, the same
address check. The one exception is the simulated CDN, which serves on loopback: when the
API's base URL is itself on loopback (the simulator), downloads go to loopback addresses
only, over http too, and never to a real host (a simulated payload's fal URLs are made
up); private and link-local addresses are refused there as everywhere.

The client (`media_client`) is built from ``mirror.api.make_http_client``, which carries
no credentials: the API key is added by ``mirror.api.FalClient`` to its own requests only,
so it can never be sent to a media host. It goes through the proxy the environment names
(``HTTPS_PROXY``…, as the API's client does): the proxy itself may be on a private
address, and it resolves the host; the URL still passes `UrlPolicy.check` first.
"""

from __future__ import annotations

import ipaddress
import re
import socket
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote, urlsplit

import httpcore
import httpx

from mirror.api import is_loopback_host, make_http_client
from mirror.errors import ConfigError

#: fal's media hosts (``fal.media``, ``v3.fal.media``, ``v3b.fal.media``...)
DEFAULT_MEDIA_HOSTS = ("fal.media", "*.fal.media")
#: the environment variable extending the list (comma-separated)
HOSTS_ENV = "MIRROR_MEDIA_HOSTS"
_HOST_NAME = re.compile(r"^(\*\.)?[a-z0-9]([a-z0-9-]*[a-z0-9])?(\.[a-z0-9]([a-z0-9-]*[a-z0-9])?)*$")
_BAD_ENCODED = re.compile(r"%(2f|5c|00)", re.IGNORECASE)


class Refused(Exception):
    """A download not made, or stopped, because it would be unsafe; ``str()`` says why."""


def parse_hosts(values: Iterable[str]) -> tuple[str, ...]:
    """Host patterns from flags or the environment (comma-separated too), checked:
    ``name.domain`` or ``*.domain``, lower case; anything else is a `ConfigError`."""
    out: list[str] = []
    for value in values:
        for part in value.split(","):
            host = part.strip().lower().rstrip(".")
            if not host:
                continue
            if not _HOST_NAME.match(host) or (host.startswith("*.") and "." not in host[2:]):
                raise ConfigError(
                    f"media host {part.strip()!r} is not a host name or *.domain pattern"
                )
            if host not in out:
                out.append(host)
    return tuple(out)


def _ip(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        ip = ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


def address_allowed(address: str, *, allow_loopback: bool) -> bool:
    """Whether a connection may go to ``address`` (an IP): only global unicast addresses,
    and loopback ones when ``allow_loopback`` (the simulated CDN)."""
    ip = _ip(address)
    if ip is None:
        return False
    if ip.is_loopback:
        return allow_loopback
    return ip.is_global and not ip.is_multicast


@dataclass(frozen=True)
class UrlPolicy:
    """Which URLs a download may fetch (see the module's docstring)."""

    hosts: tuple[str, ...] = DEFAULT_MEDIA_HOSTS
    #: the API is the simulator: only its CDN on loopback is fetched, over http too
    simulated: bool = False

    @classmethod
    def build(
        cls, extra_hosts: Iterable[str], env: Mapping[str, str], *, base_url: str
    ) -> UrlPolicy:
        """fal's hosts, the environment's and the flags'; simulated when the API's
        ``base_url`` is on loopback."""
        hosts = parse_hosts([*DEFAULT_MEDIA_HOSTS, env.get(HOSTS_ENV, ""), *extra_hosts])
        base_host = urlsplit(base_url).hostname or ""
        return cls(hosts=hosts, simulated=is_loopback_host(base_host))

    def listed(self, host: str) -> bool:
        host = host.lower().rstrip(".")
        for pattern in self.hosts:
            if pattern.startswith("*."):
                if host.endswith(pattern[1:]) and len(host) > len(pattern) - 1:
                    return True
            elif host == pattern:
                return True
        return False

    def bare_host(self, host: str) -> bool:
        """Whether a bare URL string on ``host`` is taken for a file (``mirror.media_refs``)."""
        return self.listed(host) or (self.simulated and is_loopback_host(host))

    def check(self, url: str) -> str:
        """``url`` if a download may fetch it; `Refused` naming the first reason if not."""
        # every whitespace character but the space is unprintable: one pass in C, not a
        # Python loop over the characters (it showed in the cost of each small file)
        if not url.isprintable() or " " in url or "\\" in url:
            raise Refused("the URL has whitespace, control characters or a backslash")
        try:
            parts = urlsplit(url)
            port = parts.port
        except ValueError:
            raise Refused("the URL cannot be parsed") from None
        host = (parts.hostname or "").lower()
        if not host:
            raise Refused("the URL has no host")
        if parts.username is not None or parts.password is not None or "@" in parts.netloc:
            raise Refused("the URL carries credentials (user@host)")
        if self.simulated:
            if not is_loopback_host(host):
                raise Refused(
                    f"host {host} is not the simulated CDN: against the simulated API (on "
                    "loopback) only loopback media hosts are fetched"
                )
            if parts.scheme not in ("http", "https"):
                raise Refused(f"{parts.scheme}:// is not http(s)")
        else:
            if parts.scheme != "https":
                raise Refused(f"{parts.scheme}:// is not https")
            if not self.listed(host):
                raise Refused(
                    f"host {host} is not a media host (add it with --media-host or "
                    f"{HOSTS_ENV} if it is yours)"
                )
            if port not in (None, 443):
                raise Refused(f"port {port} is not https's")
        if _BAD_ENCODED.search(parts.path):
            raise Refused("the URL's path has an encoded '/', '\\' or NUL")
        for segment in unquote(parts.path).split("/"):
            if segment in (".", ".."):
                raise Refused("the URL's path has a '.' or '..' segment")
        return url


class GuardedBackend(httpcore.NetworkBackend):
    """Opens connections only to allowed addresses: resolves the name itself, refuses it if
    any address is not allowed, and connects to the address it checked."""

    def __init__(self, inner: httpcore.NetworkBackend, *, allow_loopback: bool) -> None:
        self._inner = inner
        self._allow_loopback = allow_loopback

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Any = None,
    ) -> httpcore.NetworkStream:
        try:
            infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except (socket.gaierror, UnicodeError) as e:
            raise httpcore.ConnectError(f"cannot resolve {host}: {e}") from None
        addresses = list(dict.fromkeys(str(info[4][0]) for info in infos))
        bad = [a for a in addresses if not address_allowed(a, allow_loopback=self._allow_loopback)]
        if bad or not addresses:
            raise Refused(
                f"{host} resolves to {bad[0] if bad else 'nothing'}, "
                "a loopback, private or link-local address"
            )
        return self._inner.connect_tcp(addresses[0], port, timeout, local_address, socket_options)

    def connect_unix_socket(
        self, path: str, timeout: float | None = None, socket_options: Any = None
    ) -> httpcore.NetworkStream:
        raise Refused("media downloads use no unix sockets")

    def sleep(self, seconds: float) -> None:
        self._inner.sleep(seconds)


def media_client(policy: UrlPolicy) -> httpx.Client:
    """The downloads' own client: no credentials, no redirects followed by httpx (each is
    checked first), and every connection through `GuardedBackend`."""
    return make_http_client(
        connect=lambda inner: GuardedBackend(inner, allow_loopback=policy.simulated)
    )
