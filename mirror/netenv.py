"""What the environment says about reaching the API: proxies and the CA certificates to trust.

Read as curl, requests and httpx read them, and nothing else of the environment:

- ``HTTPS_PROXY`` / ``HTTP_PROXY`` (the proxy for requests to https:// and http:// URLs) and
  ``ALL_PROXY`` (for both, when the one of the scheme is not set); each also in lower
  case, which wins over upper case (as urllib and curl have it: an empty lower-case one
  means no proxy). As urllib does, ``HTTP_PROXY`` in upper case is ignored when
  ``REQUEST_METHOD`` is set (a CGI environment, where a client's ``Proxy:`` header would
  arrive as it). A value without a scheme is an http:// proxy; ``https://`` (TLS to the
  proxy), ``socks5://`` and ``socks5h://`` (with httpx's socks extra) work too.
- ``NO_PROXY`` / ``no_proxy``: hosts reached directly, with urllib's rules (comma-separated
  names that match the host and its subdomains, a leading dot optional, ``HOST:PORT`` for
  one port, ``*`` for all), plus IP networks (``10.0.0.0/8``) as curl takes them
  (`bypasses`).
- ``SSL_CERT_FILE`` (a PEM bundle) and ``SSL_CERT_DIR`` (directories of hashed
  certificates, ``:``-separated, as OpenSSL reads it): when either is set, the server's
  certificate is checked against these instead of the bundled Mozilla roots (certifi), as
  with httpx and OpenSSL; this is how a company's TLS-inspecting gateway is trusted.

What ``httpx``'s own ``trust_env`` would add stays out: ``.netrc`` credentials (``NETRC``),
which it would send in the ``Authorization`` header in place of the key. Proxy credentials
(``http://USER:PASSWORD@HOST:PORT``) go to the proxy only; a proxy is shown by host and port
and the variable it came from, never its URL, and its password is redacted from every
message (``mirror.redact``).
"""

from __future__ import annotations

import ipaddress
import os
import ssl
from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import unquote, urlsplit

from mirror.errors import ConfigError
from mirror.redact import register_secret

#: the proxy URL schemes httpx speaks, and the port each defaults to
PROXY_PORTS = {"http": 80, "https": 443, "socks5": 1080, "socks5h": 1080}


@dataclass(frozen=True)
class Proxy:
    """A forward proxy from the environment."""

    #: the whole URL, credentials included: for httpx alone, never shown
    url: str
    #: the variable it came from, e.g. ``HTTPS_PROXY``
    variable: str
    #: ``HOST:PORT``
    address: str

    def __str__(self) -> str:
        return f"{self.address} ({self.variable})"


@dataclass(frozen=True)
class NetworkEnv:
    """Proxies by the scheme of the URL asked for (``http``, ``https``), the hosts that
    bypass them, and the CA certificates to trust (None: the bundled roots)."""

    proxies: Mapping[str, Proxy]
    no_proxy: str = ""
    no_proxy_variable: str = "NO_PROXY"
    cafile: str | None = None
    capath: str | None = None

    def proxy_for(self, scheme: str, host: str, port: int | None) -> Proxy | None:
        """The proxy a request to ``scheme://host:port`` goes through; None: directly."""
        proxy = self.proxies.get(scheme)
        if proxy is None or (self.no_proxy and bypasses(self.no_proxy, host, port)):
            return None
        return proxy

    def ssl_context(self) -> ssl.SSLContext | None:
        """A context that trusts ``cafile`` and ``capath``; None when neither is set."""
        if self.cafile is None and self.capath is None:
            return None
        try:
            return ssl.create_default_context(cafile=self.cafile, capath=self.capath)
        except (ssl.SSLError, OSError) as e:
            raise ConfigError(f"{self._ca_settings()}: no usable PEM certificate ({e})") from None

    def _ca_settings(self) -> str:
        return " and ".join(
            f"{name}={value}"
            for name, value in (("SSL_CERT_FILE", self.cafile), ("SSL_CERT_DIR", self.capath))
            if value
        )

    def describe(self) -> list[str]:
        """What a ``-v`` run logs of these settings (no URL, no credential)."""
        lines = [
            f"{scheme}:// requests go through the proxy {proxy}"
            + (f" except to hosts in {self.no_proxy_variable}" if self.no_proxy else "")
            for scheme, proxy in sorted(self.proxies.items())
        ]
        if self.cafile or self.capath:
            lines.append(f"TLS: trusting the CA certificates of {self._ca_settings()}")
        return lines


