"""One writer per database: an advisory ``flock`` on ``<db>.lock``, next to the real file.

The kernel drops a ``flock`` when its holder dies, SIGKILL included, so a crashed sync never
leaves a stale lock behind and there is no PID file to clean up. The lock file is created
private to the user and holds nothing but the holder's PID (for the error message).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path

from mirror.errors import LockedError, StoreError
from mirror.sqlitefile import check_file


def lock_path(db_path: Path) -> Path:
    """The lock file of a database: next to the real file, whatever name it was given (a
    symlink, a path through a symlinked folder or ``..``), so all its names share one lock."""
    real = db_path.resolve()
    return real.with_name(real.name + ".lock")


#: locks this process holds, with a count: `hold` is re-entrant (sync holds the lock and then
#: opens the store, whose migration step takes the same lock)
_held: dict[str, int] = {}
_held_guard = threading.Lock()
# In a child process made by ``os.fork`` the locks counted as held are the parent's, not
# the child's: its own `hold` must take them again. One thread runs after a fork: no guard
# to take (it may be the parent's).
os.register_at_fork(after_in_child=_held.clear)


@contextlib.contextmanager
def hold(db_path: Path, *, wait: float = 0.0) -> Iterator[None]:
    """Hold the database's writer lock; raise LockedError if it is busy after ``wait`` s.

    A path that is not a regular file (``/dev/null``, a directory) is refused before the
    lock file is created next to it.
    """
    check_file(db_path)
    path = lock_path(db_path)
    key = str(path)
    with _held_guard:
        if _held.get(key):
            _held[key] += 1
            reentered = True
        else:
            reentered = False
    if reentered:
        try:
            yield
        finally:
            with _held_guard:
                _held[key] -= 1
        return
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    except OSError as e:
        raise StoreError(f"cannot create lock file {path}: {e.strerror}") from None
    try:
        deadline = time.monotonic() + wait
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    holder = read_holder(fd, settle=0.5)
                    raise LockedError(
                        f"another mirror sync{f' (pid {holder})' if holder else ''} is writing "
                        f"{db_path} (a sync, a repair or a migration); try again later, or pass --wait"
                    ) from None
                time.sleep(0.05)
        # one fixed-width write, never a truncate first: a process that finds the lock busy
        # never reads an empty file from a holder that has been running for a while
        os.pwrite(fd, f"{os.getpid():<20}\n".encode(), 0)
        with _held_guard:
            _held[key] = 1
        try:
            yield
        finally:
            with _held_guard:
                _held.pop(key, None)
    finally:
        os.close(fd)  # closing the descriptor releases the flock


def is_held(db_path: Path) -> bool:
    """Whether this process holds the database's writer lock (inside ``hold``)."""
    key = str(lock_path(db_path))
    with _held_guard:
        return bool(_held.get(key))


def read_holder(fd: int, *, settle: float = 0.0) -> str:
    """The holder's PID, waiting up to ``settle`` s for a holder that has only just taken the
    lock (it writes its PID right after the ``flock``)."""
    deadline = time.monotonic() + settle
    while True:
        try:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip()
        except OSError:
            return ""
        if holder.isdigit() or time.monotonic() >= deadline:
            return holder if holder.isdigit() else ""
        time.sleep(0.01)
