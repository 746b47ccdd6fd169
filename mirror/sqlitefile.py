"""The SQLite file behind ``--db``: what it may be, and the one way to open it read-only.

- `check_file`: a mirror is a regular file, or a name not taken yet. ``/dev/null``, a
  directory, a named pipe or a socket is refused before anything is created next to it (the
  lock file, SQLite's journal).
- `sqlite_uri`: a ``file:`` URI with the path escaped, so that ``?``, ``#`` and ``%`` in a
  name stay part of the name.
- `connect_readonly`: the connection of every reader (`mirror query`, `stats`, `status`,
  `sql`, `browse`, the look before a write): ``mode=ro``, SQLite refuses to write. In a
  folder this process cannot write (a read-only mount, someone else's folder), SQLite could
  not create the ``-shm`` index a WAL file needs, and would refuse to open it at all; there,
  when no writer has the file open (no ``-shm``, nothing in the ``-wal``), it is opened
  ``immutable=1``: read as the file is, without that index and without locks.
"""

from __future__ import annotations

import os
import sqlite3
import stat
import urllib.parse
from pathlib import Path

from mirror.errors import StoreError

_KINDS = (
    (stat.S_ISDIR, "a directory"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISFIFO, "a named pipe"),
    (stat.S_ISSOCK, "a socket"),
)


def check_file(path: Path) -> None:
    """Refuse a path that exists and is not a regular file (symlinks followed), as a
    storage error: the one a sync gets for a directory."""
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        return  # a new database (or a dangling symlink, which creating the file follows)
    except OSError as e:
        raise StoreError(f"{path}: {e.strerror}") from None
    if stat.S_ISREG(mode):
        return
    kind = next((name for test, name in _KINDS if test(mode)), "not a regular file")
    raise StoreError(
        f"{path} is {kind}, not a SQLite database file; give the path of a mirror file, or of "
        "a new one"
    )


def sqlite_uri(path: Path, **params: str) -> str:
    """A ``file:`` URI for a path, escaped so that ``?`` or ``#`` in a name stay literal."""
    quoted = urllib.parse.quote(str(path.absolute()))
    return f"file:{quoted}?{urllib.parse.urlencode(params)}"


def readonly_params(path: Path) -> dict[str, str]:
    """The URI parameters of a read-only open of ``path`` (see the module docstring)."""
    params = {"mode": "ro"}
    real = path.resolve()  # SQLite puts -wal and -shm next to the real file
    if not os.access(real.parent, os.W_OK):
        shm = real.with_name(real.name + "-shm")
        wal = real.with_name(real.name + "-wal")
        if not shm.exists() and (not wal.exists() or wal.stat().st_size == 0):
            params["immutable"] = "1"
    return params


def connect_readonly(path: Path, *, check_same_thread: bool = True) -> sqlite3.Connection:
    """A connection that can only read ``path``, which must exist (nothing is created)."""
    return sqlite3.connect(
        sqlite_uri(path, **readonly_params(path)), uri=True, check_same_thread=check_same_thread
    )
