"""Shared by the bench/ scripts: the simulated API in its own process, the baselines, tables.

The simulated API always runs in a separate Python process (``python bench/common.py serve``),
so its CPU and memory are never counted against the process being measured, and the GIL of
the one is not the GIL of the other. It binds to 127.0.0.1 only.

    python bench/common.py serve '{"requests": 100000}'    # prints one JSON line, then
                                                          # answers "log" / "clear" on stdin
    python bench/common.py sequential --base-url ... --db ... --since ... --until ... -e ID

``sequential`` is the baseline of backfill_bench: a plain sync, one-hour windows walked one
after another, page after page, one call in flight, one transaction per page.

The machine is noisy (2 cores): every figure is a median of several runs and is printed
next to a baseline measured in the same run; trust the ratios more than the absolutes.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sqlite3
import statistics
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
PY = sys.executable

#: three apps of the simulated account (one with a route, covered by its app id)
ENDPOINTS: dict[str, float] = {
    "acme/flux-lora": 0.42,
    "acme/flux-lora/turbo": 0.2,
    "acme/upscaler": 0.22,
    "acme/whisper-v3": 0.16,
}
TARGETS = ("acme/flux-lora", "acme/upscaler", "acme/whisper-v3")
KEY = "sim-key-id:sim-key-secret"  # the simulator's DEFAULT_KEY


def command_line() -> str:
    """The command that produced this run's figures, to print next to them."""
    return "python " + shlex.join([os.path.relpath(sys.argv[0], REPO), *sys.argv[1:]])


# --------------------------------------------------------------------------- the world


@dataclass
class WorldSpec:
    """What the simulated API serves. ``requests`` is spread over ``days`` (diurnal), plus
    ``dense`` more in one hour ``dense_ago_h`` hours before now."""

    requests: int = 100_000
    days: float = 3.0
    dense: int = 0
    dense_ago_h: int = 30
    seed: int = 1
    latency: float = 0.0
    rate_limit: float | None = None
    burst: float = 10.0
    endpoints: dict[str, float] = field(default_factory=lambda: dict(ENDPOINTS))
    #: False: ``/serverless/analytics`` answers 404 (a key without its scope)
    analytics: bool = True


def build_world(spec: WorldSpec, now: datetime) -> Any:
    """A deterministic world: nothing running, nothing recorded late, every row final."""
    from mirror.simulator import generate_world

    dense = None
    if spec.dense:
        start = (now - timedelta(hours=spec.dense_ago_h)).replace(minute=0, second=0)
        dense = (start, spec.dense)
    return generate_world(
        seed=spec.seed,
        now=now,
        days=spec.days,
        endpoints=spec.endpoints,
        requests_per_hour=spec.requests / (spec.days * 24),
        dense_hour=dense,
        running=0,
        late_fraction=0.0,
    )


def world_window(spec: WorldSpec, now: datetime) -> tuple[datetime, datetime]:
    """[since, until) covering the whole world, in whole seconds."""
    since = (now - timedelta(days=spec.days)).replace(minute=0, second=0, microsecond=0)
    return since, now + timedelta(seconds=1)


def iso(dt: datetime) -> str:
    return dt.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _serve(spec: WorldSpec) -> None:
    from mirror.simulator import FaultConfig, Query, SimulatedAPI

    now = datetime.now(UTC).replace(microsecond=0) - timedelta(seconds=1)
    world = build_world(spec, now)
    since, until = world_window(spec, now)
    rows = world.count(Query(endpoint_ids=TARGETS, start=since, end=until), now=now)
    from mirror.simulator.faults import ANALYTICS_PATH
    from mirror.simulator.server import Answer

    class AnalyticsRefused(SimulatedAPI):
        """Analytics answers 404, after the same latency and rate limit as every call."""

        def respond(self, method: str, path: str, *args: Any, **kwargs: Any) -> Answer:
            if path == ANALYTICS_PATH:
                return Answer(404, b'{"detail": "Not Found"}')
            return super().respond(method, path, *args, **kwargs)

    faults = FaultConfig(latency=spec.latency, rate_limit=spec.rate_limit, burst=spec.burst)
    api_class = SimulatedAPI if spec.analytics else AnalyticsRefused
    api = api_class(world, faults, host="127.0.0.1").start()
    info = {
        "base_url": api.base_url,
        "since": iso(since),
        "until": iso(until),
        "rows": rows,
        "targets": list(TARGETS),
    }
    print(json.dumps(info), flush=True)
    try:
        for line in sys.stdin:
            cmd = line.strip()
            if cmd == "log":
                print(json.dumps(summarize_log(api.log)), flush=True)
            elif cmd == "clear":
                api.clear_log()
                print("{}", flush=True)
            elif cmd == "quit":
                break
    finally:
        api.stop()


