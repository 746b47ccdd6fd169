"""A file a command writes (the report, the metrics textfile): refused before any work when
it cannot be written, so a long run does not fail at its very end."""

from __future__ import annotations

import os
from pathlib import Path

from mirror.errors import ConfigError


def check_writable(path: Path, flag: str, example: str) -> None:
    """Refuse (`ConfigError` naming ``flag``) a path that is a directory (``example``: a
    file name to suggest instead), or whose directory is missing or not writable."""
    if path.is_dir():
        raise ConfigError(f"{flag} {path} is a directory; name a file such as {example}")
    parent = path.parent
    if not parent.is_dir():
        raise ConfigError(f"{flag} {path}: the directory {parent} does not exist")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise ConfigError(f"{flag} {path}: cannot write in {parent} (permissions)")
