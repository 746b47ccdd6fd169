"""The writer lock's message names its holder, even one that has only just taken it."""

from __future__ import annotations

import fcntl
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from mirror import lock
from mirror.errors import LockedError


def test_holder_pid_written_just_after_the_flock_is_still_named(tmp_path: Path) -> None:
    """A loser that reads the lock file between the winner's flock and its PID write waits
    briefly for the PID instead of printing a message without it."""
    path = tmp_path / "m.db.lock"
    path.touch()
    fd = os.open(path, os.O_RDWR)
    try:
        writer = threading.Timer(0.1, lambda: path.write_text("4242\n"))
        writer.start()
        assert lock.read_holder(fd, settle=2.0) == "4242"
        writer.join()
    finally:
        os.close(fd)


def test_no_holder_pid_gives_up_after_the_settle_time(tmp_path: Path) -> None:
    path = tmp_path / "m.db.lock"
    path.write_text("not a pid")
    fd = os.open(path, os.O_RDWR)
    try:
        started = time.monotonic()
        assert lock.read_holder(fd, settle=0.1) == ""
        assert time.monotonic() - started >= 0.1
    finally:
        os.close(fd)


def test_busy_lock_names_the_other_process(tmp_path: Path) -> None:
    db = tmp_path / "m.db"
    child = subprocess.Popen(
        [sys.executable, "-c",
         "import sys, time\nfrom pathlib import Path\nfrom mirror import lock\n"
         "with lock.hold(Path(sys.argv[1])):\n    print('held', flush=True)\n    time.sleep(30)\n",
         str(db)],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert child.stdout is not None and child.stdout.readline() == "held\n"
        with pytest.raises(LockedError) as caught, lock.hold(db):
            pass
        assert str(caught.value) == (
            f"another mirror sync (pid {child.pid}) is writing {db} (a sync, a repair or a "
            "migration); try again later, or pass --wait"
        )
    finally:
        child.kill()
        child.wait()
    with lock.hold(db):  # the kernel dropped the dead holder's lock
        fd = os.open(lock.lock_path(db), os.O_RDWR)
        try:
            with pytest.raises(BlockingIOError):
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        finally:
            os.close(fd)


# --------------------------------------------------------------------------- one file, many names


def _hold_in_child(db: Path) -> subprocess.Popen[str]:
    """Another process holding the writer lock of ``db`` (as spelled here) until killed."""
    child = subprocess.Popen(
        [sys.executable, "-c",
         "import sys, time\nfrom pathlib import Path\nfrom mirror import lock\n"
         "with lock.hold(Path(sys.argv[1])):\n    print('held', flush=True)\n    time.sleep(60)\n",
         str(db)],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert child.stdout is not None and child.stdout.readline() == "held\n", "the child never held"
    return child


def _other_names(tmp_path: Path) -> tuple[Path, dict[str, Path]]:
    """A database file and other names of it: a symlink to it, a path through a symlinked
    folder, and a path with ``..`` in it."""
    data = tmp_path / "data"
    data.mkdir()
    db = data / "s.db"
    db.touch()
    (tmp_path / "link-to-s.db").symlink_to(db)
    (tmp_path / "data-link").symlink_to(data, target_is_directory=True)
    (tmp_path / "other").mkdir()
    return db, {
        "symlink to the file": tmp_path / "link-to-s.db",
        "symlinked folder": tmp_path / "data-link" / "s.db",
        "dot-dot": tmp_path / "other" / ".." / "data" / "s.db",
    }


def test_every_name_of_a_file_takes_the_same_lock(tmp_path: Path) -> None:
    db, names = _other_names(tmp_path)
    child = _hold_in_child(db)
    try:
        got = {}
        for what, other in names.items():
            try:
                with lock.hold(other):
                    got[what] = "taken while another process held it"
            except LockedError:
                got[what] = "busy"
        assert got == dict.fromkeys(names, "busy"), f"a second name of {db} got its own lock"
    finally:
        child.kill()
        child.wait()


def test_sync_and_copy_through_a_symlink_wait_for_the_writer(tmp_path: Path, monkeypatch) -> None:
    """`mirror sync --db link` must not log the live run of `mirror sync --db s.db` as killed,
    and `mirror copy --from link` must not copy a run in progress: both exit 75."""
    from click.testing import CliRunner

    from mirror.cli import cli
    from mirror.store import Store

    db, names = _other_names(tmp_path)
    db.unlink()
    Store.open(str(db)).close()
    link = names["symlink to the file"]
    monkeypatch.setenv("FAL_KEY", "key-id:key-secret")
    monkeypatch.setenv("MIRROR_BASE_URL", "http://127.0.0.1:9")  # nothing to reach, ever
    monkeypatch.setenv("MIRROR_RETRY_ATTEMPTS", "1")
    child = _hold_in_child(db)
    try:
        got = {}
        for args in (
            ["sync", "--db", str(link), "--endpoint", "acme/app"],
            ["copy", "--from", str(link), "--to", str(tmp_path / "copy.db")],
        ):
            r = CliRunner().invoke(cli, args)
            got[args[0]] = (r.exit_code, r.stderr.startswith("mirror: busy: another mirror sync"))
        assert got == {"sync": (75, True), "copy": (75, True)}, (
            f"a command through a symlink ignored the writer's lock: {got}"
        )
        assert not (tmp_path / "copy.db").exists(), "copy started while a sync held the source"
    finally:
        child.kill()
        child.wait()
