"""What ``--db`` may name: any file name, taken literally; only a regular file or a new path;
and a mirror in a folder this process cannot write is still read by every reader."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result
from support.rows import fill, make_rows

from mirror.cli import cli


def mirror(*args: str) -> Result:
    return CliRunner().invoke(cli, list(args))


def json_of(result: Result, what: str) -> Any:
    assert result.exit_code == 0, f"{what}: exit {result.exit_code}: {result.stderr}"
    return json.loads(result.stdout)


# --------------------------------------------------------------------------- names


@pytest.mark.parametrize("name", ["q?mode=ro#x.db", "100%25 done.db", "file:m.db"])
def test_a_name_is_the_file_it_names(tmp_path, name):
    """The writer used to paste the name into a SQLAlchemy URL: ``q?mode=ro#x.db`` wrote a
    file named ``q`` while the readers read the name as given."""
    data = tmp_path / "data"
    data.mkdir()
    db = data / name
    fill(db, make_rows(30, seed=3))
    assert sorted(p.name for p in data.iterdir()) == [name, f"{name}.lock"], (
        "the mirror was written under another name"
    )
    ids = json_of(mirror("query", "--db", str(db), "-n", "0", "-c", "request_id", "-f", "json"),
                  "query")  # fmt: skip
    assert len(ids) == 30, f"query read {len(ids)} of the 30 rows written"
    count = json_of(mirror("sql", "SELECT count(*) AS n FROM requests", "--db", str(db), "-f",
                           "json"), "sql")  # fmt: skip
    assert count == [{"n": 30}]


# --------------------------------------------------------------------------- not a file

_NEXT_TO_DEV_NULL = [Path(f"/dev/null{s}") for s in (".lock", "-journal", "-wal", "-shm")]
NOT_A_FILE = (
    "mirror: storage error: /dev/null is a character device, not a SQLite database file; give the "
    "path of a mirror file, or of a new one\n"
)


@pytest.mark.parametrize(
    "args",
    [
        ["sync", "--db", "/dev/null", "--endpoint", "acme/app"],
        ["db", "upgrade", "--db", "/dev/null"],
        ["query", "--db", "/dev/null"],
        ["stats", "--db", "/dev/null"],
        ["status", "--db", "/dev/null"],
        ["sql", "SELECT 1", "--db", "/dev/null"],
        ["copy", "--from", "SOURCE", "--to", "/dev/null"],
    ],
    ids=lambda a: a[0] if a[0] != "db" else "db upgrade",
)
def test_a_device_is_refused_and_nothing_is_created_next_to_it(tmp_path, monkeypatch, args):
    source = tmp_path / "source.db"
    fill(source, make_rows(5))
    args = [str(source) if a == "SOURCE" else a for a in args]
    monkeypatch.setenv("FAL_KEY", "key-id:key-secret")
    monkeypatch.setenv("MIRROR_BASE_URL", "http://127.0.0.1:9")  # nothing to reach, ever
    monkeypatch.setenv("MIRROR_RETRY_ATTEMPTS", "1")
    there = {p for p in _NEXT_TO_DEV_NULL if p.exists()}
    try:
        r = mirror(*args)
    finally:
        made = sorted(str(p) for p in _NEXT_TO_DEV_NULL if p.exists() and p not in there)
        for p in made:
            Path(p).unlink()
    assert (r.exit_code, r.stderr, made) == (1, NOT_A_FILE, []), (
        f"mirror {args[0]} on /dev/null: exit {r.exit_code}, stderr {r.stderr!r}, created {made}"
    )


# --------------------------------------------------------------------------- read-only folder


@contextlib.contextmanager
def read_only_view(folder: Path) -> Iterator[Path]:
    """``folder`` as a folder this process cannot write: a read-only bind mount as root
    (root ignores permission bits), else the folder itself without write permission."""
    if os.geteuid() != 0:
        folder.chmod(0o555)
        try:
            yield folder
        finally:
            folder.chmod(0o755)
        return
    view = folder.with_name(folder.name + "-ro")
    view.mkdir()
    done = subprocess.run(["mount", "--bind", str(folder), str(view)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"root, but no bind mount here: {done.stderr.decode().strip()}")
    try:
        done = subprocess.run(
            ["mount", "-o", "remount,ro,bind", str(view)], capture_output=True, text=True
        )
        if done.returncode != 0:
            pytest.skip(f"cannot make a bind mount read-only here: {done.stderr.strip()}")
        yield view
    finally:
        subprocess.run(["umount", str(view)], capture_output=True)


def test_every_reader_reads_a_mirror_in_a_read_only_folder(tmp_path):
    """A WAL file whose folder cannot be written: SQLite cannot create the ``-shm`` index
    next to it, and refused to open it at all (``unable to open database file``)."""
    data = tmp_path / "data"
    data.mkdir()
    fill(data / "m.db", make_rows(40, seed=4))
    assert sorted(p.name for p in data.iterdir()) == ["m.db", "m.db.lock"]
    with read_only_view(data) as view:
        db = str(view / "m.db")
        got = {
            "query": len(json_of(mirror("query", "--db", db, "-n", "0", "-f", "json"), "query")),
            "stats": json_of(mirror("stats", "--db", db, "-f", "json"), "stats")[0]["requests"],
            "status": json_of(mirror("status", "--db", db, "-f", "json"), "status"),
            "sql": json_of(mirror("sql", "SELECT count(*) AS n FROM requests", "--db", db,
                                  "-f", "json"), "sql"),
        }  # fmt: skip
        assert got == {"query": 40, "stats": 40, "status": [], "sql": [{"n": 40}]}
    assert sorted(p.name for p in data.iterdir()) == ["m.db", "m.db.lock"]


def test_verify_reads_a_mirror_in_a_read_only_folder(tmp_path, monkeypatch):
    from mirror.api import FalClient, make_http_client
    from mirror.simulator import DEFAULT_KEY, ManualClock, SimulatedAPI, WorldConfig, generate_world
    from mirror.store import Store
    from mirror.sync import SyncOptions, sync

    # a quiet world (nothing running or arriving late) whose clock stands still
    now = datetime.now(UTC).replace(minute=0, second=0, microsecond=0) - timedelta(minutes=20)
    world = generate_world(WorldConfig(clock=ManualClock(now)), seed=5, now=now, days=0.25,
                           endpoints=["acme/app"], requests_per_hour=20, running=0,
                           future_minutes=0, late_fraction=0)  # fmt: skip
    world.finish_all()
    world.fill_billing()
    data = tmp_path / "data"
    data.mkdir()
    with SimulatedAPI(world) as api:
        store = Store.open(str(data / "m.db"))
        try:
            with make_http_client() as http:
                client = FalClient(http, DEFAULT_KEY, base_url=api.base_url)
                since = now - timedelta(hours=5)
                sync(
                    store,
                    client,
                    SyncOptions(targets=["acme/app"], since=since, until=now, cost=False),
                )
        finally:
            store.close()
        monkeypatch.setenv("FAL_KEY", DEFAULT_KEY)
        monkeypatch.setenv("MIRROR_BASE_URL", api.base_url)
        with read_only_view(data) as view:
            r = mirror("verify", "--db", str(view / "m.db"), "--format", "json")
    report = json_of(r, "verify")
    assert (report["ok"], [t["target"] for t in report["targets"]]) == (True, ["acme/app"]), report
