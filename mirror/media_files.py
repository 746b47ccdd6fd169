"""The media store on disk: files named by their SHA-256, written whole or not at all.

Layout under the root (``<db>.media/`` beside a SQLite mirror, or ``--media-dir``)::

    ab/ab12…ef      a file, named by the hex SHA-256 of its bytes (two-character folders)
    tmp/            downloads in progress, each under a random name
    .lock           held by the one run that writes here

No name on disk comes from a server or a payload (the original name is kept in the
database), so nothing a server says can make a path leave the root. A download is written
into ``tmp/``, checked by the caller, then renamed to its hash's name: a run killed at any
point leaves at most a file in ``tmp/`` (cleared by the next run, which holds the lock),
never a half file under a hash's name. Files are not fsynced one by one (that alone made
archiving small files three times slower, ``bench/media_bench.py``): after a power cut, as
for the database's last transactions, the last files may be short; ``mirror verify
--media`` finds them and ``--repair`` fetches them again. Folders are created 0700 and files
0600, like the database; an existing root that is not a folder, or is a symlink, is refused.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import os
import re
import secrets
from collections.abc import Iterator
from pathlib import Path

from mirror.errors import ConfigError, LockedError, StoreError

_SHA = re.compile(r"^[0-9a-f]{64}$")
#: bytes read at a time when hashing a stored file
HASH_CHUNK = 1 << 20


def default_media_dir(db_path: Path) -> Path:
    """Where a SQLite mirror's files go by default: ``<db>.media`` beside it."""
    return db_path.with_name(db_path.name + ".media")


def sha256_file(path: Path) -> tuple[str, int]:
    """The hex SHA-256 and size of the file at ``path``."""
    h = hashlib.sha256()
    size = 0
    with path.open("rb") as f:
        while chunk := f.read(HASH_CHUNK):
            h.update(chunk)
            size += len(chunk)
    return h.hexdigest(), size


class MediaDir:
    """A media store's root; `open` checks or creates it."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.tmp = root / "tmp"

    @classmethod
    def open(cls, root: Path, *, create: bool = True) -> MediaDir:
        if root.is_symlink():
            raise ConfigError(f"media folder {root} is a symlink; give the real folder")
        if root.exists() and not root.is_dir():
            raise ConfigError(f"media folder {root} exists and is not a folder")
        if not root.exists():
            if not create:
                raise ConfigError(f"media folder {root} does not exist")
            if not root.parent.is_dir():
                raise ConfigError(f"folder {root.parent} does not exist")
            try:
                root.mkdir(mode=0o700)
            except FileExistsError:
                pass
            except OSError as e:
                raise StoreError(f"cannot create media folder {root}: {e.strerror}") from None
        store = cls(root)
        if create:
            store.tmp.mkdir(mode=0o700, exist_ok=True)
        return store

    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        """The store's writer lock (an advisory flock the kernel drops when its holder dies):
        `LockedError` if another run holds it."""
        fd = os.open(self.root / ".lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as e:
                if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                    raise LockedError(
                        f"another mirror run is archiving into {self.root}; try again later"
                    ) from None
                raise
            yield
        finally:
            os.close(fd)

    def path_of(self, sha: str) -> Path:
        """Where the file with this hash lives; anything but a hex SHA-256 is refused."""
        if not _SHA.match(sha):
            raise ValueError(f"{sha!r} is not a hex SHA-256")
        return self.root / sha[:2] / sha

    def clear_temps(self) -> int:
        """Remove what killed runs left in ``tmp/``; call it holding `lock`."""
        n = 0
        for entry in os.scandir(self.tmp):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(entry.path)
                n += 1
        return n

    def new_temp(self) -> tuple[int, Path]:
        """A new, empty, private file in ``tmp/``: its descriptor and path."""
        path = self.tmp / f"dl-{secrets.token_hex(12)}"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        return fd, path

    def keep(self, tmp: Path, sha: str) -> Path:
        """Move a checked download to its hash's name (replacing a copy of the same bytes
        a killed run may have put there before it could record it)."""
        final = self.path_of(sha)
        final.parent.mkdir(mode=0o700, exist_ok=True)
        os.replace(tmp, final)
        return final

    def stray_files(self, known: set[str]) -> list[Path]:
        """Files under hash names that ``known`` (the hashes the database lists) does not."""
        out = []
        for sub in sorted(self.root.iterdir()):
            if sub.name == "tmp" or not sub.is_dir() or len(sub.name) != 2:
                continue
            for f in sorted(sub.iterdir()):
                if f.name not in known:
                    out.append(f)
        return out
