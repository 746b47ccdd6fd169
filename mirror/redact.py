"""What mirror shows of text it did not write itself: no secret, no control character.

Two duties, applied where text leaves the program: the CLI's lines on stderr, the log
handler (``RedactFilter``), the ``sync_runs.error`` column, and the table output.

- ``redact(text)`` replaces every registered secret with ``[redacted]``, ignoring case.
  ``register_key`` registers the API key where it is read (``mirror.auth.load_key``) and
  where a ``FalClient`` is given one: the whole key, its id and its secret on their own
  (``kid:SECRET``, ``SECRET``), and their JSON-, repr- and URL-escaped spellings. So an
  exception text quoting the ``Authorization`` header, or a proxy echoing it in an error
  message, shows ``Key [redacted]``.
- ``printable(text, limit)`` makes control characters visible as escapes (``\\n``,
  ``\\x1b``, ``\\u202e``): C0 and C1 controls, DEL, and the invisible characters that
  reorder or break text (bidi controls, line and paragraph separators). Text from a server
  then cannot start a new line, forge a ``mirror:`` line, send a terminal escape sequence
  (colours, a window title, a hyperlink) or hide part of itself; ``limit`` cuts it with an
  ellipsis. Only what is printed is changed: the database keeps what the server sent.
"""

from __future__ import annotations

import json
import logging
import re
import threading
from urllib.parse import quote

__all__ = [
    "MAX_LOG_MESSAGE",
    "MAX_MESSAGE",
    "REDACTED",
    "RedactFilter",
    "printable",
    "redact",
    "register_key",
    "register_secret",
]

REDACTED = "[redacted]"
#: characters of an error line's message shown at most
MAX_MESSAGE = 1000
#: characters of a log line's message at most (they quote URLs with up to 50 endpoint ids)
MAX_LOG_MESSAGE = 8000
#: a secret (or part of the key) shorter than this is not redacted: it would blank out
#: ordinary words in every message, and no real key is that short
MIN_FRAGMENT = 6

_lock = threading.Lock()
_secrets: set[str] = set()
_pattern: re.Pattern[str] | None = None


def register_secret(secret: str) -> None:
    """Redact ``secret`` (and its escaped spellings) from every message from now on."""
    global _pattern
    if len(secret) < MIN_FRAGMENT:
        return
    forms = {
        secret,
        json.dumps(secret)[1:-1],
        repr(secret)[1:-1],
        quote(secret, safe=""),
    }
    with _lock:
        if forms <= _secrets:
            return
        _secrets.update(f for f in forms if f)
        # longest first, so the whole key is replaced before a part of it
        alternatives = sorted(_secrets, key=len, reverse=True)
        _pattern = re.compile("|".join(map(re.escape, alternatives)), re.IGNORECASE)


def register_key(key: str) -> None:
    """The API key: whole, and its ``id`` and ``secret`` halves on their own.

    Text refused as a key (several lines, spaces) is registered word by word too: a key
    file's second line may hold an old key.
    """
    register_secret(key)
    for word in key.split():
        for part in (word, *word.split(":")):
            register_secret(part)


def redact(text: str) -> str:
    """``text`` with every registered secret replaced by ``[redacted]``."""
    pattern = _pattern
    if pattern is None or not text:
        return text
    return pattern.sub(REDACTED, text)


_CONTROL = re.compile(
    "[\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u2028\u2029\u202a-\u202e\u2066-\u2069]"
)
_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _escape(m: re.Match[str]) -> str:
    c = m.group()
    named = _NAMED.get(c)
    if named:
        return named
    return f"\\x{ord(c):02x}" if ord(c) < 0x100 else f"\\u{ord(c):04x}"


def printable(text: str, limit: int | None = None) -> str:
    """``text`` safe for a terminal: control characters escaped, at most ``limit`` long."""
    if not text.isprintable():
        text = _CONTROL.sub(_escape, text)
    if limit is not None and len(text) > limit:
        text = text[: limit - 1] + "…"
    return text


class RedactFilter(logging.Filter):
    """On a log handler: the record's message (and traceback) without secrets, and its
    message on one printable line (server text is quoted in log lines too)."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.msg = printable(redact(record.getMessage()), MAX_LOG_MESSAGE)
        record.args = None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact(record.exc_text)
        if record.stack_info:
            record.stack_info = redact(record.stack_info)
        return True
