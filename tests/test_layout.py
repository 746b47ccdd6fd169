"""The package's layout: every module imports on its own, and no module reaches into
another's private names.

- An import cycle (``a`` imports ``b`` at the top while ``b`` imports ``a``) only shows when
  the wrong module happens to be imported first: each module is imported alone, in a child
  forked from a fresh interpreter that has loaded only the big third-party packages (no
  module of mirror), and the test names every one that fails.
- A leading underscore says "only this module uses it". ``from mirror.x import _name``, and
  ``mirror.x._name`` through a module name, elsewhere (mirror/, tests/, bench/, migrations/) are
  refused: make the name public where it is meant to be shared. The same holds for the tests'
  shared helpers, the ``support`` package (tests/support/). Private attributes of
  *instances* (``syncer._write_once``) are out of this check's reach, on purpose.
"""

from __future__ import annotations

import ast
import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCANNED = ("mirror", "tests", "bench", "migrations")

#: Modules that cannot be imported outside the program that runs them, and why.
NOT_IMPORTABLE_ALONE = {
    # Alembic's environment script reads `alembic.context`, which only exists while Alembic
    # runs a migration command
    "mirror.migrations.env": "run by Alembic only",
}

#: private names other modules may still use: none
ALLOWED_PRIVATE: set[tuple[str, str]] = set()


# --------------------------------------------------------------------------- imports


