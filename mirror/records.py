"""What a request row is: the record a page of the list call becomes and the store keeps.

- ``Row``: one request as mirror keeps it, the API's fields (``API_FIELDS``) then
  ``status``, derived from ``ended_at`` and ``status_code`` (``derive_status``), in the
  order of the ``requests`` table's columns. A ``NamedTuple``: on the ingest path rows stay
  tuples (built and flattened into statements at C speed); everywhere else they are read
  by name.
- ``parse_page``: a page of the list call as a ``Page`` of rows, validated strictly; a
  page with anything wrong (types, impossible times or values, a cursor that is not one)
  raises ``BadDataError`` and is never handed on. ``check_asked`` refuses rows the call did
  not ask for. Timestamps are stored in one text shape (``mirror.timeparse``).
- The upsert's field rules (``upsert_fields``): which fields an upsert always overwrites
  and which it keeps when the server sends null; ``differing_fields`` compares two rows by
  the same rules, so a mirror the upsert has repaired compares equal.
"""

from __future__ import annotations

import functools
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, NamedTuple, cast

import orjson

from mirror.errors import BadDataError
from mirror.timeparse import EARLIEST, LATEST, from_text, normalize, to_text

#: items a page of the list call holds at most: what mirror asks for, and fal's limit
PAGE_LIMIT = 100
#: the status codes a request can have ended with: what HTTP allows; others are refused
MIN_STATUS, MAX_STATUS = 100, 599
#: The longest duration kept, in seconds: 30 days. No request plausibly runs that long,
#: and the hourly summary adds durations up as whole microseconds in a 64-bit integer: at
#: this bound an hour of one endpoint overflows only past 3.5 million requests, where
#: 1e308 overflows with two. Durations are also at least 0.
MAX_DURATION = 30 * 86400
#: The largest ``billable_units`` kept: a raw unit count (images, GPU-seconds...) of one
#: request. The summary adds it up the same way (micro-units, 64-bit): 9,000 requests at
#: the bound in one hour of one endpoint before it could overflow.
MAX_BILLABLE_UNITS = 1e9
#: How far outside the window asked for a row's timestamps may lie and still be in it: the
#: bounds are sent as whole seconds, and fal does not say whether ``end`` is inclusive or
#: whether it compares to the second.
WINDOW_SLACK = timedelta(seconds=1)


class Row(NamedTuple):
    """One request: the API's fields, stored timestamps (``mirror.timeparse``), payloads
    as JSON text, and the derived ``status``."""

    request_id: str
    endpoint_id: str
    runner_id: str | None
    sent_at: str
    started_at: str | None
    ended_at: str | None
    status_code: int | None
    duration: float | None
    billable_units: float | None
    json_input: str | None
    json_output: str | None
    status: str


#: the API's item fields, in the order of a ``Row`` (and of the table's columns)
API_FIELDS = Row._fields[:-1]

#: the fields every list call returns; an upsert always overwrites them (and ``status``)
ALWAYS = ("endpoint_id", "runner_id", "sent_at", "started_at", "ended_at", "status_code",
          "duration")  # fmt: skip
#: fields a list call returns only when asked (``expand=payloads``, ``expand=billing``)
PAYLOAD_FIELDS = ("json_input", "json_output")
BILLING_FIELDS = ("billable_units",)


def derive_status(ended_at: str | None, status_code: int | None) -> str:
    """success (2xx/3xx), user_error (4xx), error (5xx and anything else), or unfinished."""
    if ended_at is None or status_code is None:
        return "unfinished"
    if 200 <= status_code < 400:
        return "success"
    if 400 <= status_code < 500:
        return "user_error"
    return "error"


# --------------------------------------------------------------------------- the upsert's rules


