"""Where the API key comes from: the environment, or a key file only its owner can read.

Order: ``FAL_KEY``; else ``FAL_KEY_ID`` + ``FAL_KEY_SECRET`` (as fal's own SDKs do); else
the file named by ``MIRROR_KEY_FILE``, or ``$XDG_CONFIG_HOME/mirror/fal-key`` if it exists.
A key file readable by group or others is refused. Never from a command-line flag (flags
show up in ``ps`` and shell history), and never printed, logged or stored.

A key must be one line of printable ASCII without spaces (fal's ``key_id:key_secret``);
anything else, e.g. a key file with a second line holding an old key, is refused with a
line naming where the key came from and never its content: sent as is it would make the
HTTP library fail with an error quoting the whole header. Each key read is registered
with ``mirror.redact``, so no message shown, logged or stored can contain it.
"""

from __future__ import annotations

import stat
from collections.abc import Mapping
from pathlib import Path

from mirror.errors import ConfigError
from mirror.redact import register_key


def default_key_file(env: Mapping[str, str]) -> Path:
    base = env.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "mirror" / "fal-key"


def load_key(env: Mapping[str, str]) -> str:
    key = env.get("FAL_KEY", "").strip()
    if key:
        return checked_key(key, "FAL_KEY")
    kid, secret = env.get("FAL_KEY_ID", "").strip(), env.get("FAL_KEY_SECRET", "").strip()
    if kid and secret:
        checked_key(kid, "FAL_KEY_ID")
        checked_key(secret, "FAL_KEY_SECRET")
        return checked_key(f"{kid}:{secret}", "FAL_KEY_ID and FAL_KEY_SECRET")
    if kid or secret:
        raise ConfigError("FAL_KEY_ID and FAL_KEY_SECRET must be set together (or set FAL_KEY)")
    named = env.get("MIRROR_KEY_FILE")
    path = Path(named) if named else default_key_file(env)
    if named or path.exists():
        return _read_key_file(path)
    raise ConfigError(
        "no fal API key: set FAL_KEY (or FAL_KEY_ID and FAL_KEY_SECRET), "
        "or put it in a key file readable only by you (MIRROR_KEY_FILE)"
    )


def _read_key_file(path: Path) -> str:
    try:
        st = path.stat()
    except OSError as e:
        raise ConfigError(f"key file {path}: {e.strerror}") from None
    if st.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise ConfigError(
            f"key file {path} is readable by others (mode {stat.filemode(st.st_mode)}); "
            f"run: chmod 600 {path}"
        )
    try:
        key = path.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"key file {path} cannot be read: {e}") from None
    if not key:
        raise ConfigError(f"key file {path} is empty")
    return checked_key(key, f"key file {path}")


def checked_key(key: str, source: str) -> str:
    """``key`` if it can be one: visible ASCII (``!`` to ``~``), no space, one line.

    Registered for redaction even when refused: the refusal names ``source`` only, but a
    caller may still hold the text.
    """
    register_key(key)
    if not all("!" <= c <= "~" for c in key):
        raise ConfigError(
            f"{source} is not a key: it holds a line break, a space, a control or a non-ASCII "
            "character; it must be one line, key_id:key_secret (the key is not shown)"
        )
    return key
