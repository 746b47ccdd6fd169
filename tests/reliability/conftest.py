"""The reliability suite reports what it injected: trials, kills, faults, sequences, rows lost.

The figures are printed at the end of the session (they feed the README's "Guarantees").
"""

from __future__ import annotations

from support.figures import FIGURES


def pytest_terminal_summary(terminalreporter, exitstatus, config) -> None:  # type: ignore[no-untyped-def]
    if not FIGURES:
        return
    terminalreporter.section("reliability figures")
    for name in sorted(FIGURES):
        terminalreporter.write_line(f"{name}: {FIGURES[name]}")
