"""Local storage failures: disk full, a file-size limit, read-only, corrupt and foreign files.

Expected of each: exit 1 and one line naming the storage class (no traceback), a file that
still passes ``PRAGMA integrity_check`` with every committed row intact and the state not
ahead of the data, or (for a file that is not ours, or from the future) a file left
byte-for-byte untouched. After the cause is removed (space freed, limit lifted) the next
run completes the mirror.

Disk full uses a real small tmpfs (root only; skipped with the reason otherwise), and the
file-size limit is `ulimit -f` in the child with SIGXFSZ ignored, so writes fail with EFBIG
rather than killing the process (that variant is tested too).
"""

from __future__ import annotations

import contextlib
import os
import signal
import sqlite3
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from support.cli import assert_one_line, run_cli
from support.compare import assert_mirror_equals, check_consistent, digest, stored_ids
from support.figures import count
from support.sim import env_for, listable, static_world, sync_args

from mirror.simulator import SimulatedAPI

STORAGE = "storage error"


@contextlib.contextmanager
def tmpfs(path: Path, size: str) -> Iterator[Path]:
    """Mount a small tmpfs at ``path`` (root only); skips the test where that is refused."""
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


@pytest.fixture(scope="module")
def st_world():
    world = static_world(seed=51, hours=30, per_hour=60)
    with SimulatedAPI(world) as api:
        yield world, api


def _files(db: Path) -> list[Path]:
    return [db, db.with_name(db.name + "-wal"), db.with_name(db.name + "-shm")]


def _storage_failure(o, where: str, *words: str) -> str:  # type: ignore[no-untyped-def]
    assert o.code == 1, f"{where}: exit {o.code}, expected 1: {o.stderr[-2000:]}"
    line = assert_one_line(o.stderr, STORAGE, context=where)
    for w in words:
        assert w in line.lower(), f"{where}: the line does not mention {w!r}: {line}"
    count("storage failures provoked")
    return line


# --------------------------------------------------------------------------- disk full


def test_disk_full_mid_sync_then_space_freed(tmp_path, st_world) -> None:
    world, api = st_world
    expected = listable(world)
    with tmpfs(tmp_path / "small", "600k") as small:
        db = small / "m.db"
        env = env_for(api.base_url)
        args = sync_args(db, "--since", "31h", "--max-concurrency", "2")
        o = run_cli(args, env, tmp_path / "out", no_second_wait=True)
        assert o.code == 1, f"disk full: exit {o.code}: {o.stderr[-1500:]}"
        kept = check_consistent(db, expected, world.config.filter_field, context="disk full")
        remount(small, "size=64m")
        again = run_cli(args, env, tmp_path / "out", no_second_wait=True)
        assert again.code == 0, f"after freeing space: {again.stderr[-1500:]}"
        assert_mirror_equals(db, expected, context="after the disk was full")
        assert kept.keys() <= stored_ids(db)
    line = _storage_failure(o, "disk full", "full")
    assert "free" in line.lower(), f"the line does not say what to do: {line}"


def test_disk_already_full_before_the_first_write(tmp_path, st_world) -> None:
    world, api = st_world
    with tmpfs(tmp_path / "small", "8m") as small:
        filler = small / "filler"
        subprocess.run(["dd", "if=/dev/zero", f"of={filler}", "bs=4k"], capture_output=True)
        db = small / "m.db"
        o = run_cli(sync_args(db, "--since", "31h"), env_for(api.base_url), tmp_path / "out",
                    no_second_wait=True)  # fmt: skip
        assert o.code == 1, f"disk full from the start: exit {o.code}: {o.stderr[-1500:]}"
        check_consistent(db, listable(world), world.config.filter_field)
        filler.unlink()
        again = run_cli(sync_args(db, "--since", "31h"), env_for(api.base_url), tmp_path / "out",
                        no_second_wait=True)  # fmt: skip
        assert again.code == 0, again.stderr[-1500:]
        assert_mirror_equals(db, listable(world))
    _storage_failure(o, "disk full from the start", "full")


def test_disk_fills_up_during_an_incremental_run(tmp_path, st_world) -> None:
    """A mirror that has been fine for a while; then another file eats the space."""
    world, api = st_world
    expected = listable(world)
    with tmpfs(tmp_path / "small", "8m") as small:
        db = small / "m.db"
        env = env_for(api.base_url)
        first = run_cli(sync_args(db, "--since", "12h"), env, tmp_path / "out", no_second_wait=True)
        assert first.code == 0, first.stderr
        subprocess.run(
            ["dd", "if=/dev/zero", f"of={small / 'filler'}", "bs=4k"], capture_output=True
        )
        os.truncate(small / "filler", os.path.getsize(small / "filler") - 96 * 1024)
        o = run_cli(sync_args(db, "--since", "31h"), env, tmp_path / "out", no_second_wait=True)
        assert o.code == 1, f"disk filled up: exit {o.code}: {o.stderr[-1500:]}"
        check_consistent(db, expected, world.config.filter_field, context="disk filled up")
        (small / "filler").unlink()
        again = run_cli(sync_args(db, "--since", "31h"), env, tmp_path / "out", no_second_wait=True)
        assert again.code == 0, again.stderr[-1500:]
        assert_mirror_equals(db, expected)
    _storage_failure(o, "disk filled up", "full")


