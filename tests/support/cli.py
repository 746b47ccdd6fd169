"""Running the real `mirror` command, and checking how it failed.

- ``mirror``/``spawn``: a real ``python -m mirror`` subprocess (run to the end, or started);
  ``on_terminal``: the same on a pseudo-terminal, as a person at a terminal runs it;
- ``run_cli``/``run_cli_parallel``: the CLI *forked* from the test process: the child is a
  real process that runs ``mirror.cli.main()`` with its own argv, environment and time
  zone, so a SIGKILL or SIGTERM hits real code at a real point, but without paying a
  second of imports per run. A ``patch`` callable runs in the child before the CLI starts:
  that is how the named kill points (after fetch, after insert, around commit, during
  migration) are placed, by wrapping one library function so that it signals its own
  process at that point (``die``), noting where it was (``note``);
- ``gated_syncs``: several real processes released into the CLI at the same moment;
- ``serve_browse``: `mirror browse` serving on a free loopback port;
- ``assert_one_line``: a failure is one line on stderr naming its class.
"""

from __future__ import annotations

import contextlib
import fcntl
import itertools
import os
import pty
import select
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import termios
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

# Imported here, once, so that forked children start at the CLI rather than in imports.
import alembic.command
import alembic.runtime.migration
import alembic.script  # noqa: F401
import httpx
import pytest

import mirror.api as mirror_api  # noqa: F401
import mirror.cli as mirror_cli  # noqa: F401
import mirror.db as mirror_db
import mirror.store as mirror_store  # noqa: F401
import mirror.sync as mirror_sync  # noqa: F401
from mirror.simulator import SimulatedAPI, generate_world
from support.sim import ENDPOINTS, fast_env, sync_args

mirror_db.script_heads()  # warm Alembic's script directory too


# --------------------------------------------------------------------------- subprocesses


@dataclass
class Run:
    code: int
    stdout: str
    stderr: str


