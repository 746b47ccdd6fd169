"""Printing rows: ``table`` for people, ``json`` / ``jsonl`` / ``csv`` for programs.

Rows arrive as an iterator of tuples with a list of column names, and every format but
``table`` streams them, so `mirror query --limit 0 --format jsonl` over millions of rows
runs in constant memory. ``table`` has to see every row to size its columns, then fits the
terminal (``shutil.get_terminal_size``, which honours ``COLUMNS``), shortening the widest
columns with an ellipsis.

- ``json``: one JSON array of objects; ``jsonl``: one object per line. Columns named in
  ``json_columns`` (the payloads) hold JSON text and are decoded into real JSON values.
- ``csv``: a header row, then one row per record; null is an empty field.
"""

from __future__ import annotations

import csv
import shutil
from collections.abc import Iterable, Sequence
from typing import Any, TextIO

import orjson

FORMATS = ("table", "json", "jsonl", "csv")
#: a cell of a table is never cut below this many characters
_MIN_WIDTH = 6


def write(
    out: TextIO,
    columns: Sequence[str],
    rows: Iterable[Sequence[Any]],
    fmt: str,
    *,
    json_columns: Iterable[str] = (),
    width: int | None = None,
) -> int:
    """Write rows in a format; returns how many rows were written."""
    if fmt == "table":
        return _table(out, columns, rows, width or shutil.get_terminal_size().columns)
    if fmt == "csv":
        return _csv(out, columns, rows)
    if fmt in ("json", "jsonl"):
        decode = [i for i, c in enumerate(columns) if c in set(json_columns)]
        return _json(out, columns, rows, decode, lines=fmt == "jsonl")
    raise ValueError(f"unknown format {fmt!r}")


def _decode(value: Any) -> Any:
    if not isinstance(value, str):
        return value
    try:
        return orjson.loads(value)
    except orjson.JSONDecodeError:
        return value  # stored text that is not JSON is shown as it is


def _default(value: Any) -> Any:
    if isinstance(value, bytes):
        return value.hex()
    raise TypeError


def _json(
    out: TextIO, columns: Sequence[str], rows: Iterable[Sequence[Any]], decode: list[int], *,
    lines: bool,
) -> int:  # fmt: skip
    n = 0
    opts = orjson.OPT_NON_STR_KEYS
    for row in rows:
        if decode:
            row = list(row)
            for i in decode:
                row[i] = _decode(row[i])
        text = orjson.dumps(dict(zip(columns, row, strict=True)), default=_default, option=opts)
        if lines:
            out.write(text.decode() + "\n")
        else:
            out.write(("[" if n == 0 else ",\n") + text.decode())
        n += 1
    if not lines:
        out.write("[]\n" if n == 0 else "]\n")
    return n


def _csv(out: TextIO, columns: Sequence[str], rows: Iterable[Sequence[Any]]) -> int:
    w = csv.writer(out, lineterminator="\n")
    w.writerow(columns)
    n = 0
    for row in rows:
        w.writerow(["" if v is None else cell_text(v, full=True) for v in row])
        n += 1
    return n


def cell_text(value: Any, *, full: bool = False) -> str:
    """A value as a person reads it: null empty, floats short (all digits when ``full``)."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        if full:
            return repr(value)
        if value != value or value in (float("inf"), float("-inf")):
            return str(value)
        if value != 0 and abs(value) < 0.1:
            return f"{value:.4g}"
        return f"{value:.3f}".rstrip("0").rstrip(".") if value != int(value) else f"{value:.0f}"
    if isinstance(value, (list, tuple, dict)):
        return orjson.dumps(value, default=_default).decode()
    if isinstance(value, bytes):
        return value.hex()
    return str(value).replace("\n", " ")


def _table(out: TextIO, columns: Sequence[str], rows: Iterable[Sequence[Any]], width: int) -> int:
    data = [list(r) for r in rows]
    cells = [[cell_text(v) for v in r] for r in data]
    numeric = [
        all(isinstance(r[i], (int, float)) or r[i] is None for r in data) and bool(data)
        for i in range(len(columns))
    ]
    widths = [max([len(c), *(len(r[i]) for r in cells)]) for i, c in enumerate(columns)]
    widths = fit(widths, max(width, 20), gap=2)
    lines = [_line([str(c) for c in columns], widths, numeric)]
    lines.append("  ".join("-" * w for w in widths))
    lines += [_line(r, widths, numeric) for r in cells]
    out.write("\n".join(line.rstrip() for line in lines) + "\n")
    return len(data)


def fit(widths: list[int], total: int, *, gap: int) -> list[int]:
    """Shrink the widest columns, one character at a time, until the row fits ``total``."""
    widths = list(widths)
    while sum(widths) + gap * (len(widths) - 1) > total:
        i = max(range(len(widths)), key=lambda j: widths[j])
        if widths[i] <= _MIN_WIDTH:
            break  # nothing sensible left to cut; the terminal wraps
        widths[i] -= 1
    return widths


def _line(cells: Sequence[str], widths: Sequence[int], numeric: Sequence[bool]) -> str:
    parts = []
    for text, w, num in zip(cells, widths, numeric, strict=True):
        if len(text) > w:
            text = text[: w - 1] + "…"
        parts.append(text.rjust(w) if num else text.ljust(w))
    return "  ".join(parts)
