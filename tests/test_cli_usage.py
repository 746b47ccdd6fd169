"""Bad input of every kind: one line on stderr, exit 2, no traceback, nothing created."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from mirror.cli import cli


def run(args, env=None):
    return CliRunner().invoke(cli, args, env=env or {}, catch_exceptions=False)


def one_line_error(result):
    lines = [ln for ln in result.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, f"expected one error line, got:\n{result.stderr}"
    assert "Traceback" not in result.stderr + result.stdout
    return lines[0]


KEYED = {"FAL_KEY": "sim-key-id:sim-key-secret"}


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["sync", "-e", "acme/a", "--since", "last tuesday"], "not a time"),
        (["sync", "-e", "acme/a", "--since", "2026-02-30"], "not a time"),
        (["sync", "-e", "acme/a", "--since", "2d", "--until", "3d"], "must be after --since"),
        (
            ["sync", "-e", "acme/a", "--since", "2026-11-02", "--until", "2026-11-01"],
            "must be after --since",
        ),
        (["sync", "-e", "acme/a", "--lookback", "-2h"], "negative"),
        (["sync", "-e", "acme/a", "--lookback", "soon"], "not a duration"),
        (["sync"], "name what to sync with --endpoint"),
        (["sync", "-e", "acme/a", "--max-concurrency", "0"], "--max-concurrency"),
        (["sync", "-e", "acme/a", "--base-url", "http://api.fal.ai/v1"], "plain http"),
        (["sync", "-e", "acme/a", "--base-url", "gopher://x"], "not an http(s) URL"),
        (["sync", "-e", "acme/a", "--since", "2999-01-01"], "in the future"),
        (["sync", "-e", ""], "not an endpoint id"),
        (["sync", "-e", "acme/a", "--metrics-file", "no/dir/m.prom"], "no/dir does not exist"),
        (["cost", "--by", "status"], "cannot group spend by 'status'"),
        (["cost", "--since", "2d", "--until", "3d"], "must be after --since"),
        (["cost", "-e", "a b"], "not an endpoint id"),
    ],
)
def test_bad_flags_exit_2_with_one_line(tmp_path, args, needle):
    result = run(args, env=KEYED)
    assert result.exit_code == 2, f"{args}: exit {result.exit_code}\n{result.stderr}"
    assert needle in one_line_error(result), result.stderr
    assert not (tmp_path / "mirror.db").exists(), "a usage error created the database"


def test_no_key_is_a_usage_error_and_names_the_variables(tmp_path):
    result = run(["sync", "-e", "acme/a"])
    assert result.exit_code == 2
    assert one_line_error(result) == (
        "mirror: usage: no fal API key: set FAL_KEY (or FAL_KEY_ID and FAL_KEY_SECRET), "
        "or put it in a key file readable only by you (MIRROR_KEY_FILE)"
    )
    assert not (tmp_path / "mirror.db").exists()


def test_no_endpoint_on_an_existing_empty_database(tmp_path):
    from mirror.store import Store

    Store.open(str(tmp_path / "e.db")).close()
    result = run(["sync", "--db", str(tmp_path / "e.db")], env=KEYED)
    assert result.exit_code == 2
    assert "has no sync targets yet" in one_line_error(result)


def test_key_file_readable_by_others_is_refused(tmp_path):
    key = tmp_path / "key"
    key.write_text("sim-key-id:sim-key-secret")
    key.chmod(0o640)
    result = run(["sync", "-e", "acme/a"], env={"MIRROR_KEY_FILE": str(key)})
    assert result.exit_code == 2
    assert "readable by others" in one_line_error(result)


def test_there_is_no_key_flag():
    result = run(["sync", "--key", "x:y", "-e", "acme/a"])
    assert result.exit_code == 2
    assert "No such option '--key'" in one_line_error(result)


def test_db_upgrade_reports_revision(tmp_path):
    result = run(["db", "upgrade", "--db", str(tmp_path / "u.db")])
    assert result.exit_code == 0, result.stderr
    assert result.stdout.startswith(f"{tmp_path / 'u.db'}: upgraded to schema revision ")
    again = run(["db", "upgrade", "--db", str(tmp_path / "u.db")])
    assert "already at schema revision" in again.stdout


def test_an_interrupt_while_options_are_parsed_is_exit_130_not_aborted(monkeypatch):
    """Ctrl-C or SIGTERM (which mirror turns into an interrupt) can land while click still
    parses the command line, where click turns it into Abort: it is the same interruption
    as during the command, exit 130 with its one line, not "aborted" and exit 1."""

    def interrupted(self, ctx, args):
        raise KeyboardInterrupt

    monkeypatch.setattr(type(cli), "parse_args", interrupted)
    result = run(["status"])
    assert (result.exit_code, result.stderr.strip()) == (
        130,
        "mirror: interrupted; everything committed so far is kept",
    ), f"an interrupt during parsing: exit {result.exit_code}: {result.stderr!r}"
