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
        assert lock._read_holder(fd, settle=2.0) == "4242"
        writer.join()
    finally:
        os.close(fd)


def test_no_holder_pid_gives_up_after_the_settle_time(tmp_path: Path) -> None:
    path = tmp_path / "m.db.lock"
    path.write_text("not a pid")
    fd = os.open(path, os.O_RDWR)
    try:
        started = time.monotonic()
        assert lock._read_holder(fd, settle=0.1) == ""
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
