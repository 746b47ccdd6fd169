"""The README's command list, schema and test table stay true."""

from __future__ import annotations

import re
from pathlib import Path

from click.testing import CliRunner

from mirror.cli import cli
from mirror.schema import requests, sync_runs, sync_targets, sync_windows

README = (Path(__file__).resolve().parents[1] / "README.md").read_text()


def _commands(group, prefix="mirror"):
    for name, cmd in group.commands.items():
        if hasattr(cmd, "commands"):
            yield from _commands(cmd, f"{prefix} {name}")
        else:
            yield f"{prefix} {name}"


def test_every_command_is_documented():
    missing = [c for c in _commands(cli) if f"`{c}`" not in README]
    assert not missing, f"commands missing from the README: {missing}"


def test_every_sync_option_is_documented():
    sync = cli.commands["sync"]
    for p in sync.params:
        for opt in p.opts:
            if opt.startswith("--") and opt != "--help":
                assert f"`{opt}" in README or f"{opt}`" in README or f" {opt} " in README, (
                    f"{opt} missing from the README"
                )


def test_schema_section_lists_every_column():
    table_rows = set(re.findall(r"^\| `(\w+)` \|", README, re.M))
    missing = [c.name for c in requests.columns if c.name not in table_rows]
    assert not missing, f"requests columns missing from the README schema: {missing}"
    for t in (sync_targets, sync_windows, sync_runs):
        for c in t.columns:
            assert f"`{c.name}`" in README, f"{t.name}.{c.name} missing from the README"


def test_tests_named_in_the_readme_exist():
    root = Path(__file__).resolve().parents[1]
    names = set(re.findall(r"`(test_\w+)`", README))
    code = "".join(p.read_text() for p in (root / "tests").rglob("test_*.py"))
    missing = [n for n in names if f"def {n}(" not in code]
    assert not missing, f"the README names tests that do not exist: {missing}"


def test_help_works_for_every_command():
    runner = CliRunner()
    for c in _commands(cli):
        result = runner.invoke(cli, [*c.split()[1:], "--help"])
        assert result.exit_code == 0, f"{c} --help failed: {result.output}"