def package_modules() -> list[str]:
    """Every module of the installed ``mirror`` package, from its files: mirror/ (with its
    subpackages) and migrations/, which is installed as ``mirror.migrations``."""
    names = []
    for root, prefix in ((REPO / "mirror", "mirror"), (REPO / "migrations", "mirror.migrations")):
        for path in sorted(root.rglob("*.py")):
            parts = list(path.relative_to(root).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            names.append(".".join([prefix, *parts]))
    return names


#: third-party packages the import server loads before it forks a child per module:
#: importing them is most of each fresh interpreter's time, and a cycle can only be
#: among mirror's own modules, which no child finds already imported
PRELOADED = ("sqlalchemy", "alembic", "httpx", "click", "orjson", "tqdm", "prometheus_client")

#: a fresh interpreter that loads ``PRELOADED`` and then, for each module named on its
#: standard input, forks a child that imports that module alone; it prints one JSON line
#: per module: the module and its error (null if it imported)
_IMPORT_SERVER = """
import importlib, json, os, sys, traceback
for name in %r:
    importlib.import_module(name)
assert not any(m == "mirror" or m.startswith("mirror.") for m in sys.modules)
for module in sys.stdin.read().split():
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(r)
        try:
            importlib.import_module(module)
            error = ""
        except BaseException:
            error = traceback.format_exc().strip().splitlines()[-1]
        os.write(w, error.encode())
        os._exit(0)
    os.close(w)
    with os.fdopen(r, "rb") as f:
        error = f.read().decode()
    _, status = os.waitpid(pid, 0)
    if not error and status:
        error = f"the child ended with status {status}"
    print(json.dumps([module, error or None]), flush=True)
"""


def _import_each_alone(modules: list[str]) -> list[tuple[str, str | None]]:
    proc = subprocess.run(
        [sys.executable, "-c", _IMPORT_SERVER % (PRELOADED,)],
        input="\n".join(modules),
        capture_output=True,
        text=True,
        cwd=REPO,
        env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"},
        timeout=300,
    )
    assert proc.returncode == 0, f"the import server failed: {proc.stderr[-2000:]}"
    return [tuple(json.loads(line)) for line in proc.stdout.splitlines()]  # type: ignore[misc]


def test_the_module_list_covers_the_package() -> None:
    modules = package_modules()
    for expected in ("mirror", "mirror.cli", "mirror.cliutil", "mirror.simulator.server",
                     "mirror.migrations", "mirror.migrations.env"):  # fmt: skip
        assert expected in modules


def test_every_module_imports_on_its_own_in_a_fresh_interpreter() -> None:
    modules = [m for m in package_modules() if m not in NOT_IMPORTABLE_ALONE]
    half = len(modules) // 2  # two servers, one per core
    with ThreadPoolExecutor(max_workers=2) as pool:
        results = [r for part in pool.map(_import_each_alone, (modules[:half], modules[half:]))
                   for r in part]  # fmt: skip
    assert [m for m, _ in results] == modules, "the import server skipped modules"
    failed = [f"{module}: {error}" for module, error in results if error is not None]
    assert not failed, "cannot be imported on its own:\n  " + "\n  ".join(failed)


# --------------------------------------------------------------------------- private names


def support_modules() -> list[str]:
    """Every module of the tests' ``support`` package (tests/ is on sys.path)."""
    root = REPO / "tests" / "support"
    return [
        "support",
        *(f"support.{p.stem}" for p in sorted(root.glob("*.py")) if p.stem != "__init__"),
    ]


def _is_private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def _module_of(path: Path) -> str:
    """The dotted name a file is imported as (``mirror.x``, ``mirror.migrations.y``,
    ``support.w``, ``tests.z``)."""
    rel = path.relative_to(REPO).with_suffix("")
    parts = list(rel.parts)
    if parts[0] == "migrations":
        parts[0:1] = ["mirror", "migrations"]
    if parts[:2] == ["tests", "support"]:
        parts.pop(0)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _dotted(node: ast.expr) -> list[str] | None:
    """``a.b.c`` as ["a", "b", "c"]; None for anything but names and attributes."""
    out: list[str] = []
    while isinstance(node, ast.Attribute):
        out.append(node.attr)
        node = node.value
    if not isinstance(node, ast.Name):
        return None
    out.append(node.id)
    return out[::-1]


def _private_in(dotted: list[str], modules: set[str]) -> tuple[str, str] | None:
    """(module, private name) when a dotted path reaches a private name of a checked module:
    the longest prefix that is a module, then the name right after it."""
    for cut in range(len(dotted) - 1, 0, -1):
        module = ".".join(dotted[:cut])
        if module in modules:
            name = dotted[cut]
            return (module, name) if _is_private(name) else None
    return None


def private_uses(source: str, own: str, modules: set[str]) -> Iterator[tuple[int, str, str]]:
    """(line, module, name) for each private name of another checked module that the code
    of module ``own`` uses; ``modules``: the checked modules there are (mirror's, and the
    tests' ``support`` package)."""
    tree = ast.parse(source)
    roots = {m.split(".")[0] for m in modules}
    # local names bound to checked modules: `import mirror.x` binds `mirror` (the chain then
    # names the module), `import mirror.x as m` and `from mirror import x` bind the module
    aliases: dict[str, str] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                root = a.name.split(".")[0]
                if root in roots:
                    if a.asname:
                        aliases[a.asname] = a.name
                    else:
                        aliases[root] = root
                    for i, part in enumerate(a.name.split(".")):
                        if _is_private(part):
                            yield node.lineno, ".".join(a.name.split(".")[:i]), part
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            if node.module.split(".")[0] not in roots:
                continue
            for a in node.names:
                sub = f"{node.module}.{a.name}"
                if sub in modules:
                    aliases[a.asname or a.name] = sub
                if _is_private(a.name) and node.module != own:
                    yield node.lineno, node.module, a.name
    seen: set[int] = set()
    for node in ast.walk(tree):
        if not isinstance(node, ast.Attribute) or id(node) in seen:
            continue
        dotted = _dotted(node)
        if dotted is None:
            continue
        # only the outermost attribute of a chain: its inner ones are the same path, shorter
        inner = node.value
        while isinstance(inner, ast.Attribute):
            seen.add(id(inner))
            inner = inner.value
        if dotted[0] not in aliases:
            continue
        full = aliases[dotted[0]].split(".") + dotted[1:]
        hit = _private_in(full, modules)
        if hit is not None and hit[0] != own:
            yield node.lineno, *hit
    # dotted paths in strings: monkeypatch targets, code run by `python -c`; not prose
    docstrings = _docstrings(tree)
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            if id(node) in docstrings:
                continue
            for m in re.finditer(
                rf"\b(?:{'|'.join(sorted(roots))})(?:\.[A-Za-z_]\w*)+", node.value
            ):
                hit = _private_in(m.group().split("."), modules)
                if hit is not None and hit[0] != own:
                    yield node.lineno, *hit


def _docstrings(tree: ast.Module) -> set[int]:
    """The ``id`` of every docstring's node in ``tree``."""
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            first = node.body[0] if node.body else None
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                found.add(id(first.value))
    return found


def _scanned_files() -> list[Path]:
    """Every Python file of mirror/, tests/, bench/ and migrations/ but this one (whose
    examples of what the check refuses are strings it would find)."""
    here = Path(__file__).resolve()
    return sorted(p for d in SCANNED for p in (REPO / d).rglob("*.py") if p.resolve() != here)


def test_no_private_name_is_used_from_another_module() -> None:
    modules = set(package_modules()) | set(support_modules())
    offenders, allowed_used = [], set()
    for path in _scanned_files():
        source = path.read_text(encoding="utf-8")
        for line, module, name in private_uses(source, _module_of(path), modules):
            if (module, name) in ALLOWED_PRIVATE:
                allowed_used.add((module, name))
                continue
            offenders.append(f"{path.relative_to(REPO)}:{line}: {module}.{name}")
    assert not offenders, "private names used from another module:\n  " + "\n  ".join(offenders)
    stale = sorted(ALLOWED_PRIVATE - allowed_used)
    assert not stale, f"no longer used, remove from ALLOWED_PRIVATE: {stale}"


@pytest.mark.parametrize(
    "code",
    [
        "from mirror.store import _hidden",
        "import mirror.store\nmirror.store._hidden()",
        "import mirror.store as s\ns._hidden",
        "from mirror import store\nstore._hidden.clear()",
        "x = 'mirror.store._hidden'",
    ],
)
def test_the_check_finds_each_way_of_reaching_a_private_name(code: str) -> None:
    found = list(private_uses(code, "tests.probe", {"mirror", "mirror.store"}))
    assert [(module, name) for _, module, name in found] == [("mirror.store", "_hidden")]


@pytest.mark.parametrize(
    "code",
    [
        "from mirror.store import Store, __version__",
        "import mirror.store\nmirror.store.Store.open",
        "syncer = object()\nsyncer._write_once",
        '"""Mentions ``mirror.store._hidden`` in prose."""',
    ],
)
def test_the_check_lets_public_names_and_instance_attributes_be(code: str) -> None:
    assert list(private_uses(code, "tests.probe", {"mirror", "mirror.store"})) == []
