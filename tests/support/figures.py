"""Counts the reliability suite reports at the end of a session: trials, kills, faults,
sequences, rows lost (tests/reliability/conftest.py prints them; they feed the README's
"Guarantees")."""

from __future__ import annotations

FIGURES: dict[str, int] = {}


def count(name: str, n: int = 1) -> None:
    FIGURES[name] = FIGURES.get(name, 0) + n


def record(name: str, value: int) -> None:
    """A figure that is the same whichever test reports it (kept once, not added up)."""
    FIGURES[name] = max(FIGURES.get(name, 0), value)
