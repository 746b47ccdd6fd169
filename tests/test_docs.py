"""The documentation stays true: docs/cli.md is today's --help, every test the pages cite
exists, every link lands inside the repository, and the README stays short."""

from __future__ import annotations

import difflib
import importlib.util
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
GEN = DOCS / "gen_cli.py"
README = ROOT / "README.md"
#: the README is the front page; everything else lives in docs/
README_MAX_BYTES = 12_000


def _pages() -> list[Path]:
    return [README, *sorted(DOCS.glob("*.md"))]


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

    text = (DOCS / "cli.md").read_text(encoding="utf-8")
    names = ["mirror"]
    for name, cmd in cli.commands.items():
        names.append(f"mirror {name}")
        names += [f"mirror {name} {sub}" for sub in getattr(cmd, "commands", {})]
    missing = [n for n in names if f"\n## {n}\n" not in text]
    assert not missing, f"docs/cli.md has no section for {missing}: run docs/gen_cli.py"


_CITED = re.compile(r"(tests/[\w/]+\.py)|::(test_\w+)|\b(test_\w+)\b(?!\.py)")


def test_every_cited_test_exists() -> None:
    """``tests/x.py::test_a``, then ``::test_b`` (same file), or a bare ``test_c`` anywhere
    under tests/: each must be defined where the page says."""
    defined: dict[Path, str] = {p: p.read_text() for p in (ROOT / "tests").rglob("*.py")}
    everywhere = "".join(defined.values())
    wrong: list[str] = []
    for page in _pages():
        current: Path | None = None
        for m in _CITED.finditer(page.read_text(encoding="utf-8")):
            path, chained, bare = m.groups()
            if path:
                current = ROOT / path
                if current not in defined:
                    wrong.append(f"{page.name}: {path} does not exist")
            elif chained:
                if current is None or f"def {chained}(" not in defined.get(current, ""):
                    wrong.append(f"{page.name}: {current}::{chained} is not defined there")
            elif f"def {bare}(" not in everywhere:
                wrong.append(f"{page.name}: {bare} is defined nowhere under tests/")
    assert not wrong, "the docs cite tests that do not exist:\n" + "\n".join(wrong)


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def _anchors(page: Path) -> set[str]:
    text = re.sub(r"```.*?```", "", page.read_text(encoding="utf-8"), flags=re.S)
    return {_slug(h) for h in re.findall(r"^#+ (.+)$", text, re.M)}


_LINK = re.compile(r"\]\(([^)\s]+)\)")


def test_links_stay_inside_the_repository() -> None:
    """Relative links resolve to files of the repository (and their headings); nothing in
    the docs or pyproject.toml's comments points at a path above the repository."""
    wrong: list[str] = []
    for page in _pages():
        text = page.read_text(encoding="utf-8")
        for target in _LINK.findall(text):
            if re.match(r"[a-z]+:", target):  # https:, mailto:
                continue
            path, _, anchor = target.partition("#")
            dest = (page.parent / path).resolve() if path else page
            if not dest.is_relative_to(ROOT):
                wrong.append(f"{page.name}: {target} leaves the repository")
            elif not dest.exists():
                wrong.append(f"{page.name}: {target} does not exist")
            elif anchor and dest.suffix == ".md" and anchor not in _anchors(dest):
                wrong.append(f"{page.name}: {target} names no heading of {dest.name}")
    for f in [*_pages(), ROOT / "pyproject.toml"]:
        for ref in re.findall(r"(?:\.\./)+[\w.-]+", f.read_text(encoding="utf-8")):
            if not (f.parent / ref).resolve().is_relative_to(ROOT):
                wrong.append(f"{f.name}: {ref} points outside the repository")
    assert not wrong, "\n".join(wrong)


def test_the_readme_stays_short() -> None:
    size = len(README.read_bytes())
    assert size <= README_MAX_BYTES, (
        f"README.md is {size} bytes, over {README_MAX_BYTES}: move detail into docs/"
    )