# --------------------------------------------------------------------------- ulimit -f


@pytest.mark.parametrize("limit_kb", [40, 300, 900])
def test_file_size_limit(tmp_path, st_world, limit_kb: int) -> None:
    """`ulimit -f` in the middle of the migration (40 KB), of the first pages, of the WAL."""
    world, api = st_world
    expected = listable(world)
    db = tmp_path / "m.db"
    env = env_for(api.base_url)
    args = sync_args(db, "--since", "31h", "--max-concurrency", "2")
    o = run_cli(args, env, tmp_path / "out", rlimit_fsize=limit_kb * 1024, no_second_wait=True)
    where = f"ulimit -f {limit_kb}k"
    if o.code == 0:
        pytest.fail(f"{where}: the sync succeeded; the limit was never reached (file sizes: "
                    f"{[p.stat().st_size for p in _files(db) if p.exists()]})")  # fmt: skip
    assert o.code == 1, f"{where}: exit {o.code}: {o.stderr[-1500:]}"
    check_consistent(db, expected, world.config.filter_field, context=where)
    again = run_cli(args, env, tmp_path / "out", no_second_wait=True)
    assert again.code == 0, f"{where}, then no limit: {again.stderr[-1500:]}"
    assert_mirror_equals(db, expected, context=where)
    _storage_failure(o, where, "full")


def test_file_size_limit_with_the_default_sigxfsz_kills_cleanly(tmp_path, st_world) -> None:
    """Without SIGXFSZ ignored the kernel kills the process at the limit: a kill like any other."""
    world, api = st_world
    expected = listable(world)
    db = tmp_path / "m.db"
    env = env_for(api.base_url)
    args = sync_args(db, "--since", "31h")

    def default_sigxfsz(notes: Path) -> None:
        import resource

        signal.signal(signal.SIGXFSZ, signal.SIG_DFL)
        resource.setrlimit(resource.RLIMIT_FSIZE, (300 * 1024, 300 * 1024))

    o = run_cli(args, env, tmp_path / "out", patch=default_sigxfsz, no_second_wait=True)
    assert o.code == -signal.SIGXFSZ, f"exit {o.code}: {o.stderr[-1500:]}"
    check_consistent(db, expected, world.config.filter_field, context="killed by SIGXFSZ")
    again = run_cli(args, env, tmp_path / "out", no_second_wait=True)
    assert again.code == 0, again.stderr[-1500:]
    assert_mirror_equals(db, expected)


# --------------------------------------------------------------------------- read-only


