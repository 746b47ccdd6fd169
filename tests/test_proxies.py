"""Proxies and CA certificates from the environment, as on a company network: the real
`mirror sync` through a real forward proxy on loopback (tinyproxy), to the simulated API
over plain http and over TLS with a company CA (trustme).

The proxy's own log is the witness that a request went through it; the simulated API's
that the key, and only the key, was sent as the Authorization (a ``.netrc`` for the host
is never used); the process's output that proxy credentials never show.
"""

from __future__ import annotations

import contextlib
import importlib.util
import re
import shutil
import socket
import ssl
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import trustme
from support.cli import Run, assert_one_line, mirror
from support.compare import assert_mirror_equals
from support.proxy import forward_proxy, tinyproxy_missing
from support.sim import CANARY_KEY, IdentifyingAPI, env_for, listable, static_world, sync_args

from mirror.api import FalClient, RetryPolicy, make_http_client
from mirror.errors import ApiUnavailable, ConfigError
from mirror.netenv import bypasses, from_env
from mirror.simulator import FaultConfig, World

#: credentials that must never be printed: the proxy's, and a .netrc's for the API's host
PROXY_USER, PROXY_PASSWORD = "corp-alice", "pr0xy-s3cret-pw"
NETRC_USER, NETRC_PASSWORD = "netrc-bob", "netrc-s3cret-pw"
SECRETS = (PROXY_USER, PROXY_PASSWORD, NETRC_USER, NETRC_PASSWORD, CANARY_KEY)


@pytest.fixture(scope="module")
def world() -> World:
    return static_world(seed=41, hours=6, per_hour=40)


@pytest.fixture(scope="module")
def company_ca() -> trustme.CA:
    return trustme.CA(organization_name="Example Corp inspecting gateway")


def tls_context(ca: trustme.CA) -> ssl.SSLContext:
    """A server-side context with a certificate for 127.0.0.1 signed by ``ca``."""
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1", "localhost").configure_cert(ctx)
    return ctx


@pytest.fixture
def tls_api(world: World, company_ca: trustme.CA) -> Iterator[IdentifyingAPI]:
    with IdentifyingAPI(world, tls=tls_context(company_ca)) as api:
        yield api


def ca_file(ca: trustme.CA, folder: Path) -> str:
    path = folder / "company-ca.pem"
    ca.cert_pem.write_to_path(str(path))
    return str(path)


def home_with_netrc(folder: Path) -> str:
    """A home folder whose ~/.netrc has credentials for the API's host (httpx's trust_env
    would send them as the Authorization instead of the key)."""
    home = folder / "home"
    home.mkdir()
    netrc = home / ".netrc"
    netrc.write_text(f"machine 127.0.0.1\nlogin {NETRC_USER}\npassword {NETRC_PASSWORD}\n")
    netrc.chmod(0o600)
    return str(home)


def sync(db: Path, env: dict[str, str], *flags: str, concurrency: int = 2) -> Run:
    return mirror(
        sync_args(db, "--since", "7h", "--max-concurrency", str(concurrency), *flags), env
    )


def assert_no_secret(run: Run) -> None:
    shown = run.stdout + run.stderr
    leaked = [s for s in SECRETS if s in shown]
    assert not leaked, f"printed {leaked}:\n{shown[-3000:]}"


def assert_only_the_key(api: IdentifyingAPI) -> None:
    keys = {c.key for c in api.calls}
    assert keys == {CANARY_KEY}, f"the API was sent these as its key: {keys}"


# --------------------------------------------------------------------------- through a proxy


@tinyproxy_missing
def test_a_sync_goes_through_http_proxy_with_its_credentials(tmp_path, world):
    db = tmp_path / "m.db"
    with (
        IdentifyingAPI(world) as api,
        forward_proxy(tmp_path, credentials=(PROXY_USER, PROXY_PASSWORD)) as proxy,
    ):
        base = api.base_url.removesuffix("/v1")
        env = env_for(api.base_url, HTTP_PROXY=proxy.url, HOME=home_with_netrc(tmp_path))
        run = sync(db, env, "-v")
        assert run.code == 0, run.stderr[-3000:]
        carried = proxy.requests()
        calls = len(api.calls)
    # every call the API saw came through the proxy, which asked for the credentials
    assert len(carried) == calls > 0, f"the API saw {calls} calls, the proxy carried {carried}"
    strays = [r for r in carried if not r.startswith(f"GET {base}/v1/")]
    assert not strays, f"the proxy carried calls that are not to the API: {strays[:3]}"
    # a 407 anywhere in the log, not the digits of a port such as 40759
    # (the log's times carry milliseconds, such as .407: left out)
    said = re.sub(r"\d\d:\d\d:\d\d\.\d+", "", proxy.log())
    assert "Proxy-Authorization" not in said and not re.search(r"\b407\b", said)
    assert_only_the_key(api)
    assert_no_secret(run)
    assert f"{base}: through the proxy {proxy.address} (HTTP_PROXY)" in run.stderr, run.stderr[
        :2000
    ]
    assert_mirror_equals(db, listable(world))


