"""Times: parsing what users type, and the one text shape every timestamp is stored in.

Every stored timestamp is UTC ISO-8601 text of exactly one shape,
``YYYY-MM-DDTHH:MM:SS.ffffffZ`` (27 characters), so that text order is time order in SQLite,
in the ``sqlite3`` shell and in Datasette. The machine's local timezone is never consulted:
naive inputs are taken as UTC.
"""

from __future__ import annotations

import re
from datetime import UTC, date, datetime, timedelta

_RELATIVE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(s|m|h|d|w)\s*$", re.IGNORECASE)
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
_DATE_ONLY = re.compile(r"^\d{4}-\d{2}-\d{2}$")


def utcnow() -> datetime:
    return datetime.now(UTC)


def to_text(dt: datetime) -> str:
    """The canonical stored shape of an aware datetime."""
    if dt.tzinfo is None:
        raise ValueError("naive datetime")
    return dt.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def from_text(text: str) -> datetime:
    """Parse any RFC 3339 / ISO-8601 date-time; an offset-less one is UTC."""
    if _DATE_ONLY.match(text):
        return datetime.combine(date.fromisoformat(text), datetime.min.time(), UTC)
    dt = datetime.fromisoformat(text)
    if dt.tzinfo is None:
        return dt.replace(tzinfo=UTC)
    return dt.astimezone(UTC)


#: The range of plausible request times, as prefixes of the stored text (which compares
#: like time): years 2000 to 2100. fal's history starts long after 2000 and no clock runs a
#: century ahead; anything outside is a zeroed or corrupt clock, and a stored timestamp
#: stays far from datetime's limits (years 1 and 9999) under the arithmetic done on it.
EARLIEST = "2000"
LATEST = "2101"
#: the separators of the stored shape, at positions 4, 7, 10, 13, 16 and 19: ``text[4:20:3]``
_SHAPE = "--T::."


def normalize(text: str) -> str:
    """Any RFC 3339 timestamp from the API -> the canonical 27-character UTC text.

    Every shape is parsed whole (``ValueError`` otherwise, out of range included): what is
    stored is read back later, and text order must be time order. The two common shapes
    are only checked, not converted.
    """
    n = len(text)
    if n == 27 and text[26] == "Z" and text[4:20:3] == _SHAPE:
        out = text
    elif n == 20 and text[19] == "Z" and text[4:17:3] == "--T::":
        out = text[:19] + ".000000Z"
    else:
        try:
            out = to_text(from_text(text))
        except OverflowError:  # beyond datetime's range once in UTC
            raise ValueError(f"{text!r} is out of range") from None
    datetime.fromisoformat(out)  # ASCII digits, real dates and times (ValueError otherwise)
    if not EARLIEST <= out < LATEST:
        raise ValueError(f"{text!r} is not between {EARLIEST} and {LATEST}")
    return out


def api_param(dt: datetime) -> str:
    """A window bound as sent to the API: whole seconds, ``Z``."""
    return dt.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_duration(text: str) -> timedelta:
    """``90m``, ``36h``, ``7d``, ``2w``, ``30s`` or ``0``; negative or malformed is an error."""
    t = text.strip()
    if t in ("0", "0s"):
        return timedelta(0)
    m = _RELATIVE.match(t)
    if not m:
        if t.startswith("-"):
            raise ValueError(f"{text!r} is negative; a duration must be zero or more")
        raise ValueError(f"{text!r} is not a duration; use a number and a unit: 90m, 36h, 7d, 2w")
    return timedelta(seconds=float(m.group(1)) * _UNITS[m.group(2).lower()])


def parse_when(text: str, now: datetime) -> datetime:
    """A WHEN from the command line: ISO-8601 date or date-time, ``now``, or relative (``36h``).

    A relative value means that long before ``now``. Dates are UTC midnight; date-times
    without an offset are UTC, never local time.
    """
    t = text.strip()
    if not t:
        raise ValueError("empty time")
    if t.lower() == "now":
        return now
    m = _RELATIVE.match(t)
    if m:
        return now - timedelta(seconds=float(m.group(1)) * _UNITS[m.group(2).lower()])
    try:
        # accept a space between date and time, and a trailing Z
        return from_text(t.replace(" ", "T", 1) if " " in t else t)
    except ValueError:
        raise ValueError(
            f"{text!r} is not a time; use an ISO date (2026-11-01), a date-time "
            "(2026-11-01T12:00:00Z) or a relative age (90m, 36h, 7d)"
        ) from None
