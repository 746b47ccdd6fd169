"""From a fresh clone: `pip install .` into a new virtualenv, then `mirror demo` elsewhere.

The demo runs inside a network namespace with nothing but loopback (when the machine lets
us make one), which proves it needs no key and no network.
"""

from __future__ import annotations

import os
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _can_unshare_net() -> bool:
    if not shutil.which("unshare"):
        return False
    r = subprocess.run(["unshare", "-n", "true"], capture_output=True)
    return r.returncode == 0


@pytest.mark.slow
def test_pip_install_then_demo_from_another_folder(tmp_path: Path) -> None:
    src = tmp_path / "clone"
    # a clean copy of the tracked tree, as a fresh clone would have it
    files = subprocess.run(
        ["git", "ls-files", "-co", "--exclude-standard"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    for f in files:
        if (ROOT / f).is_file():
            (src / f).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / f, src / f)
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    pip = subprocess.run(
        [str(venv / "bin" / "pip"), "install", "-q", str(src)], capture_output=True, text=True
    )
    assert pip.returncode == 0, pip.stderr[-3000:]
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FAL_", "MIRROR_"))}
    env["PATH"] = f"{venv / 'bin'}:{env['PATH']}"
    cmd = [str(venv / "bin" / "mirror"), "demo"]
    if _can_unshare_net():
        cmd = ["unshare", "-n", "sh", "-c", 'ip link set lo up 2>/dev/null; exec "$@"', "sh", *cmd]
    demo = subprocess.run(cmd, cwd=elsewhere, env=env, capture_output=True, text=True, timeout=300)
    assert demo.returncode == 0, demo.stderr[-3000:]
    assert "synced 5 targets" in demo.stdout and "datasette demo.db" in demo.stdout, demo.stdout
    con = sqlite3.connect(elsewhere / "demo.db")
    n, endpoints = con.execute(
        "SELECT count(*), count(DISTINCT endpoint_id) FROM requests"
    ).fetchone()
    assert n > 5000 and endpoints == 6, (n, endpoints)  # 4 of the apps, 2 hosted models
    assert con.execute("SELECT version_num FROM alembic_version").fetchone()[0].isdigit()
    # the installed package is the one that ran, not the source tree
    where = subprocess.run([str(venv / "bin" / "python"), "-c", "import mirror, mirror.migrations; print(mirror.__file__)"],
                           cwd=elsewhere, capture_output=True, text=True, check=True).stdout  # fmt: skip
    assert str(venv) in where, where