def upsert_fields(*, payloads: bool, billing: bool) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(fields an upsert overwrites, fields it keeps when the server sends null), for rows
    fetched with or without payloads and billing.

    A field that was not fetched is left alone. A payload or billing value the server no
    longer sends is kept: fal drops payloads after 30 days (the mirror outlives that), and
    billing is never un-recorded.
    """
    kept = (PAYLOAD_FIELDS if payloads else ()) + (BILLING_FIELDS if billing else ())
    return (*ALWAYS, "status"), kept


def differing_fields(
    mirror_row: Row, server_row: Row, *, payloads: bool, billing: bool
) -> list[str]:
    """The API fields in which the mirror's row differs from the server's, by the upsert's
    rules: a field the upsert would not change is not a difference, so a mirror the upsert
    has repaired compares equal. Payloads compare as JSON values, not as text.
    """
    out = [f for f in ALWAYS if getattr(mirror_row, f) != getattr(server_row, f)]
    for f in upsert_fields(payloads=payloads, billing=billing)[1]:
        theirs = getattr(server_row, f)
        if theirs is None:
            continue
        ours = getattr(mirror_row, f)
        if not (_json_equal(ours, theirs) if f in PAYLOAD_FIELDS else ours == theirs):
            out.append(f)
    return sorted(out, key=API_FIELDS.index)


def _json_equal(a: str | None, b: str | None) -> bool:
    if a == b:
        return True
    if a is None or b is None:
        return False
    try:
        return bool(orjson.loads(a) == orjson.loads(b))
    except orjson.JSONDecodeError:
        return False


# --------------------------------------------------------------------------- pages


@dataclass(frozen=True)
class Page:
    rows: list[Row]
    next_cursor: str | None
    #: the API's clock when it answered (its ``Date`` header, whole seconds), if it said
    server_time: datetime | None = None

    @property
    def has_more(self) -> bool:
        return self.next_cursor is not None


def page_cursor(data: Mapping[str, Any], what: str) -> str | None:
    """The next cursor of a decoded page of any paged call, checked against its
    ``has_more``; ``what``: the page as errors name it ("the page")."""
    has_more = data.get("has_more")
    cursor = data.get("next_cursor")
    if not isinstance(has_more, bool):
        raise BadDataError(f"{what}'s has_more is not a boolean")
    if cursor is not None and (not isinstance(cursor, str) or not cursor or len(cursor) > 4096):
        raise BadDataError(f"{what}'s next_cursor is not a string")
    if has_more and cursor is None:
        raise BadDataError(f"{what} says has_more but gives no next_cursor")
    # A cursor with has_more=false is followed anyway: stopping early could lose rows.
    return cursor


def page_items(
    data: Mapping[str, Any], key: str, limit: int, what: str, noun: str
) -> tuple[list[Any], str | None]:
    """The ``key`` list of a decoded page (at most ``limit`` ``noun``) and its next cursor
    (`page_cursor`); ``what``: the page as errors name it."""
    items = data.get(key)
    if not isinstance(items, list):
        raise BadDataError(f"{what} has no {key} list")
    if len(items) > limit:
        raise BadDataError(f"{what} has {len(items)} {noun}, more than the {limit} asked for")
    return items, page_cursor(data, what)


def parse_page(data: Any, *, payloads: bool, billing: bool) -> Page:
    """A decoded page of the list call, asked for with or without payloads and billing."""
    if not isinstance(data, dict):
        raise BadDataError(f"the page is {type(data).__name__}, not a JSON object")
    items, cursor = page_items(data, "items", PAGE_LIMIT, "the page", "items")
    fast, checked = _fast_row, _checked_row
    rows = [
        (type(it) is dict and fast(it, payloads, billing)) or checked(it, payloads, billing)
        for it in items
    ]
    return Page(rows=rows, next_cursor=cursor)


@functools.lru_cache(maxsize=256)
def _window_text(start: str, end: str) -> tuple[str, str]:
    """A window's bounds, widened by ``WINDOW_SLACK``, as stored text (a walk asks for the
    same window page after page)."""
    return to_text(from_text(start) - WINDOW_SLACK), to_text(from_text(end) + WINDOW_SLACK)


def check_asked(rows: Sequence[Row], endpoint_ids: Sequence[str], start: str, end: str) -> None:
    """Refuse rows the list call did not ask for: stored, they would complete a window the
    server did not actually answer for.

    A row is another endpoint's unless its ``endpoint_id`` is one asked for or a route of
    one (``owner/app/...``, as ``schema.target_clause``). It is outside the window only if
    *none* of its timestamps could place it in ``[start, end)`` (give or take
    ``WINDOW_SLACK``): fal does not say which one the window filters on.
    """
    lo, hi = _window_text(start, end)
    asked = set(endpoint_ids)
    for r in rows:
        ep = r.endpoint_id
        if ep not in asked and not ep.startswith(tuple(e + "/" for e in endpoint_ids)):
            raise BadDataError(
                f"item {r.request_id!r} is for endpoint {ep}, which the call did not ask for "
                f"(asked for {', '.join(endpoint_ids)} and their routes)"
            )
        sent, started, ended = r.sent_at, r.started_at, r.ended_at
        if not (
            lo <= sent <= hi
            or (ended is not None and lo <= ended <= hi)
            or (started is not None and lo <= started <= hi)
        ):
            raise BadDataError(
                f"item {r.request_id!r}: none of its timestamps (sent_at {sent}, started_at "
                f"{started}, ended_at {ended}) is in the window {start}..{end} asked for"
            )


# --------------------------------------------------------------------------- items


_dumps = orjson.dumps
_fromiso = datetime.fromisoformat
_new = tuple.__new__
_EARLIEST, _LATEST = EARLIEST, LATEST


def _fast_row(item: dict[str, Any], payloads: bool, billing: bool) -> Row | None:
    """The common item in one pass: exact types, timestamps already in the stored shape.

    It accepts only what ``_checked_row`` accepts and builds the same row; anything else
    (wrong types, other timestamp shapes, payloads orjson cannot encode) returns None and
    goes through ``_checked_row``, which gives the precise error or the slower conversion.
    This runs for every row of every page: it is most of a sync's Python work.
    """
    get = item.get
    rid = get("request_id")
    ep = get("endpoint_id")
    runner = get("runner_id")
    if not (
        type(rid) is str
        and 0 < len(rid) <= 512
        and type(ep) is str
        and 0 < len(ep) <= 512
        and (runner is None or (type(runner) is str and 0 < len(runner) <= 512))
    ):
        return None
    sent = _stored(get("sent_at"))
    started = get("started_at")
    ended = get("ended_at")
    if (
        sent is None
        or (started is not None and (started := _stored(started)) is None)
        or (ended is not None and (ended := _stored(ended)) is None)
    ):
        return None
    try:  # digits, and a date and time that exist (2026-02-30, 25:61 do not)
        _fromiso(sent)
        if started is not None:
            _fromiso(started)
        if ended is not None:
            _fromiso(ended)
            if started is not None and ended < started:
                return None
    except ValueError:
        return None
    code = get("status_code")
    if code is not None and not (type(code) is int and MIN_STATUS <= code <= MAX_STATUS):
        return None
    duration = get("duration")
    if duration is not None and not (
        (type(duration) is float or type(duration) is int) and 0 <= duration <= MAX_DURATION
    ):  # (NaN compares false)
        return None
    units = None
    if billing:
        units = get("billable_units")
        if units is not None and not (
            (type(units) is float or type(units) is int) and 0 <= units <= MAX_BILLABLE_UNITS
        ):
            return None
    inp = out = None
    if payloads:
        inp = get("json_input")
        out = get("json_output")
        try:
            if inp is not None:
                inp = _dumps(inp).decode()
            if out is not None:
                out = _dumps(out).decode()
        except TypeError:  # e.g. nesting orjson refuses: the checked path copes or says why
            return None
    if ended is None or code is None:
        status = "unfinished"
    elif 200 <= code < 400:
        status = "success"
    elif 400 <= code < 500:
        status = "user_error"
    else:
        status = "error"
    # tuple.__new__ rather than Row(...): the same row, without a Python-level call
    row: Row = _new(Row, (rid, ep, runner, sent, started, ended, code, duration, units, inp,
                          out, status))  # fmt: skip
    return row


def _stored(value: Any) -> str | None:
    """A timestamp in the stored shape: as it is when it has that shape already (the
    caller still parses it whole), else normalized; None if the checked path must judge it."""
    if (
        type(value) is str and len(value) == 27 and value[26] == "Z"
        and value[4:20:3] == "--T::." and _EARLIEST <= value < _LATEST
    ):  # fmt: skip
        return value
    if type(value) is not str:
        return None
    try:
        return normalize(value)
    except ValueError:
        return None


def _checked_row(item: Any, payloads: bool, billing: bool) -> Row:
    """Field by field, with a precise error for whatever is wrong."""
    if not isinstance(item, dict):
        raise BadDataError(f"an item is {type(item).__name__}, not an object")
    started_at = _ts(item, "started_at", False)
    ended_at = _ts(item, "ended_at", False)
    if started_at is not None and ended_at is not None and ended_at < started_at:
        raise BadDataError(
            f"item {item.get('request_id')!r}: ended_at {ended_at} is before its started_at "
            f"{started_at}"
        )
    status_code = _number(item, "status_code", int, MIN_STATUS, MAX_STATUS,
                          f"an HTTP status ({MIN_STATUS}-{MAX_STATUS})")  # fmt: skip
    duration = _number(item, "duration", (int, float), 0, MAX_DURATION,
                       f"a duration in seconds from 0 to {MAX_DURATION}")  # fmt: skip
    units = None
    if billing:
        units = _number(item, "billable_units", (int, float), 0, MAX_BILLABLE_UNITS,
                        f"a unit count from 0 to {MAX_BILLABLE_UNITS:.0e}")  # fmt: skip
    return Row(
        cast(str, _text(item, "request_id", True)),
        cast(str, _text(item, "endpoint_id", True)),
        _text(item, "runner_id", False),
        cast(str, _ts(item, "sent_at", True)),
        started_at,
        ended_at,
        status_code,
        duration,
        units,
        _dump_json(item.get("json_input")) if payloads else None,
        _dump_json(item.get("json_output")) if payloads else None,
        derive_status(ended_at, status_code),
    )


def _dump_json(value: Any) -> str | None:
    if value is None:
        return None
    try:
        return orjson.dumps(value).decode()
    except TypeError:
        # orjson refuses nesting beyond 254 levels; the stdlib copes with a little more
        try:
            return json.dumps(value, ensure_ascii=False, separators=(",", ":"))
        except (RecursionError, ValueError) as e:
            raise BadDataError(f"a payload cannot be stored: {e}") from None


def _ts(item: Mapping[str, Any], name: str, required: bool) -> str | None:
    v = item.get(name)
    if v is None:
        if required:
            raise BadDataError(f"item {item.get('request_id')!r} has no {name}")
        return None
    if not isinstance(v, str):
        raise BadDataError(
            f"item {item.get('request_id')!r}: {name} is {type(v).__name__}, not a timestamp"
        )
    try:
        return normalize(v)
    except ValueError:
        raise BadDataError(
            f"item {item.get('request_id')!r}: {name} {v[:40]!r} is not a timestamp"
        ) from None


def _number(
    item: Mapping[str, Any],
    name: str,
    kind: type | tuple[type, ...],
    lo: float,
    hi: float,
    what: str,
) -> Any:
    v = item.get(name)
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, kind):
        raise BadDataError(
            f"item {item.get('request_id')!r}: {name} is {type(v).__name__}, not a number"
        )
    if isinstance(v, float) and not math.isfinite(v):
        raise BadDataError(f"item {item.get('request_id')!r}: {name} is not finite")
    if not lo <= cast(float, v) <= hi:
        raise BadDataError(f"item {item.get('request_id')!r}: {name} {v!r} is not {what}")
    return v


def _text(item: Mapping[str, Any], name: str, required: bool) -> str | None:
    v = item.get(name)
    if v is None and not required:
        return None
    if not isinstance(v, str) or not v or len(v) > 512:
        raise BadDataError(f"item {item.get('request_id')!r}: {name} is missing or not a string")
    return v
