"""Shared machinery of the reliability suite: static worlds, checks, and killable runs.

Worlds here are *static*: the simulator's clock is a `ManualClock` frozen at generation
time, so the server's answer never changes on its own and a mirror can be compared with it
exactly after any failure. (Requests arriving while a sync runs are covered by the drift
tests and the state machine, which move that clock on purpose.)

Runs of the real CLI are *forked* from the test process: the child is a real process that
runs ``mirror.cli.main()`` with its own argv, environment and time zone, so a SIGKILL or
SIGTERM hits real code at a real point, but without paying a second of imports per run.
A ``patch`` callable runs in the child before the CLI starts: that is how the named kill
points (after fetch, after insert, around commit, during migration) are placed, by wrapping
one library function so that it signals its own process at that point.
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import os
import signal
import sqlite3
import subprocess
import sys
import time
import traceback
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

# Imported here, once, so that forked children start at the CLI rather than in imports.
import alembic.command
import alembic.runtime.migration
import alembic.script  # noqa: F401
import httpx  # noqa: F401
from e2e.harness import (  # tests/ is on sys.path, as for the e2e suite itself
    completed_windows,
    fast_env,
    has_schema,
    integrity_ok,
    mirror_rows,
    server_record,
)

import mirror.api
import mirror.cli
import mirror.db
import mirror.store
import mirror.sync
from mirror.simulator import DEFAULT_KEY, ManualClock, World, WorldConfig, generate_world

ENDPOINTS = ("acme/flux-lora", "acme/flux-lora/turbo", "acme/upscaler", "acme/whisper-v3")
TARGETS = ("acme/flux-lora", "acme/upscaler", "acme/whisper-v3")
REPO = Path(__file__).resolve().parents[2]
mirror.db.script_heads()  # warm Alembic's script directory too

#: the readings of the API (docs/fal-api.md) the suite rotates through
READINGS: dict[str, WorldConfig] = {
    "ended_at-desc": WorldConfig(filter_field="ended_at"),
    "sent_at-desc": WorldConfig(filter_field="sent_at"),
    "sent_at-asc-nullsfirst": WorldConfig(
        filter_field="sent_at", sort_direction="asc", nulls="first"
    ),
    "started_at-hidden": WorldConfig(filter_field="started_at", unfinished_visible=False),
}


# --------------------------------------------------------------------------- figures

#: counts the suite reports at the end of a session (conftest prints them)
FIGURES: dict[str, int] = {}


def count(name: str, n: int = 1) -> None:
    FIGURES[name] = FIGURES.get(name, 0) + n


def record(name: str, value: int) -> None:
    """A figure that is the same whichever test reports it (kept once, not added up)."""
    FIGURES[name] = max(FIGURES.get(name, 0), value)


# --------------------------------------------------------------------------- worlds


def static_world(
    config: WorldConfig | None = None,
    *,
    seed: int = 1,
    hours: float = 12,
    per_hour: float = 60,
    now: datetime | None = None,
    endpoints: Sequence[str] = ENDPOINTS,
    running: int = 4,
    big_tie_group: int = 150,
    late_fraction: float = 0.01,
    **kw: Any,
) -> World:
    """A generated history whose clock stands still at ``now`` (default: a moment ago)."""
    now = (now or datetime.now(UTC) - timedelta(seconds=2)).replace(microsecond=0)
    cfg = replace(config or WorldConfig(), clock=ManualClock(now))
    return generate_world(
        cfg,
        seed=seed,
        now=now,
        days=hours / 24,
        requests_per_hour=per_hour,
        endpoints=list(endpoints),
        running=running,
        big_tie_group=big_tie_group,
        late_fraction=late_fraction,
        **kw,
    )


def covers(target: str, endpoint_id: str) -> bool:
    return endpoint_id == target or endpoint_id.startswith(target + "/")


def listable(world: World) -> dict[str, dict[str, Any]]:
    """What a complete mirror must hold now: every request the list operation can return.

    With the window on ``ended_at`` a running request matches no window, so it is never
    listed (and is not expected); under the other readings it is listed with nulls.
    """
    ff = world.config.filter_field
    out = {}
    for rid, item in world.server_view().items():
        if ff == "ended_at" and item.get("ended_at") is None:
            continue
        out[rid] = server_record(item)
    return out


def sync_args(db: Path, *extra: str, targets: Iterable[str] = TARGETS) -> list[str]:
    return ["sync", "--db", str(db), *extra, *itertools.chain(*(("-e", t) for t in targets))]


# --------------------------------------------------------------------------- checks


def intervals(db: Path) -> dict[str, list[tuple[datetime, datetime]]]:
    out: dict[str, list[tuple[datetime, datetime]]] = {}
    if not db.exists() or db.stat().st_size == 0:
        return out
    for t, a, b in completed_windows(db):
        out.setdefault(t, []).append((a, b))
    for v in out.values():
        v.sort()
    return out


def inside(iv: Sequence[tuple[datetime, datetime]], a: datetime, b: datetime) -> bool:
    """Whether [a, b) lies inside the union of the (coalesced) intervals ``iv``."""
    return any(x <= a and b <= y for x, y in iv)


def overlaps(iv: Sequence[tuple[datetime, datetime]], a: datetime, b: datetime) -> bool:
    return any(x < b and a < y for x, y in iv)


def check_consistent(
    db: Path,
    expected: dict[str, dict[str, Any]],
    filter_field: str,
    *,
    context: str = "",
) -> dict[str, dict[str, Any]]:
    """After any run, finished or killed, against a world that did not change meanwhile:

    - the file passes ``PRAGMA integrity_check`` and holds no request twice;
    - every stored row equals the server's (nothing invented, nothing half-written);
    - *state never ahead of data*: every request in a window the state calls complete is
      stored.

    Returns the mirror's rows.
    """
    where = f" ({context})" if context else ""
    if not db.exists() or db.stat().st_size == 0:
        return {}
    integrity_ok(db)
    fts_ok(db)
    rows = mirror_rows(db)  # asserts no request_id twice
    unknown = sorted(set(rows) - set(expected))
    assert not unknown, (
        f"{len(unknown)} stored requests the server never listed{where}: {unknown[:3]}"
    )
    wrong = [(rid, {f: (rows[rid][f], expected[rid][f]) for f in rows[rid] if rows[rid][f] != expected[rid][f]})
             for rid in rows if rows[rid] != expected[rid]]  # fmt: skip
    assert not wrong, f"{len(wrong)} stored requests differ from the server{where}: {wrong[:2]}"
    for target, a, b in completed_windows(db):
        lacking = [
            rid
            for rid, rec in expected.items()
            if covers(target, rec["endpoint_id"])
            and rec[filter_field] is not None
            and a <= rec[filter_field] < b
            and rid not in rows
        ]
        assert not lacking, (
            f"state is ahead of the data{where}: window {target} [{a}, {b}) is marked complete "
            f"but {len(lacking)} of its requests are not stored, e.g. {lacking[:3]}"
        )
    return rows


def fts_ok(db: Path) -> None:
    """If the file has the full-text index (migration 0002), it agrees with its table."""
    con = sqlite3.connect(db)
    try:
        if con.execute("SELECT 1 FROM sqlite_master WHERE name = 'requests_fts'").fetchone():
            try:
                con.execute("INSERT INTO requests_fts(requests_fts) VALUES('integrity-check')")
            except sqlite3.DatabaseError as e:
                raise AssertionError(f"the full-text index disagrees with requests: {e}") from None
    finally:
        con.close()


def revision(db: Path) -> str | None:
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        if not con.execute("SELECT 1 FROM sqlite_master WHERE name = 'alembic_version'").fetchone():
            return None
        row = con.execute("SELECT version_num FROM alembic_version").fetchone()
        return row[0] if row else None
    finally:
        con.close()


def assert_mirror_equals(
    db: Path, expected: dict[str, dict[str, Any]], *, context: str = ""
) -> None:
    rows = mirror_rows(db)
    where = f" ({context})" if context else ""
    missing = sorted(set(expected) - set(rows))
    assert not missing, (
        f"{len(missing)} requests missing from the mirror{where}, e.g. {missing[:3]}"
    )
    extra = sorted(set(rows) - set(expected))
    assert not extra, (
        f"{len(extra)} requests in the mirror the server does not list{where}: {extra[:3]}"
    )
    wrong = [rid for rid in expected if rows[rid] != expected[rid]]
    assert not wrong, (
        f"{len(wrong)} requests differ from the server{where}, e.g. "
        f"{[(r, rows[r], expected[r]) for r in wrong[:1]]}"
    )


def query(db: Path, sql: str, *params: Any) -> list[tuple[Any, ...]]:
    if not db.exists() or db.stat().st_size == 0 or not has_schema(db):
        return []
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        return con.execute(sql, params).fetchall()
    finally:
        con.close()


def stored_ids(db: Path) -> set[str]:
    return {r[0] for r in query(db, "SELECT request_id FROM requests")}


def runs(db: Path) -> list[tuple[str, str | None]]:
    return [(r[0], r[1]) for r in query(db, "SELECT outcome, error FROM sync_runs ORDER BY id")]


def digest(*paths: Path) -> str:
    h = hashlib.sha256()
    for p in paths:
        h.update(p.name.encode())
        h.update(p.read_bytes() if p.exists() else b"<absent>")
    return h.hexdigest()


def content_dump(db: Path) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]:
    """The mirror's content without the bookkeeping stamps of when it was written."""
    rows = query(
        db,
        "SELECT request_id, endpoint_id, runner_id, sent_at, started_at, ended_at, status_code,"
        " duration, billable_units, json_input, json_output, status FROM requests"
        " ORDER BY request_id",
    )
    windows = query(db, "SELECT target, window_start, window_end FROM sync_windows ORDER BY 1, 2")
    return rows, windows


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
    _no_open_sqlite_files()
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
            import mirror.lock

            mirror.lock.forget_held()
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


