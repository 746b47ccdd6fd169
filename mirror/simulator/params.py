"""Reading a call's query parameters the way fal does, and fal's error answer.

Every operation of the simulated API parses its parameters with these, so the rules are
the same everywhere: a scalar given twice uses its last value; a list parameter is
repeated and/or comma-separated (deduplicated, in order); times are RFC 3339 date-times
or ``YYYY-MM-DD``; a bad value is a 400 ``validation_error`` whose message names the
parameter. ``ApiError`` is an error answer in fal's JSON shape, raised by the operations
and sent by the server.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta, tzinfo
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import orjson

__all__ = [
    "MAX_IDS",
    "ApiError",
    "decode_cursor",
    "encode_cursor",
    "endpoint_ids",
    "enum",
    "integer",
    "invalid",
    "is_endpoint_id",
    "is_uuid",
    "last",
    "parse_time",
    "split",
    "timezone",
    "window",
    "window_or_default",
]

#: the most values a list parameter (``endpoint_id``, ``request_id``...) takes
MAX_IDS = 50
_ENDPOINT_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*(/[A-Za-z0-9][A-Za-z0-9._-]*)+$")
_UUID_RE = re.compile(
    r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$"
)
_DATE_RE = re.compile(r"^(\d{4})-(\d{2})-(\d{2})$")
_DATETIME_RE = re.compile(
    r"^(\d{4})-(\d{2})-(\d{2})[Tt ](\d{2}):(\d{2}):(\d{2})(?:\.(\d+))?"
    r"(?:([Zz])|([+-])(\d{2}):(\d{2}))?$"
)


class ApiError(Exception):
    """An error answer in fal's JSON shape: `{"error": {"type", "message"}}`."""

    def __init__(self, status: int, kind: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.kind = kind
        self.message = message

    def body(self) -> bytes:
        return orjson.dumps({"error": {"type": self.kind, "message": self.message}})


def invalid(message: str) -> ApiError:
    """A 400 ``validation_error``."""
    return ApiError(400, "validation_error", message)


def encode_cursor(page: int) -> str:
    """fal's cursor: base64 of the page number as text (`Mg==` is page 2)."""
    return base64.b64encode(str(page).encode()).decode()


def decode_cursor(value: str) -> int:
    """The page number an `encode_cursor` cursor names; 400 for anything else."""
    try:
        text = base64.b64decode(value + "=" * (-len(value) % 4), validate=True).decode("ascii")
    except (binascii.Error, UnicodeDecodeError, ValueError):
        raise invalid(f"Invalid cursor {value!r}: not a cursor returned by this API") from None
    if not text.isdigit() or not 0 < len(text) <= 18 or int(text) < 1:
        raise invalid(f"Invalid cursor {value!r}: not a cursor returned by this API")
    return int(text)


def parse_time(name: str, value: str) -> datetime:
    """RFC 3339 date-time (Z, offset, or none meaning UTC; any fraction) or YYYY-MM-DD."""
    try:
        m = _DATE_RE.match(value)
        if m:
            y, mo, d = (int(g) for g in m.groups())
            return datetime(y, mo, d, tzinfo=UTC)
        m = _DATETIME_RE.match(value)
        if m:
            y, mo, d, h, mi, s = (int(g) for g in m.groups()[:6])
            frac, _zulu, sign, oh, om = m.groups()[6:]
            micro = int((frac or "0")[:6].ljust(6, "0"))
            offset = timedelta()
            if sign:
                if int(oh) > 23 or int(om) > 59:
                    raise ValueError("offset out of range")
                offset = timedelta(hours=int(oh), minutes=int(om)) * (1 if sign == "+" else -1)
            local = datetime(y, mo, d, h, mi, s, micro, tzinfo=UTC)
            return local - offset
    except (ValueError, OverflowError):
        pass
    hint = ""
    if " " in value and re.search(r" \d{2}:\d{2}$", value):
        hint = " (a '+' in the offset must be URL-encoded as %2B)"
    raise invalid(
        f"Invalid {name} {value!r}: expected an RFC 3339 date-time such as "
        f"2025-01-01T00:00:00Z or a date such as 2025-01-01{hint}"
    )


def last(params: Mapping[str, list[str]], name: str) -> str | None:
    """A scalar parameter: its last value if given more than once."""
    values = params.get(name)
    return values[-1] if values else None


def split(params: Mapping[str, list[str]], name: str) -> list[str]:
    """All values of a repeated and/or comma-separated parameter, in order, deduplicated."""
    out: list[str] = []
    for value in params.get(name, ()):
        for part in value.split(","):
            part = part.strip()
            if part and part not in out:
                out.append(part)
    return out


def enum(params: Mapping[str, list[str]], name: str, allowed: Sequence[str]) -> str | None:
    value = last(params, name)
    if value is None:
        return None
    if value not in allowed:
        raise invalid(f"Invalid {name} {value!r}; allowed: {', '.join(allowed)}")
    return value


def integer(
    params: Mapping[str, list[str]], name: str, default: int, lo: int, hi: int | None
) -> int:
    value = last(params, name)
    if value is None:
        return default
    if not re.fullmatch(r"-?\d{1,18}", value):
        raise invalid(f"Invalid {name} {value!r}: must be an integer")
    number = int(value)
    if number < lo or (hi is not None and number > hi):
        bound = f"between {lo} and {hi}" if hi is not None else f"at least {lo}"
        raise invalid(f"Invalid {name} {number}: must be {bound}")
    return number


def is_endpoint_id(value: str) -> bool:
    """``owner/name`` or ``owner/name/route...``, each part starting with a letter or digit."""
    return _ENDPOINT_ID_RE.match(value) is not None


def is_uuid(value: str) -> bool:
    return _UUID_RE.match(value) is not None


def endpoint_ids(params: Mapping[str, list[str]], *, required: bool = True) -> list[str]:
    """``endpoint_id``: 1-50 well-formed ids (none at all is allowed unless ``required``)."""
    ids = split(params, "endpoint_id")
    if not ids and required:
        raise invalid("endpoint_id is required (1-50 ids, repeated or comma-separated)")
    if len(ids) > MAX_IDS:
        raise invalid(f"Too many endpoint_id values: {len(ids)} given, at most 50 allowed")
    for endpoint_id in ids:
        if not is_endpoint_id(endpoint_id):
            raise invalid(
                f"Invalid endpoint_id {endpoint_id!r}: expected owner/name or owner/name/route"
            )
    return ids


def window(
    params: Mapping[str, list[str]],
) -> tuple[datetime | None, datetime | None]:
    """``start`` and ``end`` as given (None where absent); an explicit start after an
    explicit end is a 400."""
    start_text, end_text = last(params, "start"), last(params, "end")
    start = parse_time("start", start_text) if start_text is not None else None
    end = parse_time("end", end_text) if end_text is not None else None
    if start is not None and end is not None and start > end:
        raise invalid(f"start ({start_text}) must not be later than end ({end_text})")
    return start, end


def window_or_default(
    params: Mapping[str, list[str]], now: datetime, default: timedelta
) -> tuple[datetime, datetime]:
    """``start`` and ``end`` with fal's defaults: ``default`` before ``now``, and ``now``.
    An explicit start after an explicit end is a 400 (`window`); a default never turns a
    range over: an explicit ``end`` before the default start, or an explicit ``start`` after
    ``now``, asks for an empty range (an empty answer, not an error)."""
    start, end = window(params)
    if end is None:
        end = now if start is None else max(now, start)
    if start is None:
        start = min(now - default, end)
    return start, end


def timezone(name: str) -> tzinfo:
    """``timezone``: an IANA name (UTC by default)."""
    if name.upper() in ("UTC", "Z", "ETC/UTC"):
        return UTC
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise invalid(
            f"Invalid timezone {name!r}: expected an IANA name such as Europe/Paris"
        ) from None
