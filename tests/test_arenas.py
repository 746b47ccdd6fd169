"""The malloc arena cap: set where the C library has ``mallopt`` (glibc), skipped elsewhere."""

from __future__ import annotations

import ctypes
import subprocess
import sys

import pytest

from mirror import arenas


def test_the_cap_is_set_on_glibc_and_skipped_elsewhere(monkeypatch: pytest.MonkeyPatch) -> None:
    glibc = sys.platform.startswith("linux") and hasattr(ctypes.CDLL(None), "mallopt")
    assert arenas.cap() is glibc, f"cap() on {sys.platform}, mallopt present: {glibc}"
    monkeypatch.setattr(arenas.sys, "platform", "darwin")
    assert arenas.cap() is False, "a cap was set where there is no glibc"


def test_the_command_sets_it_before_any_thread_starts() -> None:
    """``mirror --version`` runs ``main``: the cap is asked for with one thread alive."""
    code = (
        "import threading, mirror.arenas as a, mirror.cli as c\n"
        "seen = []\n"
        "a.cap = lambda: seen.append(threading.active_count()) or True\n"
        "try:\n    c.main()\nexcept SystemExit:\n    pass\n"
        "print(seen)\n"
    )
    out = subprocess.run([sys.executable, "-c", code, "--version"], capture_output=True,
                         text=True, check=True)  # fmt: skip
    assert out.stdout.strip().splitlines()[-1] == "[1]", f"cap() calls, threads alive: {out}"