def _lookup(env: Mapping[str, str], name: str) -> tuple[str, str] | None:
    """``name`` (lower case) or its upper case: (variable, value), or None if unset or
    empty. Lower case wins, even empty: it then hides the upper case (as in urllib)."""
    upper = name.upper()
    if name in env:
        found = (name, env[name].strip())
    elif upper in env and not (upper == "HTTP_PROXY" and "REQUEST_METHOD" in env):
        found = (upper, env[upper].strip())
    else:
        return None
    return found if found[1] else None


def _proxy(variable: str, value: str) -> Proxy:
    url = value if "://" in value else f"http://{value}"
    bad = ConfigError(
        f"{variable} is not a proxy URL: use http://HOST:PORT (or https://, socks5://, "
        "socks5h://), with USER:PASSWORD@ before the host if the proxy asks for them"
    )
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        raise bad from None
    scheme = parts.scheme.lower()
    if scheme not in PROXY_PORTS or not parts.hostname:
        raise bad
    if parts.password:
        register_secret(parts.password)
        register_secret(unquote(parts.password))
    host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
    return Proxy(url=url, variable=variable, address=f"{host}:{port or PROXY_PORTS[scheme]}")


def from_env(env: Mapping[str, str] = os.environ) -> NetworkEnv:
    """The proxies and CA settings of ``env``; `mirror.errors.ConfigError` for a value that
    cannot be one (naming the variable, never quoting a proxy URL)."""
    proxies: dict[str, Proxy] = {}
    for scheme in ("http", "https"):
        found = _lookup(env, f"{scheme}_proxy")
        if found is None:
            found = _lookup(env, "all_proxy")
        if found is not None:
            proxies[scheme] = _proxy(*found)
    no = _lookup(env, "no_proxy")
    cafile = env.get("SSL_CERT_FILE") or None
    capath = env.get("SSL_CERT_DIR") or None
    if cafile is not None and not os.path.isfile(cafile):
        raise ConfigError(f"SSL_CERT_FILE={cafile} is not a file")
    if capath is not None:
        missing = [d for d in capath.split(os.pathsep) if d and not os.path.isdir(d)]
        if missing:
            raise ConfigError(f"SSL_CERT_DIR names {missing[0]}, which is not a directory")
    return NetworkEnv(
        proxies=proxies,
        no_proxy=no[1] if no else "",
        no_proxy_variable=no[0] if no else "NO_PROXY",
        cafile=cafile,
        capath=capath,
    )


def bypasses(no_proxy: str, host: str, port: int | None) -> bool:
    """Whether ``NO_PROXY``'s value sends ``host`` (at ``port``) around the proxy.

    urllib's rules: each comma-separated entry matches that host and its subdomains
    (``example.com`` and ``.example.com`` both match ``api.example.com``), an entry
    ``HOST:PORT`` only that port, ``*`` every host; case does not matter. As curl, an IP
    network (``10.0.0.0/8``, ``::1``) matches the IP addresses in it.
    """
    host = host.strip("[]").lower().rstrip(".")
    try:
        ip: ipaddress.IPv4Address | ipaddress.IPv6Address | None = ipaddress.ip_address(host)
    except ValueError:
        ip = None
    for raw in no_proxy.split(","):
        entry = raw.strip().lower()
        if entry == "*":
            return True
        if not entry:
            continue
        if ip is not None:
            try:
                if ip in ipaddress.ip_network(entry.strip("[]"), strict=False):
                    return True
                continue
            except ValueError:
                pass
        name, sep, wanted = entry.rpartition(":")
        if not sep or not wanted.isdigit():
            name, wanted = entry, ""
        if wanted and int(wanted) != port:
            continue
        name = name.strip("[]").lstrip(".").rstrip(".")
        if name and (host == name or host.endswith("." + name)):
            return True
    return False
