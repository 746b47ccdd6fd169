"""docs/cli.md is the --help of every command, as docs/gen_cli.py renders it today."""

from __future__ import annotations

import difflib
import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
GEN = ROOT / "docs" / "gen_cli.py"


def _generator():  # type: ignore[no-untyped-def]
    spec = importlib.util.spec_from_file_location("gen_cli", GEN)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_cli_reference_matches_the_help_of_every_command(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    # the help must not depend on the terminal or on the caller's settings
    monkeypatch.setenv("COLUMNS", "37")
    for name in ("MIRROR_DB", "MIRROR_BASE_URL"):
        monkeypatch.delenv(name, raising=False)
    gen = _generator()
    want = gen.render()
    have = gen.DOC.read_text(encoding="utf-8") if gen.DOC.exists() else ""
    if have != want:
        diff = "".join(
            difflib.unified_diff(
                have.splitlines(keepends=True),
                want.splitlines(keepends=True),
                "docs/cli.md (committed)",
                "docs/cli.md (from --help)",
                n=1,
            )
        )
        raise AssertionError(
            "docs/cli.md is out of date with the commands' --help: "
            "run `.venv/bin/python docs/gen_cli.py` and commit docs/cli.md\n" + diff[:4000]
        )


def test_every_command_has_a_section() -> None:
    from mirror.cli import cli

    text = (ROOT / "docs" / "cli.md").read_text(encoding="utf-8")
    names = ["mirror"]
    for name, cmd in cli.commands.items():
        names.append(f"mirror {name}")
        names += [f"mirror {name} {sub}" for sub in getattr(cmd, "commands", {})]
    missing = [n for n in names if f"\n## {n}\n" not in text]
    assert not missing, f"docs/cli.md has no section for {missing}: run docs/gen_cli.py"
