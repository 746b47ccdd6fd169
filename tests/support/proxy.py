"""A real forward proxy on loopback, started by the test that needs it: Debian's tinyproxy.

``forward_proxy`` runs one in the foreground on a free 127.0.0.1 port with its own
configuration (optionally asking for credentials, or allowing tunnels only to some ports)
and its own log, which says what went through it: plain http requests forwarded
(``GET http://…``) and https tunnels (``CONNECT host:port``). ``tinyproxy_missing`` skips a
test where tinyproxy is not installed, except under CI (``.ci/run`` installs it), where the
test fails instead.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest

from support.cli import terminate

TINYPROXY = shutil.which("tinyproxy") or "/usr/bin/tinyproxy"

tinyproxy_missing = pytest.mark.skipif(
    not os.path.exists(TINYPROXY) and not os.environ.get("CI"),
    reason="tinyproxy is not installed (.ci/run installs it: apt-get install tinyproxy)",
)

_REQUEST = re.compile(r"Request \(file descriptor \d+\): (\S+ \S+) HTTP/1\.\d")


@dataclass(frozen=True)
class ForwardProxy:
    port: int
    log_file: Path
    credentials: tuple[str, str] | None

    @property
    def url(self) -> str:
        """``http://[USER:PASSWORD@]127.0.0.1:PORT``, as HTTPS_PROXY takes it."""
        user = f"{self.credentials[0]}:{self.credentials[1]}@" if self.credentials else ""
        return f"http://{user}127.0.0.1:{self.port}"

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def requests(self) -> list[str]:
        """Each request the proxy was asked to carry, as ``METHOD TARGET``: ``GET http://…``
        (forwarded) or ``CONNECT host:port`` (a tunnel), whether it carried it or not."""
        text = self.log_file.read_text() if self.log_file.exists() else ""
        return [m[1] for m in _REQUEST.finditer(text)]

    def log(self) -> str:
        return self.log_file.read_text() if self.log_file.exists() else ""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _listening(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.2)
        return s.connect_ex(("127.0.0.1", port)) == 0


@contextlib.contextmanager
def forward_proxy(
    folder: Path,
    *,
    credentials: tuple[str, str] | None = None,
    connect_ports: Sequence[int] = (),
) -> Iterator[ForwardProxy]:
    """tinyproxy on 127.0.0.1, serving loopback clients only, stopped on leaving.

    ``credentials``: it answers 407 to a request without them. ``connect_ports``: it
    tunnels (``CONNECT``) only to these ports (none given: to any).
    """
    folder.mkdir(parents=True, exist_ok=True)
    for _ in range(5):  # a free port can be taken by someone else before tinyproxy binds it
        port = _free_port()
        log_file = folder / f"tinyproxy-{port}.log"
        conf = folder / f"tinyproxy-{port}.conf"
        lines = [
            f"Port {port}",
            "Listen 127.0.0.1",
            "Timeout 60",
            f'LogFile "{log_file}"',
            "LogLevel Connect",
            "MaxClients 64",
            "Allow 127.0.0.1",
        ]
        if credentials:
            lines.append(f"BasicAuth {credentials[0]} {credentials[1]}")
        lines += [f"ConnectPort {p}" for p in connect_ports]
        conf.write_text("\n".join(lines) + "\n")
        proc = subprocess.Popen(
            [TINYPROXY, "-d", "-c", str(conf)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while proc.poll() is None and not _listening(port) and time.monotonic() < deadline:
            time.sleep(0.02)
        if proc.poll() is None and _listening(port):
            break
        proc.kill()
        proc.wait()
    else:
        pytest.fail(f"tinyproxy did not start; its log:\n{log_file.read_text()[-2000:]}")
    try:
        yield ForwardProxy(port, log_file, credentials)
    finally:
        terminate(proc)
