"""The API client against httpx.MockTransport: retries, errors, strict pages (parsed by
mirror.records), the key."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime

import httpx
import orjson
import pytest

from mirror.api import FalClient, RetryPolicy, check_base_url
from mirror.auth import load_key
from mirror.errors import ApiError, ApiUnavailable, AuthError, BadDataError, ConfigError
from mirror.records import Row, parse_page

KEY = "kid-123:very-secret-canary-0xC0FFEE"
ITEM = {
    "request_id": "a1b2c3d4-e5f6-7890-abcd-ef1234567890",
    "endpoint_id": "acme/app",
    "runner_id": None,
    "started_at": "2025-01-01T00:00:05Z",
    "sent_at": "2025-01-01T00:00:01Z",
    "ended_at": "2025-01-01T00:00:08.5Z",
    "status_code": 200,
    "duration": 7.8,
    "json_input": {"prompt": "café ☕ 東京"},
    "json_output": {"status": "ok"},
    "billable_units": 1.5,
}
PAGE = {"items": [ITEM], "next_cursor": None, "has_more": False}


def client(handler, *, attempts=5, sleeps=None, base="https://api.example.test/v1"):
    waits = sleeps if sleeps is not None else []
    http = httpx.Client(transport=httpx.MockTransport(handler))
    return FalClient(
        http,
        KEY,
        base_url=base,
        retry=RetryPolicy(attempts=attempts, base=0.5, cap=4),
        sleep=waits.append,
        seed=7,
    )


def scripted(*responses):
    """A handler answering with the given responses (or raising the given exceptions) in turn."""
    seen: list[httpx.Request] = []

    def handler(request):
        seen.append(request)
        r = responses[min(len(seen) - 1, len(responses) - 1)]
        if isinstance(r, Exception):
            raise r
        return r

    handler.seen = seen  # type: ignore[attr-defined]
    return handler


def ok():
    return httpx.Response(200, content=orjson.dumps(PAGE))


def one_row(item, *, payloads=True, billing=True):
    """The row an item becomes, on a page of its own."""
    page = {"items": [item], "has_more": False, "next_cursor": None}
    return parse_page(page, payloads=payloads, billing=billing).rows[0]


def fetch(c):
    return c.list_requests(["acme/app"], start="2025-01-01T00:00:00Z", end="2025-01-02T00:00:00Z")


def test_request_shape_and_row():
    h = scripted(ok())
    page = fetch(client(h))
    req = h.seen[0]
    assert req.headers["authorization"] == f"Key {KEY}"
    assert req.url.path == "/v1/serverless/requests/by-endpoint"
    assert req.url.params.get_list("expand") == ["payloads", "billing"], (
        "expand must be repeated (style=form, explode)"
    )
    assert req.url.params["endpoint_id"] == "acme/app" and req.url.params["limit"] == "100"
    assert page.rows == [
        (
            ITEM["request_id"],
            "acme/app",
            None,
            "2025-01-01T00:00:01.000000Z",
            "2025-01-01T00:00:05.000000Z",
            "2025-01-01T00:00:08.500000Z",
            200,
            7.8,
            1.5,
            '{"prompt":"café ☕ 東京"}',
            '{"status":"ok"}',
            "success",
        )
    ]
    assert page.next_cursor is None


def nested(depth):
    return {"a": nested(depth - 1)} if depth else None


#: nested deeper than orjson encodes, so the item goes the checked way, field by field
DEEP = nested(300)


@pytest.mark.parametrize(
    ("change", "stored"),
    [
        ({}, {}),  # the common item, in one pass
        ({"sent_at": "2025-01-01T01:00:01+01:00"}, {}),  # another shape, converted
        ({"status_code": 404, "json_input": None}, {"status": "user_error"}),
        ({"json_output": DEEP}, {"json_output": json.dumps(DEEP, separators=(",", ":"))}),
    ],
)
def test_a_row_is_a_named_record_whichever_way_it_was_parsed(change, stored):
    row = one_row(dict(ITEM, **change))
    assert type(row) is Row, f"{change}: parsed as {type(row).__name__}, not a Row"
    assert row._asdict() == {
        "request_id": ITEM["request_id"],
        "endpoint_id": "acme/app",
        "runner_id": None,
        "sent_at": "2025-01-01T00:00:01.000000Z",
        "started_at": "2025-01-01T00:00:05.000000Z",
        "ended_at": "2025-01-01T00:00:08.500000Z",
        "status_code": change.get("status_code", 200),
        "duration": 7.8,
        "billable_units": 1.5,
        "json_input": None if "json_input" in change else '{"prompt":"café ☕ 東京"}',
        "json_output": '{"status":"ok"}',
        "status": "success",
        **stored,
    }, f"{change}: parsed as {row}"


@pytest.mark.parametrize(
    ("first", "why"),
    [
        (
            httpx.Response(
                429, json={"error": {"type": "rate_limited", "message": "Rate limit exceeded"}}
            ),
            "429",
        ),
        (
            httpx.Response(
                502,
                text="<html><body>502 Bad Gateway</body></html>",
                headers={"content-type": "text/html"},
            ),
            "HTML 5xx",
        ),
        (
            httpx.Response(
                500, json={"error": {"type": "server_error", "message": "Unexpected server error"}}
            ),
            "JSON 500",
        ),
        (
            httpx.RemoteProtocolError(
                "peer closed connection without sending complete message body"
            ),
            "truncated",
        ),
        (httpx.ConnectError("connection reset by peer"), "reset"),
        (httpx.ReadTimeout("timed out"), "timeout"),
        (
            httpx.Response(200, text='{"items": [', headers={"content-type": "application/json"}),
            "truncated JSON",
        ),
        (
            httpx.Response(
                200, text="<html>maintenance</html>", headers={"content-type": "text/html"}
            ),
            "HTML 200",
        ),
    ],
)
def test_transient_failures_are_retried_with_backoff(first, why):
    sleeps: list[float] = []
    h = scripted(first, first, ok())
    page = fetch(client(h, sleeps=sleeps))
    assert len(h.seen) == 3, f"{why}: expected two retries"
    assert len(page.rows) == 1
    assert len(sleeps) == 2 and all(0 <= s <= 4 for s in sleeps), f"{why}: backoff waits {sleeps}"


def test_retry_after_is_honoured():
    sleeps: list[float] = []
    h = scripted(
        httpx.Response(
            429,
            headers={"retry-after": "3"},
            json={"error": {"type": "rate_limited", "message": "x"}},
        ),
        ok(),
    )
    fetch(client(h, sleeps=sleeps))
    assert sleeps == [3.0]


def test_backoff_grows_exponentially_up_to_the_cap():
    sleeps: list[float] = []
    h = scripted(httpx.Response(503, text="down"))
    with pytest.raises(ApiUnavailable) as e:
        fetch(client(h, attempts=6, sleeps=sleeps))
    assert len(h.seen) == 6 and len(sleeps) == 5
    for i, s in enumerate(sleeps):
        assert 0 <= s <= min(4, 0.5 * 2**i), f"retry {i} waited {s}"
    assert "6 attempts" in str(e.value) and "503" in str(e.value)


@pytest.mark.parametrize(
    ("status", "body", "cls", "expected"),
    [
        (
            401,
            {
                "error": {
                    "type": "authorization_error",
                    "message": "Invalid API key or malformed Authorization header",
                }
            },
            AuthError,
            "HTTP 401 authorization_error: Invalid API key or malformed Authorization header (/v1/serverless/requests/by-endpoint)",
        ),
        (
            403,
            {"error": {"type": "authorization_error", "message": "Access denied"}},
            AuthError,
            "HTTP 403 authorization_error: Access denied (/v1/serverless/requests/by-endpoint)",
        ),
        (
            400,
            {"error": {"type": "validation_error", "message": "limit must be <= 100"}},
            ApiError,
            "HTTP 400 validation_error: limit must be <= 100 (/v1/serverless/requests/by-endpoint)",
        ),
        (
            404,
            {"error": {"type": "not_found", "message": "Resource not found"}},
            ApiError,
            "HTTP 404 not_found: Resource not found (/v1/serverless/requests/by-endpoint)",
        ),
    ],
)
def test_client_errors_fail_at_once_naming_status_and_message(status, body, cls, expected):
    h = scripted(httpx.Response(status, json=body))
    with pytest.raises(cls) as e:
        fetch(client(h))
    assert len(h.seen) == 1, "4xx must not be retried"
    assert str(e.value) == expected
    assert KEY not in repr(e.value.__dict__)


def test_html_error_body_from_a_proxy():
    h = scripted(
        httpx.Response(
            403,
            text="<!DOCTYPE html><title>Just a moment...</title>",
            headers={"content-type": "text/html", "cf-mitigated": "challenge"},
        )
    )
    with pytest.raises(AuthError) as e:
        fetch(client(h))
    assert (
        str(e.value)
        == "HTTP 403: non-JSON error body (46 bytes of text/html) (/v1/serverless/requests/by-endpoint)"
    )


def test_redirects_are_not_followed_so_the_key_stays_home():
    h = scripted(httpx.Response(302, headers={"location": "https://evil.example/steal"}))
    with pytest.raises(ApiError) as e:
        fetch(client(h))
    assert len(h.seen) == 1 and "evil.example" in str(e.value) and "not followed" in str(e.value)


def test_body_size_cap():
    big = httpx.Response(200, content=b"[" + b" " * 2000 + b"]", headers={"content-length": "2002"})
    http = httpx.Client(transport=httpx.MockTransport(scripted(big)))
    c = FalClient(http, KEY, base_url="https://x.test/v1", retry=RetryPolicy(max_body=1000))
    with pytest.raises(BadDataError, match="cap"):
        fetch(c)


def test_deep_nesting_is_bad_data_not_retried():
    body = (
        b'{"items": [{"json_input": '
        + b"[" * 5000
        + b"]" * 5000
        + b'}], "has_more": false, "next_cursor": null}'
    )
    h = scripted(httpx.Response(200, content=body))
    with pytest.raises(BadDataError, match="nests"):
        fetch(client(h))
    assert len(h.seen) == 1


@pytest.mark.parametrize(
    ("page", "message"),
    [
        ([], "not a JSON object"),
        ({"items": {}, "has_more": False, "next_cursor": None}, "no items list"),
        ({"items": [], "has_more": True, "next_cursor": None}, "has_more but gives no next_cursor"),
        ({"items": [], "has_more": "yes", "next_cursor": None}, "has_more is not a boolean"),
        (
            {"items": [dict(ITEM, request_id=None)], "has_more": False, "next_cursor": None},
            "request_id is missing",
        ),
        (
            {"items": [dict(ITEM, status_code="200")], "has_more": False, "next_cursor": None},
            "status_code is str",
        ),
        (
            {"items": [dict(ITEM, duration={"s": 1})], "has_more": False, "next_cursor": None},
            "duration is dict",
        ),
        (
            {"items": [dict(ITEM, status_code=True)], "has_more": False, "next_cursor": None},
            "status_code is bool",
        ),
        (
            {"items": [dict(ITEM, ended_at="yesterday")], "has_more": False, "next_cursor": None},
            "not a timestamp",
        ),
        (
            {"items": [dict(ITEM, sent_at=None)], "has_more": False, "next_cursor": None},
            "has no sent_at",
        ),
        ({"items": ["x"], "has_more": False, "next_cursor": None}, "not an object"),
        ({"items": [ITEM] * 101, "has_more": False, "next_cursor": None}, "more than the 100"),
    ],
)
def test_malformed_pages_are_refused(page, message):
    with pytest.raises(BadDataError, match=message):
        parse_page(page, payloads=True, billing=True)


def test_unfinished_row_and_missing_optionals():
    row = one_row(
        {
            "request_id": "r",
            "endpoint_id": "a/b",
            "sent_at": "2025-01-01T00:00:01Z",
            "started_at": "2025-01-01T00:00:02Z",
            "runner_id": None,
        },
        payloads=True,
        billing=True,
    )
    assert row == (
        "r",
        "a/b",
        None,
        "2025-01-01T00:00:01.000000Z",
        "2025-01-01T00:00:02.000000Z",
        None,
        None,
        None,
        None,
        None,
        None,
        "unfinished",
    )


@pytest.mark.parametrize(
    "url",
    ["http://api.fal.ai/v1", "ftp://127.0.0.1/v1", "https://user:pw@api.fal.ai/v1", "not a url"],
)
def test_unsafe_base_urls_are_refused(url):
    with pytest.raises(ConfigError):
        check_base_url(url)


def test_loopback_http_is_allowed():
    assert check_base_url("http://127.0.0.1:8765/v1/") == "http://127.0.0.1:8765/v1"
    assert check_base_url("http://localhost:1/v1") == "http://localhost:1/v1"
    assert check_base_url("http://[::1]:1/v1") == "http://[::1]:1/v1"


def test_key_sources_in_order(tmp_path):
    assert load_key({"FAL_KEY": "a:b", "FAL_KEY_ID": "c", "FAL_KEY_SECRET": "d"}) == "a:b"
    assert load_key({"FAL_KEY_ID": "c", "FAL_KEY_SECRET": "d"}) == "c:d"
    with pytest.raises(ConfigError, match="together"):
        load_key({"FAL_KEY_ID": "c"})
    with pytest.raises(ConfigError, match="no fal API key"):
        load_key({"XDG_CONFIG_HOME": str(tmp_path)})
    f = tmp_path / "key"
    f.write_text("e:f\n")
    f.chmod(0o644)
    with pytest.raises(ConfigError, match=r"readable by others.*chmod 600"):
        load_key({"MIRROR_KEY_FILE": str(f)})
    f.chmod(0o600)
    assert load_key({"MIRROR_KEY_FILE": str(f)}) == "e:f"


def test_client_repr_hides_key():
    c = client(scripted(ok()))
    assert KEY not in repr(c) and KEY not in str(vars(c).get("base_url"))


# --------------------------------------------------------------------------- hardening

#: timestamps that must never be stored: a later sync parses what it stored (planning, the
#: refresh of unfinished rows), and text order must stay time order
BAD_TIMESTAMPS = [
    "XXXXXXXXXXTXXXXXXXX.XXXXXXZ",  # the stored shape's length and separators, no digits
    "2026-13-45T25:61:61.000000Z",  # the stored shape, impossible values
    "2026-02-30T12:00:00.000000Z",  # a day February lacks
    "2026-02-30T12:00:00Z",  # the same without a fraction (the other shape taken as is)
    "2026-11-28T12:00:60Z",  # a leap second: no datetime holds it
    "0001-01-01T00:00:00+01:00",  # before year 1 once in UTC
    "1970-01-01T00:00:00.000000Z",  # long before fal: a zero clock, not a request
    "9999-12-31T23:59:59.999999Z",  # the end of time: arithmetic on it overflows
]


@pytest.mark.parametrize("field", ["sent_at", "started_at", "ended_at"])
@pytest.mark.parametrize("value", BAD_TIMESTAMPS)
def test_malformed_timestamps_are_refused(field, value):
    page = {"items": [dict(ITEM, **{field: value})], "has_more": False, "next_cursor": None}
    try:
        rows = parse_page(page, payloads=True, billing=True).rows
    except BadDataError as e:
        assert field in str(e) and "not a timestamp" in str(e), f"{value!r}: unclear: {e}"
        return
    except Exception as e:  # the point: anything else is an internal error
        pytest.fail(f"{field} {value!r} raised {type(e).__name__}: {e}, not BadDataError")
    pytest.fail(f"{field} {value!r} was accepted as {rows[0][3:6]}; it must refuse the page")


@pytest.mark.parametrize(
    ("value", "stored"),
    [
        ("2026-W05-1T12:00:00.000000Z", "2026-01-26T12:00:00.000000Z"),  # an ISO week date
        ("2026-11-28T12:00:00,500000Z", "2026-11-28T12:00:00.500000Z"),  # a decimal comma
        ("2026-11-28T13:00:00.000000+01:00", "2026-11-28T12:00:00.000000Z"),
        ("2000-01-01T00:00:00Z", "2000-01-01T00:00:00.000000Z"),
        ("2100-12-31T23:59:59.999999Z", "2100-12-31T23:59:59.999999Z"),
    ],
)
def test_other_timestamp_shapes_are_stored_canonical(value, stored):
    row = one_row(dict(ITEM, sent_at=value), payloads=False, billing=False)
    assert row[3] == stored, f"{value!r} was stored as {row[3]!r}, not in the canonical shape"


#: the longest duration accepted, in seconds (mirror.api.MAX_DURATION)
THIRTY_DAYS = 30 * 86400.0


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"status_code": 2**63}, r"status_code 9223372036854775808 is not an HTTP status"),
        ({"status_code": 99}, r"status_code 99 is not an HTTP status"),
        ({"status_code": 600}, r"status_code 600 is not an HTTP status"),
        ({"status_code": -200}, r"status_code -200 is not an HTTP status"),
        ({"duration": 1e308}, r"duration 1e\+308 is not"),
        ({"duration": -0.5}, r"duration -0.5 is not"),
        ({"duration": THIRTY_DAYS + 1}, r"duration 2592001(\.0)? is not"),
        ({"duration": 2**70}, r"duration \d+ is not"),
        ({"billable_units": 1e308}, r"billable_units 1e\+308 is not"),
        ({"billable_units": -1e308}, r"billable_units -1e\+308 is not"),
        ({"started_at": "2025-01-01T00:00:09Z"}, r"ended_at .* before its started_at"),
    ],
)
def test_implausible_values_are_refused(change, message):
    """Each of these reached the store: an OverflowError, an integer overflow in the hourly
    summary (reported as a storage error), or a row that contradicts itself."""
    page = {"items": [dict(ITEM, **change)], "has_more": False, "next_cursor": None}
    try:
        rows = parse_page(page, payloads=True, billing=True).rows
    except BadDataError as e:
        assert re.search(message, str(e)), f"{change}: the message does not say why: {e}"
        return
    except Exception as e:
        pytest.fail(f"{change} raised {type(e).__name__}: {e}, not BadDataError")
    pytest.fail(f"{change} was accepted: {rows[0]}; it must refuse the page")


@pytest.mark.parametrize(
    "change",
    [
        {"status_code": 100},
        {"status_code": 599},
        {"duration": 0},
        {"duration": THIRTY_DAYS},
        {"billable_units": 0},
        {"started_at": ITEM["ended_at"]},
        {"started_at": None},
    ],
)
def test_values_at_the_bounds_are_kept(change):
    row = parse_page(
        {"items": [dict(ITEM, **change)], "has_more": False, "next_cursor": None},
        payloads=True,
        billing=True,
    ).rows[0]
    assert row[:9] == one_row(dict(ITEM, **change), payloads=False, billing=True)[:9]
    assert (row[6], row[7], row[8]) == (
        change.get("status_code", 200),
        change.get("duration", 7.8),
        change.get("billable_units", 1.5),
    ), f"{change}: stored as {row}"


# fetch() asks for acme/app over [2025-01-01T00:00:00Z, 2025-01-02T00:00:00Z)
BEFORE = {"sent_at": "2024-12-31T22:00:00Z", "started_at": "2024-12-31T22:00:01Z",
          "ended_at": "2024-12-31T23:59:58Z"}  # fmt: skip


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"endpoint_id": "acme/other"}, r"endpoint acme/other.*asked for acme/app"),
        ({"endpoint_id": "acme/apple"}, r"endpoint acme/apple.*asked for acme/app"),
        ({"endpoint_id": "acme"}, r"endpoint acme\b.*asked for acme/app"),
        (BEFORE, r"none of its timestamps.*2025-01-01T00:00:00Z"),
        (
            {**BEFORE, "ended_at": "2025-01-02T00:00:02Z"},  # ran across the whole window
            r"none of its timestamps",
        ),
        ({**BEFORE, "ended_at": None, "status_code": None, "duration": None}, r"none of its"),
    ],
)
def test_rows_that_contradict_the_request_are_refused(change, message):
    """A row the call did not ask for: storing it and marking the window complete would
    claim the window was seen when the server answered something else."""
    page = {"items": [ITEM, dict(ITEM, request_id="r2", **change)], "has_more": False,
            "next_cursor": None}  # fmt: skip
    try:
        rows = fetch(client(scripted(httpx.Response(200, content=orjson.dumps(page))))).rows
    except BadDataError as e:
        assert re.search(message, str(e)), f"{change}: the message does not say why: {e}"
        return
    pytest.fail(f"{change} was accepted: {rows[1]}; it must refuse the page")


@pytest.mark.parametrize(
    "change",
    [
        {"endpoint_id": "acme/app/turbo"},  # a route of the app asked for
        {**BEFORE, "ended_at": "2025-01-01T00:00:00Z"},  # in by ended_at only
        {**BEFORE, "started_at": "2025-01-01T00:00:00Z", "ended_at": "2025-01-02T03:00:00Z"},
        {
            "sent_at": "2025-01-01T23:59:59.999999Z",
            "started_at": None,
            "ended_at": None,
            "status_code": None,
            "duration": None,
        },  # in by sent_at only, unfinished
        {**BEFORE, "ended_at": "2024-12-31T23:59:59.5Z"},  # half a second early
        {
            "sent_at": "2025-01-02T00:00:00.999Z",
            "started_at": "2025-01-02T00:00:01Z",
            "ended_at": "2025-01-02T00:00:01Z",
        },  # at the end bound, within a second
    ],
)
def test_rows_any_reading_of_the_window_admits_are_kept(change):
    """fal does not say which timestamp the window filters on, nor whether ``end`` is
    inclusive or compared to the second: a row is kept if any of its timestamps lies in the
    window, or within a second of it."""
    page = {"items": [dict(ITEM, **change)], "has_more": False, "next_cursor": None}
    rows = fetch(client(scripted(httpx.Response(200, content=orjson.dumps(page))))).rows
    assert [r[0] for r in rows] == [ITEM["request_id"]], f"{change}: {rows}"


# --------------------------------------------------------------------------- analytics paging

LO = datetime(2025, 1, 1, 0, tzinfo=UTC)
HI = datetime(2025, 1, 1, 6, tzinfo=UTC)


def analytics_page(buckets, cursor=None):
    """One analytics answer: ``buckets`` as (bucket time, request counts per endpoint)."""
    series = [{"bucket": at, "results": [{"request_count": n} for n in ns]} for at, ns in buckets]
    return httpx.Response(200, content=orjson.dumps({"time_series": series, "next_cursor": cursor}))


def test_hourly_counts_follow_the_cursor_in_one_query():
    h = scripted(
        analytics_page([("2025-01-01T00:00:00Z", [2, 3])], "c1"),
        analytics_page([("2025-01-01T01:30:00Z", [4])]),
    )
    got = list(client(h).hourly_counts("acme/app", LO, HI, strict=True))
    assert got == [("2025-01-01T00", 5), ("2025-01-01T01", 4)], (
        "buckets are summed over endpoints and keyed by their hour"
    )
    first, second = (r.url.params for r in h.seen)
    assert first.get_list("expand") == ["time_series", "request_count"]
    assert first["endpoint_id"] == "acme/app" and first["bound_to_timeframe"] == "false"
    assert "cursor" not in first and second["cursor"] == "c1"


@pytest.mark.parametrize(
    "cursors", [["c1", "c1"], ["c1", "c2", "c1"], ["c1", ""], ["c1", 7]], ids=str
)
def test_a_bad_analytics_cursor_is_refused_when_strict_and_ends_paging_when_lenient(cursors):
    pages = [analytics_page([(f"2025-01-01T0{i}:00:00Z", [1])], c) for i, c in enumerate(cursors)]
    with pytest.raises(BadDataError, match="repeated or garbled its cursor"):
        list(client(scripted(*pages)).hourly_counts("acme/app", LO, HI, strict=True))
    h = scripted(*pages)
    got = list(client(h).hourly_counts("acme/app", LO, HI, strict=False))
    assert len(h.seen) == len(cursors), "lenient paging stops at the bad cursor, not before"
    assert got == [(f"2025-01-01T0{i}", 1) for i in range(len(cursors))]


def test_analytics_pages_are_capped():
    pages = [analytics_page([("2025-01-01T00:00:00Z", [1])], f"c{i}") for i in range(5)]
    with pytest.raises(BadDataError, match="ran over 3 pages"):
        list(client(scripted(*pages)).hourly_counts("acme/app", LO, HI, strict=True, max_pages=3))
    h = scripted(*pages)
    got = list(client(h).hourly_counts("acme/app", LO, HI, strict=False, max_pages=3))
    assert len(h.seen) == 3 and len(got) == 3


def test_hourly_counts_call_before_each_page():
    calls: list[int] = []
    h = scripted(analytics_page([], "c1"), analytics_page([]))
    c = client(h)
    for _ in c.hourly_counts(
        "acme/app", LO, HI, strict=True, before_call=lambda: calls.append(len(h.seen))
    ):
        pass
    assert calls == [0, 1], "before_call runs before each call, not after"


def test_a_copy_with_another_sleep_shares_everything_else():
    sleeps: list[float] = []
    h = scripted(httpx.Response(503), ok())
    base = client(h)
    other = base.with_sleep(sleeps.append)
    fetch(other)
    assert len(sleeps) == 1 and base.sleep is not other.sleep
    assert base.stats is other.stats and base.stats.retries == 1 and base.pacer is other.pacer
