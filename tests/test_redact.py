"""mirror.redact: secrets out of every message, control characters out of the terminal."""

from __future__ import annotations

import logging

import pytest

from mirror.auth import load_key
from mirror.errors import ApiError, ConfigError
from mirror.redact import REDACTED, RedactFilter, printable, redact, register_key

KID = "redact-test-kid-0193"
SECRET = "R3dact-T3st-s3cret-88aZ"


def test_the_key_and_each_half_are_redacted_in_any_spelling() -> None:
    register_key(f"{KID}:{SECRET}")
    cases = {
        f"Illegal header value b'Key {KID}:{SECRET}\\n# old'": f"Illegal header value b'Key {REDACTED}\\n# old'",
        f"secret {SECRET} alone": f"secret {REDACTED} alone",
        f"id {KID} alone": f"id {REDACTED} alone",
        f"upper {SECRET.upper()}": f"upper {REDACTED}",
        f"url-encoded {KID}%3A{SECRET}": f"url-encoded {REDACTED}",
        "nothing to hide": "nothing to hide",
    }
    got = {text: redact(text) for text in cases}
    assert got == cases, f"redacted wrongly: {got}"


def test_a_short_part_of_a_key_is_not_redacted_alone() -> None:
    register_key("ab:Sh0rt-but-secret-part")
    assert redact("ab is a word; Key ab:Sh0rt-but-secret-part") == f"ab is a word; Key {REDACTED}"


def test_an_error_from_the_server_cannot_carry_the_key() -> None:
    register_key(f"{KID}:{SECRET}")
    err = ApiError(401, "authorization_error", f"bad header: Key {KID}:{SECRET}", "/v1/x")
    assert (str(err), err.message) == (
        f"HTTP 401 authorization_error: bad header: Key {REDACTED} (/v1/x)",
        f"bad header: Key {REDACTED}",
    )


def test_the_log_filter_redacts_message_arguments_and_tracebacks() -> None:
    register_key(f"{KID}:{SECRET}")
    try:
        raise RuntimeError(f"inner {SECRET}")
    except RuntimeError:
        record = logging.LogRecord("mirror.api", logging.INFO, __file__, 1, "got %s\x1b[2J",
                                   (f"Key {KID}:{SECRET}",), __import__("sys").exc_info())  # fmt: skip
    assert RedactFilter().filter(record)
    assert (record.getMessage(), SECRET in (record.exc_text or "")) == (
        f"got Key {REDACTED}\\x1b[2J",
        False,
    ), f"the log record still shows the key or the escape: {record.getMessage()!r}"


@pytest.mark.parametrize(
    ("env", "source"),
    [
        ({"FAL_KEY": f"{KID}:{SECRET}\n# old key: kid0:OLDSECRET0"}, "FAL_KEY"),
        ({"FAL_KEY": f"{KID}:{SECRET} extra"}, "FAL_KEY"),
        ({"FAL_KEY_ID": KID, "FAL_KEY_SECRET": f"{SECRET}\x1b"}, "FAL_KEY_SECRET"),
        ({"FAL_KEY": f"{KID}:sécret"}, "FAL_KEY"),
    ],
)
def test_a_key_that_cannot_be_one_is_refused_naming_only_its_source(env, source) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ConfigError) as exc:
        load_key(env)
    line = str(exc.value)
    assert line.startswith(f"{source} is not a key"), line
    assert SECRET not in line and "OLDSECRET0" not in line and "sécret" not in line, line


def test_printable_escapes_control_characters_and_caps_the_length() -> None:
    hostile = "ok\nmirror: forged\r\x1b]0;title\x07\u202eevil\x9b31m\ttab"
    assert printable(hostile) == (
        "ok\\nmirror: forged\\r\\x1b]0;title\\x07\\u202eevil\\x9b31m\\ttab"
    )
    assert printable("héllo wörld ✓ 漢字") == "héllo wörld ✓ 漢字"
    assert printable("x" * 50, 10) == "x" * 9 + "…"
