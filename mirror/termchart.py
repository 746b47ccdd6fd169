"""Charts in a terminal: a bar per row, drawn with block characters (`mirror stats --chart`).

A bar is as long as its value's share of the largest, in eighths of a character
(``▏▎▍▌▋▊▉█``), so rows a few percent apart still differ. Bars are only drawn when asked
for: a program reading `mirror stats` gets numbers, never block characters.
"""

from __future__ import annotations

from collections.abc import Sequence

EIGHTHS = " ▏▎▍▌▋▊▉"
FULL = "█"
WIDTH = 20


def bar(value: float, top: float, width: int = WIDTH) -> str:
    """``value`` as a bar of at most ``width`` characters, ``top`` being the full width; a
    value above zero always shows at least an eighth."""
    if top <= 0 or value <= 0:
        return ""
    eighths = max(1, round(min(value, top) / top * width * 8))
    full, rest = divmod(eighths, 8)
    return FULL * full + (EIGHTHS[rest] if rest else "")


def bars(values: Sequence[float | None], width: int = WIDTH) -> list[str]:
    """A bar per value against the largest of them; None draws nothing."""
    top = max((v for v in values if v is not None), default=0)
    return [bar(v, top, width) if v is not None else "" for v in values]