def mirror(args: list[str], env: dict[str, str], *, timeout: float = 240) -> Run:
    """``python -m mirror ARGS`` to the end."""
    p = subprocess.run(
        [sys.executable, "-m", "mirror", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    return Run(p.returncode, p.stdout, p.stderr)


def forked(args: list[str], env: dict[str, str], *, timeout: float = 240) -> Outcome:
    """``mirror ARGS`` to the end, in a child forked from this process (``run_cli``): the
    same command as ``mirror`` without a fresh interpreter's start-up, for tests that run
    many commands."""
    with tempfile.TemporaryDirectory(prefix="mirror-run-") as out:
        return run_cli(args, env, Path(out), timeout=timeout)


def on_terminal(
    args: list[str], env: dict[str, str], *, columns: int = 80, lines: int = 24,
    timeout: float = 120,
) -> Run:  # fmt: skip
    """``python -m mirror ARGS`` to the end, its stdin, stdout and stderr on a pseudo-terminal
    of ``columns`` x ``lines``, as a person at a terminal runs it. ``Run.stdout`` is all the
    terminal received, both streams as they interleaved (line ends as ``\r\n``)."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", lines, columns, 0, 0))
    env = {k: v for k, v in env.items() if k not in ("COLUMNS", "LINES")}
    proc = subprocess.Popen(
        [sys.executable, "-m", "mirror", *args], env=env, stdin=slave, stdout=slave, stderr=slave
    )
    os.close(slave)
    received: list[bytes] = []
    deadline = time.monotonic() + timeout
    try:
        while True:
            ready, _, _ = select.select([master], [], [], max(0.0, deadline - time.monotonic()))
            if not ready:
                proc.kill()
                pytest.fail(f"mirror {' '.join(args)} still running after {timeout}s")
            try:
                data = os.read(master, 65536)
            except OSError:  # EIO: every process holding the terminal has closed it
                break
            if not data:
                break
            received.append(data)
        code = proc.wait(timeout=max(1.0, deadline - time.monotonic()))
    finally:
        os.close(master)
    return Run(code, b"".join(received).decode("utf-8", "replace"), "")


def spawn(args: list[str], env: dict[str, str]) -> subprocess.Popen[str]:
    """``python -m mirror ARGS``, started; its output is piped."""
    return subprocess.Popen(
        [sys.executable, "-m", "mirror", *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def terminate(proc: subprocess.Popen[Any]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def sync_from_simulator(path: Path, *, seed: int, days: int, requests_per_hour: float) -> None:
    """Serve a generated world on 127.0.0.1 and run `mirror sync` against it, for real."""
    world = generate_world(seed=seed, now=datetime.now(UTC), days=days + 0.5,
                           endpoints=list(ENDPOINTS), requests_per_hour=requests_per_hour)  # fmt: skip
    with SimulatedAPI(world) as api:
        r = mirror(sync_args(path, "--since", f"{days}d", "-q"), fast_env(api.base_url))
    assert r.code == 0, f"mirror sync failed: {r.stderr}"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def serve_browse(
    db: Path, *, env: dict[str, str] | None = None, timeout: float = 60
) -> tuple[subprocess.Popen[str], str]:
    """`mirror browse` on a free loopback port; returns it and its base URL once it answers
    (the test fails if it does not within ``timeout`` seconds). Stop it with ``terminate``."""
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "mirror", "browse", "--db", str(db), "--port", str(port)],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + timeout
    while True:
        try:
            if httpx.get(f"{base}/-/versions.json", timeout=2).status_code == 200:
                return proc, base
        except httpx.TransportError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            terminate(proc)
            out = proc.stdout.read() if proc.stdout else ""
            pytest.fail(f"`mirror browse` did not start serving {db}: {out[-2000:]}")
        time.sleep(0.1)


def gated_syncs(
    n: int,
    args_for: Callable[[int], list[str]],
    env: dict[str, str] | Callable[[int], dict[str, str]],
    gate_dir: Path,
) -> list[subprocess.Popen[str]]:
    """Start ``n`` real `python -m mirror`-equivalent processes that call the CLI at once.

    Imports take about a second on a slow machine; each child imports (the PostgreSQL
    driver too, where installed), says it is ready, then waits for one gate file, so all of
    them reach the CLI within milliseconds. ``env``: one for all, or one per process.
    """
    gate_dir.mkdir(parents=True, exist_ok=True)
    gate = gate_dir / "go"
    env_of = env if callable(env) else (lambda _i: env)
    code = (
        "import os, sys, time\n"
        "import mirror.cli, mirror.sync, mirror.store, mirror.api, alembic.command, httpx\n"
        "try:\n    import psycopg, sqlalchemy.dialects.postgresql.psycopg\n"
        "except ImportError:\n    pass\n"
        f"open(os.path.join({str(gate_dir)!r}, 'ready-%d' % os.getpid()), 'w').close()\n"
        f"while not os.path.exists({str(gate)!r}):\n"
        "    time.sleep(0.002)\n"
        "sys.argv = ['mirror', *sys.argv[1:]]\n"
        "mirror.cli.main()\n"
    )
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", code, *args_for(i)],
            env=env_of(i),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=str(gate_dir),
        )
        for i in range(n)
    ]
    deadline = time.monotonic() + 120
    while len(list(gate_dir.glob("ready-*"))) < n:
        assert time.monotonic() < deadline, "the gated processes never became ready"
        for p in procs:
            assert p.poll() is None, f"a gated process died early: {p.communicate()[1][-2000:]}"
        time.sleep(0.01)
    gate.touch()
    return procs


def wait_for(pred: Callable[[], bool], timeout: float = 30, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)


# --------------------------------------------------------------------------- one-line failures


def assert_one_line(stderr: str, kind: str, *, context: str = "") -> str:
    """The failure is one line on stderr naming its class, with no traceback."""
    where = f" ({context})" if context else ""
    assert "Traceback" not in stderr, f"a traceback was printed{where}:\n{stderr[-2000:]}"
    lines = stderr.splitlines()
    assert len(lines) == 1, (
        f"expected one line on stderr{where}, got {len(lines)}:\n{stderr[-2000:]}"
    )
    assert lines[0].startswith(f"mirror: {kind}: "), (
        f"the line does not name the class {kind!r}{where}: {lines[0]!r}"
    )
    return lines[0]


# --------------------------------------------------------------------------- forked CLI runs


@dataclass
class Outcome:
    """How a forked `mirror` process ended: exit code, or ``-signal`` if a signal ended it."""

    code: int
    stdout: str
    stderr: str
    signalled: bool = False  # we sent the signal while it was still running
    notes: list[str] = field(default_factory=list)  # lines a patch wrote to its side file

    @property
    def killed(self) -> bool:
        return self.code < 0


_seq = itertools.count()


def run_cli(
    args: Sequence[str],
    env: dict[str, str],
    out_dir: Path,
    *,
    kill_after: float | None = None,
    after: Callable[[], bool] | None = None,
    sig: int = signal.SIGKILL,
    patch: Callable[[Path], None] | None = None,
    timeout: float = 90,
    rlimit_fsize: int | None = None,
    no_second_wait: bool = False,
) -> Outcome:
    """Run ``mirror ARGS`` in a forked child; optionally send ``sig`` after ``kill_after`` s.

    With ``after``, the ``kill_after`` delay starts once ``after()`` is true (polled), e.g.
    once the simulator has seen the run's first call.
    ``patch(notes_path)`` runs in the child before the CLI (to place a named kill point; it
    may append lines to ``notes_path``, returned as ``Outcome.notes``). ``rlimit_fsize``
    sets ``ulimit -f`` (bytes) in the child, with SIGXFSZ ignored so writes fail with EFBIG.
    ``no_second_wait`` skips the sync's wait for the next whole second (up to 1 s per run,
    nothing else): against a world whose clock stands still that wait changes no result,
    and skipping it lets a test afford many more runs.
    """
    pid, paths = _fork_cli(args, env, out_dir, patch=patch, rlimit_fsize=rlimit_fsize,
                           no_second_wait=no_second_wait)  # fmt: skip
    out_p, err_p, notes_p = paths
    signalled = False
    if kill_after is not None:
        while after is not None and not after():
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                return _outcome(status, out_p, err_p, notes_p, False)
            time.sleep(0.002)
        time.sleep(kill_after)
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:  # it ended before the signal was due
            return _outcome(status, out_p, err_p, notes_p, False)
        os.kill(pid, sig)
        signalled = True
    deadline = time.monotonic() + timeout
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            raise AssertionError(
                f"`mirror {' '.join(args)}` still running after {timeout}s"
                f"{' (after the signal)' if signalled else ''}; stderr: {_read(err_p)[-1500:]}"
            )
        time.sleep(0.005)
    return _outcome(status, out_p, err_p, notes_p, signalled)


def _fork_cli(
    args: Sequence[str],
    env: dict[str, str],
    out_dir: Path,
    *,
    patch: Callable[[Path], None] | None,
    rlimit_fsize: int | None,
    no_second_wait: bool,
) -> tuple[int, tuple[Path, Path, Path]]:
    no_open_sqlite_files()
    out_dir.mkdir(parents=True, exist_ok=True)
    n = next(_seq)
    out_p, err_p, notes_p = (out_dir / f"run{n}.{s}" for s in ("out", "err", "notes"))
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:  # the child: never returns into pytest
        code = 97
        try:
            for fd, p in ((1, out_p), (2, err_p)):
                f = os.open(p, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
                os.dup2(f, fd)
                os.close(f)
            sys.stdout = open(1, "w", buffering=1, closefd=False)  # noqa: SIM115
            sys.stderr = open(2, "w", buffering=1, closefd=False)  # noqa: SIM115
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            signal.signal(signal.SIGINT, signal.default_int_handler)
            _fresh_logging()
            os.environ.clear()
            os.environ.update(env)
            time.tzset()
            if rlimit_fsize is not None:
                import resource

                signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
                resource.setrlimit(resource.RLIMIT_FSIZE, (rlimit_fsize, rlimit_fsize))
            if no_second_wait:
                _skip_second_wait()
            if patch is not None:
                patch(notes_p)
            sys.argv = ["mirror", *args]
            from mirror.cli import main

            try:
                main()
                code = 0
            except SystemExit as e:
                code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
        except BaseException:
            traceback.print_exc()
            code = 98
        finally:
            with contextlib.suppress(Exception):
                sys.stdout.flush()
                sys.stderr.flush()
            os._exit(code)
    return pid, (out_p, err_p, notes_p)


def run_cli_parallel(
    jobs: Sequence[tuple[Sequence[str], dict[str, str]]],
    out_dir: Path,
    *,
    parallel: int = 2,
    timeout: float = 90,
    no_second_wait: bool = False,
) -> list[Outcome]:
    """Run several `mirror` commands as forked children, ``parallel`` at a time, in order."""
    results: list[Outcome | None] = [None] * len(jobs)
    running: dict[int, tuple[int, tuple[Path, Path, Path], float]] = {}
    queue = list(enumerate(jobs))
    while queue or running:
        while queue and len(running) < parallel:
            i, (args, env) = queue.pop(0)
            pid, paths = _fork_cli(args, env, out_dir, patch=None, rlimit_fsize=None,
                                   no_second_wait=no_second_wait)  # fmt: skip
            running[pid] = (i, paths, time.monotonic() + timeout)
        for pid, (i, paths, deadline) in list(running.items()):
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                results[i] = _outcome(status, *paths, False)
                del running[pid]
            elif time.monotonic() > deadline:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
                raise AssertionError(
                    f"`mirror {' '.join(jobs[i][0])}` still running after {timeout}s"
                )
        time.sleep(0.005)
    return [r for r in results if r is not None]


def _fresh_logging() -> None:
    """Logging as a new process has it: pytest's capture handlers on the root logger would
    otherwise swallow what a library logs (which a real run prints to stderr)."""
    import logging

    logging.disable(logging.NOTSET)
    root = logging.getLogger()
    for h in list(root.handlers):
        root.removeHandler(h)
    root.setLevel(logging.WARNING)
    for logger in logging.Logger.manager.loggerDict.values():
        if isinstance(logger, logging.Logger):
            logger.handlers.clear()
            logger.setLevel(logging.NOTSET)
            logger.propagate = True
            logger.disabled = False


def no_open_sqlite_files() -> None:
    """Refuse to fork while this process has an SQLite file open.

    SQLite keeps per-process lock state for every open file (POSIX locks are per process);
    a child forked while a connection here holds a lock inherits that bookkeeping and sees a
    phantom lock holder forever. Tests that keep a reader or writer open in this process
    must run the sync as a real subprocess instead.
    """
    held = []
    for fd in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):
            target = os.readlink(f"/proc/self/fd/{fd}")
            if target.endswith((".db", ".db-wal", ".db-shm")):
                held.append(target)
    if held:
        raise RuntimeError(f"an SQLite file is open in the test process; cannot fork: {held}")


def _skip_second_wait() -> None:
    from mirror.sync import Syncer

    init = Syncer.__init__

    def no_wait(self: Any, *a: Any, **kw: Any) -> None:
        kw["wait"] = lambda seconds: None
        init(self, *a, **kw)

    Syncer.__init__ = no_wait  # type: ignore[method-assign]


def _read(p: Path) -> str:
    return p.read_text(errors="replace") if p.exists() else ""


def _outcome(status: int, out_p: Path, err_p: Path, notes_p: Path, signalled: bool) -> Outcome:
    code = -os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)
    notes = _read(notes_p).splitlines()
    return Outcome(code, _read(out_p), _read(err_p), signalled, notes)


def note(path: Path, line: str) -> None:
    """Append a line to a patch's side file (from inside a forked child), durably."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        os.write(fd, (line + "\n").encode())
    finally:
        os.close(fd)


def die(sig: int = signal.SIGKILL) -> None:
    """Signal our own process now (from inside a patched library function)."""
    with contextlib.suppress(Exception):
        sys.stdout.flush()
        sys.stderr.flush()
    os.kill(os.getpid(), sig)
    if sig == signal.SIGKILL:  # pragma: no cover - not reached
        time.sleep(10)
