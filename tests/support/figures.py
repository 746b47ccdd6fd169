"""Counts the reliability suite reports at the end of a session: trials, kills, faults,
sequences, rows lost (tests/reliability/conftest.py prints them; they feed the README's
"Guarantees")."""

from __future__ import annotations

FIGURES: dict[str, int] = {}
#: the figures kept once (`record`), not added up across tests or test processes
KEPT_ONCE: set[str] = set()


def count(name: str, n: int = 1) -> None:
    FIGURES[name] = FIGURES.get(name, 0) + n


def record(name: str, value: int) -> None:
    """A figure that is the same whichever test reports it (kept once, not added up)."""
    KEPT_ONCE.add(name)
    FIGURES[name] = max(FIGURES.get(name, 0), value)


def merge(figures: dict[str, int], kept_once: list[str]) -> None:
    """Another test process's figures (``pytest -n``): counts added, kept-once ones maxed."""
    for name, value in figures.items():
        if name in kept_once:
            record(name, value)
        else:
            count(name, value)