@tinyproxy_missing
def test_no_proxy_sends_the_api_around_the_proxy(tmp_path, world):
    """Lower case too, as curl and requests read them."""
    db = tmp_path / "m.db"
    with IdentifyingAPI(world) as api, forward_proxy(tmp_path) as proxy:
        base = api.base_url.removesuffix("/v1")
        env = env_for(api.base_url, http_proxy=proxy.url, no_proxy="example.com, 127.0.0.1")
        run = sync(db, env, "-v")
        assert run.code == 0, run.stderr[-3000:]
        carried = proxy.requests()
    assert carried == [], f"the proxy carried what NO_PROXY exempts: {carried[:3]}"
    assert f"{base}: directly (no_proxy)" in run.stderr
    assert_only_the_key(api)
    assert_mirror_equals(db, listable(world))


@tinyproxy_missing
def test_https_goes_through_the_proxy_tunnel_to_a_server_of_the_company_ca(
    tmp_path, world, tls_api, company_ca
):
    db = tmp_path / "m.db"
    with forward_proxy(tmp_path) as proxy:
        env = env_for(tls_api.base_url, HTTPS_PROXY=proxy.url,
                      SSL_CERT_FILE=ca_file(company_ca, tmp_path))  # fmt: skip
        run = sync(db, env)
        assert run.code == 0, run.stderr[-3000:]
        carried = proxy.requests()
    assert carried and set(carried) == {f"CONNECT 127.0.0.1:{tls_api.port}"}, carried[:3]
    assert_only_the_key(tls_api)
    assert_mirror_equals(db, listable(world))


@tinyproxy_missing
@pytest.mark.parametrize(
    ("credentials", "ports", "answer"),
    [
        (None, (443,), "403"),  # tunnels allowed to port 443 only
        ((PROXY_USER, PROXY_PASSWORD), (), "407"),  # the proxy asks for credentials
    ],
    ids=["forbidden", "credentials-wanted"],
)
def test_a_proxy_that_refuses_is_one_line_at_once(tmp_path, tls_api, credentials, ports, answer):
    with forward_proxy(tmp_path, credentials=credentials, connect_ports=ports) as proxy:
        url = proxy.url.replace(f"{PROXY_USER}:{PROXY_PASSWORD}@", "")  # none given
        run = sync(tmp_path / "m.db", env_for(tls_api.base_url, HTTPS_PROXY=url), concurrency=1)
        carried = proxy.requests()
    assert run.code == 1, run.stderr
    line = assert_one_line(run.stderr, "proxy refused")
    assert f"the proxy {proxy.address} (HTTPS_PROXY) answered {answer}" in line, line
    assert "HTTPS_PROXY, NO_PROXY" in line, f"no hint of what to check: {line}"
    assert len(carried) == 1, f"asked again after a refusal: {carried}"
    assert tls_api.calls == [], "the API was reached"