def _synced(tmp_path: Path, api: SimulatedAPI, folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    db = folder / "m.db"
    o = run_cli(sync_args(db, "--since", "12h"), env_for(api.base_url), tmp_path / "out",
                no_second_wait=True)  # fmt: skip
    assert o.code == 0, o.stderr
    return db


def _mount_ro_file(path: Path) -> None:
    r = subprocess.run(["mount", "--bind", str(path), str(path)], capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot bind-mount here ({r.stderr.strip()}); needs root")
    remount(path, "bind,ro")


def test_read_only_database_file(tmp_path, st_world) -> None:
    """The file is read-only (the folder is not): refused in one line, file untouched."""
    world, api = st_world
    db = _synced(tmp_path, api, tmp_path / "ro")
    before = digest(db)
    if os.geteuid() == 0:
        _mount_ro_file(db)
    else:
        db.chmod(0o444)
    try:
        o = run_cli(sync_args(db, "--since", "31h"), env_for(api.base_url), tmp_path / "out",
                    no_second_wait=True)  # fmt: skip
    finally:
        if os.geteuid() == 0:
            subprocess.run(["umount", str(db)], capture_output=True)
    assert o.code == 1, f"read-only file: exit {o.code}: {o.stderr[-1500:]}"
    assert digest(db) == before, "the read-only file changed"
    check_consistent(db, listable(world), world.config.filter_field)
    _storage_failure(o, "read-only file", "read-only")


def test_read_only_folder(tmp_path, st_world) -> None:
    """The whole file system is read-only (a remounted tmpfs): refused in one line."""
    world, api = st_world
    with tmpfs(tmp_path / "rofs", "16m") as fs:
        db = _synced(tmp_path, api, fs)
        before = digest(*_files(db))
        remount(fs, "ro")
        o = run_cli(sync_args(db, "--since", "31h"), env_for(api.base_url), tmp_path / "out",
                    no_second_wait=True)  # fmt: skip
        _storage_failure(o, "read-only file system", "read-only")
        assert digest(*_files(db)) == before, "a file on the read-only file system changed"
        remount(fs, "rw")
        check_consistent(db, listable(world), world.config.filter_field)


# --------------------------------------------------------------------------- not ours, or broken


def _corrupt_page(db: Path, table: str) -> None:
    """Overwrite one b-tree page of ``table`` (not the first page) with garbage."""
    con = sqlite3.connect(db)
    (root,) = con.execute("SELECT rootpage FROM sqlite_master WHERE name = ?", (table,)).fetchone()
    (page_size,) = con.execute("PRAGMA page_size").fetchone()
    con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    con.close()
    with open(db, "r+b") as f:
        f.seek((root - 1) * page_size)
        f.write(os.urandom(page_size))


CORRUPTIONS = {
    "garbage-header": lambda db: db.write_bytes(os.urandom(100) + db.read_bytes()[100:]),
    "truncated-to-a-third": lambda db: os.truncate(db, db.stat().st_size // 3),
    "requests-page-overwritten": lambda db: _corrupt_page(db, "requests"),
    "sync-windows-page-overwritten": lambda db: _corrupt_page(db, "sync_windows"),
}


@pytest.mark.parametrize("how", list(CORRUPTIONS))
def test_corrupt_database_file(tmp_path, st_world, how: str) -> None:
    _world, api = st_world
    db = _synced(tmp_path, api, tmp_path / "c")
    CORRUPTIONS[how](db)
    o = run_cli(sync_args(db, "--since", "31h"), env_for(api.base_url), tmp_path / "out",
                no_second_wait=True)  # fmt: skip
    line = _storage_failure(o, f"corrupt file ({how})")
    assert any(w in line.lower() for w in ("corrupt", "malformed", "not a database")), (
        f"corrupt file ({how}): the line does not say the file is corrupt: {line}"
    )
    assert "backup" in line.lower() or "restore" in line.lower(), (
        f"corrupt file ({how}): the line does not say what to do: {line}"
    )


def test_foreign_sqlite_file_is_refused_untouched(tmp_path, st_world) -> None:
    _world, api = st_world
    db = tmp_path / "other.db"
    con = sqlite3.connect(db)
    con.execute("CREATE TABLE customers (id INTEGER PRIMARY KEY, name TEXT)")
    con.execute("INSERT INTO customers (name) VALUES ('ada')")
    con.commit()
    con.close()
    before = digest(db)
    o = run_cli(sync_args(db, "--since", "31h"), env_for(api.base_url), tmp_path / "out",
                no_second_wait=True)  # fmt: skip
    _storage_failure(o, "foreign SQLite file", "not a mirror database", "customers")
    assert digest(db) == before
    assert not db.with_name("other.db-wal").exists(), "the foreign file was switched to WAL"


def test_foreign_non_sqlite_file_is_refused_untouched(tmp_path, st_world) -> None:
    _world, api = st_world
    db = tmp_path / "notes.txt"
    db.write_text("my notes, not a database\n" * 200)
    before = digest(db)
    o = run_cli(sync_args(db, "--since", "31h"), env_for(api.base_url), tmp_path / "out",
                no_second_wait=True)  # fmt: skip
    _storage_failure(o, "a text file", "not a mirror database")
    assert digest(db) == before


def test_database_from_a_newer_mirror_is_refused_untouched(tmp_path, st_world) -> None:
    _world, api = st_world
    db = _synced(tmp_path, api, tmp_path / "n")
    con = sqlite3.connect(db)
    con.execute("UPDATE alembic_version SET version_num = '9999'")
    con.commit()
    con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    con.close()
    before = digest(db)
    o = run_cli(sync_args(db, "--since", "31h"), env_for(api.base_url), tmp_path / "out",
                no_second_wait=True)  # fmt: skip
    assert o.code == 1, o.stderr
    line = assert_one_line(o.stderr, "schema too new")
    assert "9999" in line and "upgrade mirror" in line, line
    assert digest(db) == before


@pytest.mark.parametrize("case", ["a-directory", "missing-folder"])
def test_unusable_path(tmp_path, st_world, case: str) -> None:
    _world, api = st_world
    db = tmp_path / "dir.db" if case == "a-directory" else tmp_path / "nope" / "m.db"
    if case == "a-directory":
        db.mkdir()
    o = run_cli(sync_args(db, "--since", "31h"), env_for(api.base_url), tmp_path / "out",
                no_second_wait=True)  # fmt: skip
    _storage_failure(o, case)
    assert not (tmp_path / "nope").exists()
