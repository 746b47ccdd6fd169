from datetime import UTC, datetime, timedelta, timezone

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mirror.timeparse import from_text, normalize, parse_duration, parse_when, to_text

NOW = datetime(2026, 11, 28, 12, 0, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2026-11-01", datetime(2026, 11, 1, tzinfo=UTC)),
        ("2026-11-01T12:30:00Z", datetime(2026, 11, 1, 12, 30, tzinfo=UTC)),
        ("2026-11-01 12:30", datetime(2026, 11, 1, 12, 30, tzinfo=UTC)),
        ("2026-11-01T12:30:00+02:00", datetime(2026, 11, 1, 10, 30, tzinfo=UTC)),
        ("90m", NOW - timedelta(minutes=90)),
        ("36h", NOW - timedelta(hours=36)),
        ("7d", NOW - timedelta(days=7)),
        ("2w", NOW - timedelta(days=14)),
        ("now", NOW),
    ],
)
def test_parse_when_accepts_iso_and_relative(text, expected):
    assert parse_when(text, NOW) == expected, f"{text!r} parsed wrongly"


@pytest.mark.parametrize(
    "text", ["", "yesterday", "2026-13-01", "-5h", "5 parsecs", "2026-11-01T25:00"]
)
def test_parse_when_rejects_garbage_with_a_hint(text):
    with pytest.raises(ValueError) as e:
        parse_when(text, NOW)
    assert text == "" or "ISO" in str(e.value) or "time" in str(e.value)


def test_naive_datetimes_are_utc_whatever_the_local_timezone(monkeypatch):
    import time

    for tz in ("America/Los_Angeles", "Asia/Kolkata", "Pacific/Chatham"):
        monkeypatch.setenv("TZ", tz)
        time.tzset()
        assert parse_when("2026-03-08T02:30:00", NOW) == datetime(2026, 3, 8, 2, 30, tzinfo=UTC)
    monkeypatch.delenv("TZ")
    time.tzset()


def test_durations():
    assert parse_duration("0") == timedelta(0)
    assert parse_duration("90m") == timedelta(minutes=90)
    assert parse_duration("2h") == timedelta(hours=2)
    for bad in ("-1h", "abc", "", "3 fortnights"):
        with pytest.raises(ValueError):
            parse_duration(bad)


@given(
    st.datetimes(
        min_value=datetime(2000, 1, 1), max_value=datetime(2100, 1, 1), timezones=st.just(UTC)
    )
)
def test_canonical_text_round_trips_and_sorts_like_time(dt):
    text = to_text(dt)
    assert len(text) == 27 and text.endswith("Z")
    assert from_text(text) == dt
    assert normalize(text) == text
    assert normalize(dt.isoformat()) == text
    assert normalize(dt.astimezone(timezone(timedelta(hours=5))).isoformat()) == text


@given(
    st.lists(
        st.datetimes(
            min_value=datetime(2000, 1, 1), max_value=datetime(2100, 1, 1), timezones=st.just(UTC)
        ),
        min_size=2,
    )
)
def test_text_order_is_time_order(dts):
    assert sorted(to_text(d) for d in dts) == [to_text(d) for d in sorted(dts)]


def test_normalize_fast_paths_agree_with_full_parse():
    assert normalize("2025-01-01T00:00:08Z") == "2025-01-01T00:00:08.000000Z"
    assert normalize("2025-01-01T00:00:08.5Z") == "2025-01-01T00:00:08.500000Z"
    assert normalize("2025-01-01T02:00:08.123456+02:00") == "2025-01-01T00:00:08.123456Z"
    assert normalize("2025-01-01T00:00:08") == "2025-01-01T00:00:08.000000Z"


@pytest.mark.parametrize(
    "text",
    [
        "XXXXXXXXXXTXXXXXXXX.XXXXXXZ",
        "2026-13-45T25:61:61.000000Z",
        "2026-11-28T24:00:00.000000Z",
        "2026-02-29T00:00:00Z",  # 2026 is not a leap year
        "2026-11-28T12:00:00.00000\u0665Z",  # a non-ASCII digit
        "0001-01-01T00:00:00+01:00",  # OverflowError in the conversion to UTC
        "1999-12-31T23:59:59.999999Z",
        "2101-01-01T00:00:00Z",
    ],
)
def test_normalize_refuses_what_is_not_a_plausible_time(text):
    """Every shape, fast path or not, is parsed whole: what is stored is read back later."""
    try:
        got = normalize(text)
    except ValueError:
        return
    except Exception as e:
        pytest.fail(f"{text!r} raised {type(e).__name__}: {e}, not ValueError")
    pytest.fail(f"{text!r} was normalized to {got!r}")
