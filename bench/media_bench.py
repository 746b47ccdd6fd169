"""Archiving output files: ``mirror media`` against a sequential httpx loop, and its memory.

    python bench/media_bench.py            # 400 files of 20 KiB; then 4 files of 1 and 64 MiB
    python bench/media_bench.py --quick    # 120 files; 1 and 16 MiB

The simulated API and its CDN run in this process on loopback; the CDN waits
``--latency`` (default 50 ms) before each answer, as a distant media host would. Each run
starts from the same synced mirror (copied) with an empty media store.

1. Throughput: ``mirror media`` (its default concurrency) against the obvious script, one
   ``httpx.Client`` fetching the same URLs one after another, streaming each to a file and
   hashing it, run as a child process too. Both are timed inside their process, from the
   first request to the last file written (``mirror media`` prints its own time; the loop
   measures itself), so interpreter start-up counts for neither; wall times are shown too.
   Target: files/s >= 5x the loop's at 50 ms per file.
2. Memory: peak RSS (``wait4``) of ``mirror media`` archiving four small files, then four
   large ones. Files stream to disk in 64 KiB pieces, so memory must not grow with their
   size. Target: the large run's peak within 20% (plus 8 MiB) of the small run's.
"""

from __future__ import annotations

import hashlib
import re
import shutil
import sqlite3
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import common as c

from mirror.simulator import (
    CdnFile,
    ManualClock,
    SimRequest,
    SimulatedAPI,
    SimulatedCDN,
    World,
    WorldConfig,
)

TARGET_SPEEDUP = 5.0
FLAT, FLAT_SLACK_MIB = 0.20, 8.0
APP = "acme/app"

LOOP = r"""
import hashlib, os, sys, time, httpx
urls, out = open(sys.argv[1]).read().split(), sys.argv[2]
t0 = time.perf_counter()
with httpx.Client() as http:
    for k, url in enumerate(urls):
        h = hashlib.sha256()
        with http.stream("GET", url) as r, open(os.path.join(out, str(k)), "wb") as f:
            r.raise_for_status()
            for chunk in r.iter_bytes(65536):
                h.update(chunk)
                f.write(chunk)
print(time.perf_counter() - t0)
"""


def site(files: list[CdnFile], latency: float) -> tuple[World, SimulatedCDN, SimulatedAPI]:
    now = (datetime.now(UTC) - timedelta(seconds=2)).replace(microsecond=0)
    world = World(WorldConfig(clock=ManualClock(now)))
    cdn = SimulatedCDN(clock=world.config.clock, latency=latency).start()
    for k, f in enumerate(files):
        cdn.add(f)
        sent = now - timedelta(minutes=50) + timedelta(milliseconds=k)
        world.add(
            SimRequest(
                request_id=f"0190c000-0000-7000-8000-{k:012x}", endpoint_id=APP,
                runner_id=None, sent_at=sent, started_at=sent + timedelta(seconds=1),
                ended_at=sent + timedelta(seconds=2), status_code=200, duration=1.0,
                json_output={"images": [cdn.file_object(f.name)]},
            )
        )  # fmt: skip
    return world, cdn, SimulatedAPI(world).start()


def synced(tmp: Path, api: SimulatedAPI, name: str) -> Path:
    db = tmp / f"{name}.db"
    c.remove_db(db)
    cmd = [c.PY, "-m", "mirror", "sync", "--db", str(db), "--since", "2h", "-e", APP, "-q"]
    res = c.run_measured(cmd, c.sim_env(api.base_url))
    if res.code != 0:
        raise RuntimeError(f"mirror sync failed: {res.stderr[-2000:]}")
    con = sqlite3.connect(db)
    con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    con.close()
    return db


def media_run(tmp: Path, pristine: Path, api: SimulatedAPI) -> tuple[c.ProcResult, float]:
    """``mirror media`` on a fresh copy of ``pristine``: the result and its own seconds."""
    db = tmp / "run.db"
    c.remove_db(db)
    shutil.rmtree(tmp / "run.db.media", ignore_errors=True)
    shutil.copy(pristine, db)
    res = c.run_measured([c.PY, "-m", "mirror", "media", "--db", str(db)], c.sim_env(api.base_url))
    m = re.search(r"files archived .* in ([0-9.]+)s", res.stdout)
    if res.code != 0 or m is None:
        raise RuntimeError(f"mirror media failed: {res.stdout} {res.stderr[-2000:]}")
    return res, float(m.group(1))