def summarize_log(log: Sequence[Any]) -> dict[str, Any]:
    """Calls, pages served, and runs of 429s: across all calls, and for one same call."""
    statuses = Counter(str(e.status) for e in log)
    run = longest = 0
    per_call: dict[tuple[Any, ...], int] = {}
    longest_same = 0
    for e in sorted(log, key=lambda e: e.time):
        key = (e.path, tuple(sorted((k, tuple(v)) for k, v in e.params.items())))
        if e.status == 429:
            run += 1
            per_call[key] = per_call.get(key, 0) + 1
            longest_same = max(longest_same, per_call[key])
        else:
            run = 0
            per_call.pop(key, None)
        longest = max(longest, run)
    return {
        "calls": len(log),
        "pages": statuses.get("200", 0),
        "status": dict(statuses),
        "longest_429_run": longest,
        "longest_429_run_same_call": longest_same,
    }


class SimServer:
    """The simulated API in a child process, for the length of a ``with`` block."""

    def __init__(self, spec: WorldSpec) -> None:
        self.spec = spec
        self.proc = subprocess.Popen(
            [PY, str(HERE / "common.py"), "serve", json.dumps(asdict(spec))],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            cwd=REPO,
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError("the simulated API did not start")
        info = json.loads(line)
        self.base_url: str = info["base_url"]
        self.since: str = info["since"]
        self.until: str = info["until"]
        self.rows: int = info["rows"]
        self.targets: list[str] = info["targets"]

    def _ask(self, cmd: str) -> dict[str, Any]:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(cmd + "\n")
        self.proc.stdin.flush()
        return json.loads(self.proc.stdout.readline())  # type: ignore[no-any-return]

    def log(self) -> dict[str, Any]:
        return self._ask("log")

    def clear(self) -> None:
        self._ask("clear")

    def close(self) -> None:
        if self.proc.poll() is None:
            assert self.proc.stdin is not None
            self.proc.stdin.close()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def __enter__(self) -> SimServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# --------------------------------------------------------------------------- processes


@dataclass
class ProcResult:
    seconds: float
    max_rss_mib: float
    code: int
    stdout: str
    stderr: str
    #: the child's own CPU time, user + system (children not counted)
    cpu_seconds: float = 0.0


def run_measured(
    cmd: Sequence[str], env: dict[str, str], timeout: float = 1800, cwd: Path = REPO
) -> ProcResult:
    """Run a child to the end: wall time, and its own peak RSS (wait4, children not counted)."""
    import tempfile

    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        t0 = time.perf_counter()
        proc = subprocess.Popen(list(cmd), env=env, stdout=out, stderr=err, cwd=cwd)
        deadline = t0 + timeout
        while True:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            if time.perf_counter() > deadline:
                proc.kill()
                pid, status, usage = os.wait4(proc.pid, 0)
                break
            time.sleep(0.01)
        seconds = time.perf_counter() - t0
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        return ProcResult(
            seconds,
            usage.ru_maxrss / 1024,
            proc.returncode,
            out.read().decode(errors="replace"),
            err.read().decode(errors="replace"),
            usage.ru_utime + usage.ru_stime,
        )


def sim_env(base_url: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FAL_", "MIRROR_"))}
    env.update(FAL_KEY=KEY, MIRROR_BASE_URL=base_url, PYTHONPATH=str(REPO))
    return env


def mirror_sync(
    server: SimServer,
    db: Path,
    *,
    max_concurrency: int | None = None,
    extra: Sequence[str] = (),
    code: Path = REPO,
) -> ProcResult:
    """``mirror sync`` of the whole world into ``db``, as a user would run it; ``code``: the
    source tree whose ``mirror`` runs (another commit's, to compare with in the same run)."""
    cmd = [PY, "-m", "mirror", "sync", "--db", str(db), "--since", server.since]
    cmd += ["--until", server.until]
    for t in server.targets:
        cmd += ["-e", t]
    if max_concurrency is not None:
        cmd += ["--max-concurrency", str(max_concurrency)]
    cmd += list(extra)
    env = sim_env(server.base_url)
    env["PYTHONPATH"] = str(code)
    res = run_measured(cmd, env, cwd=code)
    if res.code != 0:
        raise RuntimeError(f"mirror sync failed ({res.code}): {res.stderr.strip()[-2000:]}")
    return res


def mirror_sync_cmd_text(max_concurrency: int | None) -> str:
    mc = f" --max-concurrency {max_concurrency}" if max_concurrency else ""
    targets = " ".join(f"-e {t}" for t in TARGETS)
    return f"mirror sync --db DB --since SINCE --until UNTIL {targets}{mc}"


def last_run(db: Path) -> dict[str, Any]:
    """The run log row of the last sync, and how many rows the mirror holds."""
    con = sqlite3.connect(db)
    try:
        con.row_factory = sqlite3.Row
        run = dict(con.execute("SELECT * FROM sync_runs ORDER BY id DESC LIMIT 1").fetchone())
        run["rows"] = con.execute("SELECT count(*) FROM requests").fetchone()[0]
        return run
    finally:
        con.close()


def remove_db(db: Path) -> None:
    for suffix in ("", "-wal", "-shm", "-journal"):
        p = db.with_name(db.name + suffix)
        if p.exists():
            p.unlink()
    for p in db.parent.glob(db.name + ".bak-*"):
        p.unlink()


# --------------------------------------------------------------------------- the baseline


def sequential_sync(
    base_url: str, db: str, targets: Sequence[str], since: datetime, until: datetime
) -> dict[str, int]:
    """The plain way: one-hour windows, one after another, page after page, one call at a
    time, each page upserted and committed on its own."""
    from mirror.api import FalClient, make_http_client
    from mirror.pacing import Pacer
    from mirror.store import Store
    from mirror.timeparse import api_param, to_text

    store = Store.open(db)
    stamp = to_text(datetime.now(UTC))
    rows = 0
    with make_http_client() as http:
        client = FalClient(http, KEY, base_url=base_url, pacer=Pacer(1))
        for target in targets:
            start = since
            while start < until:
                end = min(start + timedelta(hours=1), until)
                cursor = None
                while True:
                    page = client.list_requests(
                        [target], start=api_param(start), end=api_param(end), cursor=cursor
                    )
                    with store.engine.begin() as conn:
                        store.upsert(conn, page.rows, payloads=True, billing=True, now=stamp)
                    rows += len(page.rows)
                    if not page.has_more:
                        break
                    cursor = page.next_cursor
                start = end
    store.close()
    return {"pages": client.stats.pages, "calls": client.stats.attempts, "rows": rows}


def sequential_cmd(server: SimServer, db: Path) -> list[str]:
    cmd = [PY, str(HERE / "common.py"), "sequential", "--base-url", server.base_url]
    cmd += ["--db", str(db), "--since", server.since, "--until", server.until]
    for t in server.targets:
        cmd += ["-e", t]
    return cmd


# --------------------------------------------------------------------------- reporting


def median(xs: Sequence[float]) -> float:
    return statistics.median(xs)


def repeat(n: int, fn: Callable[[int], float], label: str = "") -> list[float]:
    out = []
    for i in range(n):
        v = fn(i)
        out.append(v)
        if label:
            print(f"  {label} run {i + 1}/{n}: {v:,.3f}", file=sys.stderr, flush=True)
    return out


def fmt(v: float) -> str:
    if abs(v) >= 100:
        return f"{v:,.0f}"
    if abs(v) >= 10:
        return f"{v:,.1f}"
    return f"{v:,.3f}".rstrip("0").rstrip(".") if v else "0"


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    cells = [[str(h) for h in headers]] + [
        [fmt(c) if isinstance(c, float) else str(c) for c in r] for r in rows
    ]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = [
        "| " + " | ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) + " |" for r in cells
    ]
    lines.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(lines)


def verdict(ok: bool) -> str:
    return "PASS" if ok else "FAIL"


def header(title: str, notes: Sequence[str] = ()) -> None:
    print(f"## {title}\n")
    print(f"command: `{command_line()}`")
    print(
        f"python {sys.version.split()[0]}, sqlite {sqlite3.sqlite_version}, {os.cpu_count()} cores"
    )
    for n in notes:
        print(n)
    print()


def workdir(given: str | None, prefix: str) -> Path:
    """``--tmp`` if given (kept), else a new temporary folder removed at exit."""
    if given:
        path = Path(given)
        path.mkdir(parents=True, exist_ok=True)
        return path
    import atexit
    import shutil
    import tempfile

    path = Path(tempfile.mkdtemp(prefix=prefix))
    atexit.register(shutil.rmtree, path, True)
    return path


def base_parser(doc: str | None) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description=doc, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--quick", action="store_true", help="a smaller run")
    p.add_argument("--runs", type=int, default=None, help="runs per figure (median taken)")
    p.add_argument(
        "--tmp", default=None, help="folder for databases, kept (default: a temp dir, removed)"
    )
    return p


# --------------------------------------------------------------------------- entry


def main(argv: Sequence[str]) -> None:
    if not argv:  # `make bench` runs every script: this one is a helper, not a benchmark
        print("bench/common.py: helpers for the other bench scripts (serve, sequential)")
        return
    p = argparse.ArgumentParser(prog="bench/common.py")
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("serve")
    s.add_argument("spec")
    q = sub.add_parser("sequential")
    q.add_argument("--base-url", required=True)
    q.add_argument("--db", required=True)
    q.add_argument("--since", required=True)
    q.add_argument("--until", required=True)
    q.add_argument("-e", dest="targets", action="append", required=True)
    a = p.parse_args(argv)
    if a.cmd == "serve":
        _serve(WorldSpec(**json.loads(a.spec)))
    else:
        from mirror.timeparse import from_text

        out = sequential_sync(a.base_url, a.db, a.targets, from_text(a.since), from_text(a.until))
        print(json.dumps(out))


if __name__ == "__main__":
    sys.path.insert(0, str(REPO))
    main(sys.argv[1:])