def _no_open_sqlite_files() -> None:
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


def env_for(api_url: str, **extra: str) -> dict[str, str]:
    """The harness's fast-retry environment, without the parent's TZ unless asked."""
    env = fast_env(api_url, **extra)
    env.setdefault("TZ", "UTC")
    return env


# --------------------------------------------------------------------------- real subprocesses


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


@contextlib.contextmanager
def tmpfs(path: Path, size: str) -> Iterator[Path]:
    """Mount a small tmpfs at ``path`` (root only); skips the test where that is refused."""
    import pytest

    path.mkdir(parents=True, exist_ok=True)
    r = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs", str(path)],
        capture_output=True,
        text=True,
    )
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({r.stderr.strip() or r.returncode}); needs root")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], capture_output=True)


def remount(path: Path, options: str) -> None:
    r = subprocess.run(
        ["mount", "-o", f"remount,{options}", str(path)], capture_output=True, text=True
    )
    assert r.returncode == 0, f"remount {options} failed: {r.stderr}"


def wait_for(pred: Callable[[], bool], timeout: float = 30, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)


__all__ = [
    "DEFAULT_KEY",
    "ENDPOINTS",
    "FIGURES",
    "READINGS",
    "TARGETS",
    "Outcome",
    "assert_mirror_equals",
    "assert_one_line",
    "check_consistent",
    "content_dump",
    "count",
    "covers",
    "die",
    "digest",
    "env_for",
    "fts_ok",
    "gated_syncs",
    "inside",
    "intervals",
    "listable",
    "note",
    "overlaps",
    "query",
    "record",
    "revision",
    "run_cli",
    "runs",
    "static_world",
    "stored_ids",
    "sync_args",
    "tmpfs",
    "wait_for",
]