@contextlib.contextmanager
def port_that_refuses() -> Iterator[int]:
    """A loopback port bound but not listening: connections to it are refused."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        yield int(sock.getsockname()[1])


@tinyproxy_missing
def test_a_forwarding_proxy_that_wants_credentials_is_one_line_at_once(tmp_path, world):
    with (
        IdentifyingAPI(world) as api,
        forward_proxy(tmp_path, credentials=(PROXY_USER, PROXY_PASSWORD)) as proxy,
    ):
        env = env_for(api.base_url, HTTP_PROXY=f"http://{proxy.address}")
        run = sync(tmp_path / "m.db", env, concurrency=1)
        carried = proxy.requests()
    assert run.code == 1, run.stderr
    line = assert_one_line(run.stderr, "proxy refused")
    assert f"the proxy {proxy.address} (HTTP_PROXY) answered 407" in line, line
    assert len(carried) == 1 and api.calls == [], f"the proxy carried {carried}"


def test_a_proxy_that_is_not_there_is_one_line_without_its_credentials(tmp_path, world):
    with port_that_refuses() as port, IdentifyingAPI(world) as api:
        url = f"http://{PROXY_USER}:{PROXY_PASSWORD}@127.0.0.1:{port}"
        run = sync(tmp_path / "m.db", env_for(api.base_url, HTTP_PROXY=url,
                                              MIRROR_RETRY_ATTEMPTS="2"))  # fmt: skip
    assert run.code == 1, run.stderr
    line = assert_one_line(run.stderr, "api unavailable")
    assert f"through the proxy 127.0.0.1:{port} (HTTP_PROXY)" in line, line
    assert "Connection refused" in line, line
    assert_no_secret(run)
    assert api.calls == []


def test_a_proxy_variable_that_is_no_url_is_a_usage_error_that_does_not_quote_it(tmp_path):
    run = sync(tmp_path / "m.db", env_for("http://127.0.0.1:9/v1",
                                          HTTPS_PROXY=f"ftp://{PROXY_USER}:{PROXY_PASSWORD}@x"))  # fmt: skip
    assert run.code == 2, run.stderr
    line = assert_one_line(run.stderr, "usage")
    assert "HTTPS_PROXY is not a proxy URL" in line, line
    assert_no_secret(run)


# --------------------------------------------------------------------------- CA certificates


def test_a_company_ca_is_trusted_only_through_ssl_cert_file(tmp_path, world, tls_api, company_ca):
    db = tmp_path / "m.db"
    (tmp_path / "other").mkdir()
    other = ca_file(trustme.CA(), tmp_path / "other")
    for cafile in (None, other):  # the bundled roots, then another CA: neither vouches
        extra = {"SSL_CERT_FILE": cafile} if cafile else {}
        run = sync(db, env_for(tls_api.base_url, MIRROR_RETRY_ATTEMPTS="5", **extra))
        assert run.code == 1, run.stderr
        line = assert_one_line(run.stderr, "certificate not trusted", context=str(cafile))
        assert "127.0.0.1" in line and "SSL_CERT_FILE" in line, line
    assert tls_api.calls == [], "a request was sent over a connection that did not verify"
    run = sync(db, env_for(tls_api.base_url, SSL_CERT_FILE=ca_file(company_ca, tmp_path)))
    assert run.code == 0, run.stderr[-3000:]
    assert_mirror_equals(db, listable(world))


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs openssl to hash a CA file")
def test_ssl_cert_dir_is_trusted_too(tmp_path, world, tls_api, company_ca):
    certs = tmp_path / "certs"
    certs.mkdir()
    pem = ca_file(company_ca, tmp_path)
    digest = subprocess.run(["openssl", "x509", "-hash", "-noout", "-in", pem],
                            capture_output=True, text=True, check=True).stdout.strip()  # fmt: skip
    shutil.copy(pem, certs / f"{digest}.0")
    run = sync(tmp_path / "m.db", env_for(tls_api.base_url, SSL_CERT_DIR=str(certs)))
    assert run.code == 0, run.stderr[-3000:]
    assert_mirror_equals(tmp_path / "m.db", listable(world))


@pytest.mark.parametrize(
    ("variable", "value", "needle"),
    [
        ("SSL_CERT_FILE", "/nonexistent/ca.pem", "SSL_CERT_FILE=/nonexistent/ca.pem is not a file"),
        ("SSL_CERT_DIR", "/nonexistent", "SSL_CERT_DIR names /nonexistent, which is not a dir"),
    ],
)
def test_a_ca_setting_that_names_nothing_is_a_usage_error(tmp_path, variable, value, needle):
    run = sync(tmp_path / "m.db", env_for("https://127.0.0.1:9/v1", **{variable: value}))
    assert run.code == 2, run.stderr
    assert needle in assert_one_line(run.stderr, "usage")


def test_a_file_of_no_certificate_is_a_usage_error(tmp_path):
    junk = tmp_path / "ca.pem"
    junk.write_text("not a certificate\n")
    with pytest.raises(ConfigError, match=r"SSL_CERT_FILE=.*ca\.pem: no usable PEM certificate"):
        make_http_client({"SSL_CERT_FILE": str(junk)})


# --------------------------------------------------------------------------- the deadline


@tinyproxy_missing
@pytest.mark.timeout(60)  # without the deadline on a tunnel's headers, one attempt lasts 80 s
def test_the_deadline_holds_through_a_proxy_tunnel(tmp_path, world, company_ca):
    """The headers drip through the tunnel a byte every half second: httpx's read timeout
    never trips, and the attempt is still cut at its deadline."""
    retry = RetryPolicy(attempts=2, deadline=1, read_timeout=1, base=0.01)
    faults = FaultConfig(p_stall_headers=1.0, stall_byte_delay=0.5)
    with (
        IdentifyingAPI(world, faults, tls=tls_context(company_ca)) as api,
        forward_proxy(tmp_path) as proxy,
    ):
        env = {"HTTPS_PROXY": proxy.url, "SSL_CERT_FILE": ca_file(company_ca, tmp_path)}
        with make_http_client(env) as http, pytest.raises(ApiUnavailable) as failed:
            client = FalClient(http, CANARY_KEY, base_url=api.base_url, retry=retry)
            client.list_requests(["acme/upscaler"], start="2000-01-01T00:00:00Z",
                                 end="2100-01-01T00:00:00Z")  # fmt: skip
        tunnels = proxy.requests()
        kinds = [e.fault for e in api.log]
    assert "(last: response headers still incomplete after 1s)" in str(failed.value), failed.value
    assert kinds == ["stall-headers"] * 2 and tunnels, f"the API saw {kinds}, the proxy {tunnels}"


# --------------------------------------------------------------------------- the settings


def test_lower_case_wins_and_all_proxy_fills_in():
    net = from_env({"HTTPS_PROXY": "http://upper:1", "https_proxy": "lower:3128",
                    "ALL_PROXY": "socks5h://all.example:1080", "NO_PROXY": ".corp"})  # fmt: skip
    assert {s: str(p) for s, p in net.proxies.items()} == {
        "https": "lower:3128 (https_proxy)",
        "http": "all.example:1080 (ALL_PROXY)",
    }
    assert net.proxies["https"].url == "http://lower:3128"
    # an empty lower-case variable hides the upper case; HTTP_PROXY is ignored under CGI
    assert from_env({"http_proxy": "", "HTTP_PROXY": "http://p:1"}).proxies == {}
    assert from_env({"HTTP_PROXY": "http://p:1", "REQUEST_METHOD": "GET"}).proxies == {}
    assert str(from_env({"http_proxy": "p:1", "REQUEST_METHOD": "GET"}).proxies["http"]) == (
        "p:1 (http_proxy)"
    )


def test_what_a_verbose_run_says_of_them_holds_no_credential():
    net = from_env({"HTTPS_PROXY": f"http://{PROXY_USER}:{PROXY_PASSWORD}@proxy.corp:3128",
                    "NO_PROXY": "localhost", "SSL_CERT_DIR": "/etc"})  # fmt: skip
    assert net.describe() == [
        "https:// requests go through the proxy proxy.corp:3128 (HTTPS_PROXY) "
        "except to hosts in NO_PROXY",
        "TLS: trusting the CA certificates of SSL_CERT_DIR=/etc",
    ]


@pytest.mark.parametrize(
    ("no_proxy", "host", "port", "bypass"),
    [
        ("example.com", "api.example.com", 443, True),
        (".example.com", "example.com", 443, True),
        ("example.com", "notexample.com", 443, False),
        ("EXAMPLE.com:8443", "example.com", 443, False),
        ("example.com:443", "EXAMPLE.COM", 443, True),
        ("example.com:8443", "example.com", 8443, True),
        ("*", "anything.at.all", 80, True),
        ("10.0.0.0/8, 127.0.0.1", "10.1.2.3", 443, True),
        ("10.0.0.0/8", "11.1.2.3", 443, False),
        ("::1", "::1", 8765, True),
        ("localhost", "127.0.0.1", 80, False),  # names are not resolved, as in curl
        ("", "example.com", 443, False),
    ],
)
def test_no_proxy_matches_as_curl_and_requests_do(no_proxy, host, port, bypass):
    assert bypasses(no_proxy, host, port) is bypass


@pytest.mark.skipif(
    importlib.util.find_spec("socksio") is not None,
    reason="socksio is installed here: a SOCKS proxy is usable",
)
def test_a_socks_proxy_without_the_socks_extra_is_a_usage_error():
    with pytest.raises(ConfigError, match=r"ALL_PROXY names a SOCKS proxy.*httpx\[socks\]"):
        make_http_client({"ALL_PROXY": "socks5://127.0.0.1:1080"})


@tinyproxy_missing
def test_a_connection_guard_sees_the_hosts_this_machine_connects_to_not_the_proxy(tmp_path, world):
    """The media downloads' address guard (``connect``) wraps the connections made to hosts
    directly; through a proxy the user named (on a private address, in a company) the
    proxy connects on, so the guard must not refuse the proxy itself."""
    seen: list[str] = []

    class Recording:
        def __init__(self, inner):  # type: ignore[no-untyped-def]
            self.inner = inner

        def connect_tcp(self, host, port, *a, **kw):  # type: ignore[no-untyped-def]
            seen.append(f"{host}:{port}")
            return self.inner.connect_tcp(host, port, *a, **kw)

        def __getattr__(self, name):  # type: ignore[no-untyped-def]
            return getattr(self.inner, name)

    with IdentifyingAPI(world) as api, forward_proxy(tmp_path) as proxy:
        url = api.base_url + "/serverless/requests/by-endpoint"
        with make_http_client({}, connect=Recording) as http:
            http.get(url)
        direct = list(seen)
        seen.clear()
        with make_http_client({"HTTP_PROXY": proxy.url}, connect=Recording) as http:
            answer = http.get(url)
        carried = proxy.requests()
        host = api.base_url.split("//")[1].split("/")[0]
    assert direct == [host], direct
    assert seen == [], f"the guard was asked about the proxy's connections: {seen}"
    assert answer.status_code == 401 and len(carried) == 1, (answer.status_code, carried)