def loop_run(tmp: Path, urls: list[str]) -> tuple[c.ProcResult, float]:
    out = tmp / "loop"
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir()
    (tmp / "urls.txt").write_text("\n".join(urls))
    res = c.run_measured([c.PY, "-c", LOOP, str(tmp / "urls.txt"), str(out)], c.sim_env(""))
    if res.code != 0:
        raise RuntimeError(f"the loop failed: {res.stderr[-2000:]}")
    return res, float(res.stdout.strip())


def throughput(tmp: Path, n: int, size: int, latency: float, runs: int) -> bool:
    files = [CdnFile(name=f"t/{k}.png", size=size, seed=k + 1) for k in range(n)]
    _world, cdn, api = site(files, latency)
    try:
        pristine = synced(tmp, api, "throughput")
        urls = [cdn.url(f.name) for f in files]
        rows = []
        figures: dict[str, list[float]] = {"mirror": [], "loop": []}
        walls: dict[str, list[float]] = {"mirror": [], "loop": []}
        for i in range(runs):
            for name in ("loop", "mirror"):
                res, secs = loop_run(tmp, urls) if name == "loop" else media_run(tmp, pristine, api)
                figures[name].append(secs)
                walls[name].append(res.seconds)
                print(f"  {name} run {i + 1}/{runs}: {secs:.2f}s ({res.seconds:.2f}s wall)",
                      file=sys.stderr, flush=True)  # fmt: skip
        mb = n * size / 1e6
        for name, label in (("loop", "sequential httpx loop"), ("mirror", "mirror media")):
            secs = c.median(figures[name])
            rows.append([label, secs, n / secs, mb / secs, c.median(walls[name])])
        ratio = rows[1][2] / rows[0][2]
    finally:
        api.stop()
        cdn.stop()
    print(f"### Throughput: {n} files of {size // 1024} KiB, {latency * 1000:.0f} ms per file\n")
    print(c.table(["", "seconds", "files/s", "MB/s", "wall seconds"], rows))
    ok = ratio >= TARGET_SPEEDUP
    print(f"\nspeed-up: {ratio:.1f}x (target >= {TARGET_SPEEDUP:g}x): {c.verdict(ok)}\n")
    return ok


def memory(tmp: Path, small: int, large: int, runs: int) -> bool:
    rows = []
    peaks = {}
    for size in (small, large):
        files = [CdnFile(name=f"m{size}/{k}.mp4", size=size, content_type="video/mp4", seed=k + 7)
                 for k in range(4)]  # fmt: skip
        _world, cdn, api = site(files, 0.0)
        try:
            pristine = synced(tmp, api, f"memory-{size}")
            rss, secs = [], []
            for _ in range(runs):
                res, own = media_run(tmp, pristine, api)
                rss.append(res.max_rss_mib)
                secs.append(own)
            stored = tmp / "run.db.media"
            for f in files:
                sha = hashlib.sha256(cdn.content(f.name)).hexdigest()
                assert (stored / sha[:2] / sha).stat().st_size == size, "a file was not stored"
        finally:
            api.stop()
            cdn.stop()
        peaks[size] = c.median(rss)
        rows.append([f"4 x {size / 1048576:g} MiB", peaks[size], 4 * size / 1e6 / c.median(secs)])
    ok = peaks[large] <= peaks[small] * (1 + FLAT) + FLAT_SLACK_MIB
    print("### Memory: peak RSS of mirror media\n")
    print(c.table(["files", "peak RSS MiB", "MB/s"], rows))
    print(f"\nflat in file size (<= +{FLAT:.0%} + {FLAT_SLACK_MIB:g} MiB): {c.verdict(ok)}\n")
    return ok


def main() -> None:
    p = c.base_parser(__doc__)
    p.add_argument("--latency", type=float, default=0.05, help="seconds per file at the CDN")
    a = p.parse_args()
    runs = a.runs or 3
    n = 120 if a.quick else 400
    large = (16 if a.quick else 64) * 1048576
    c.header("Media: archiving output files", [f"{runs} runs each, median shown"])
    tmp = c.workdir(a.tmp, "mirror-media-")
    ok = throughput(tmp, n, 20 * 1024, a.latency, runs)
    ok = memory(tmp, 1048576, large, runs) and ok
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
