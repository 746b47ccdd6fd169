"""Printing rows: ``table`` for people, ``json`` / ``jsonl`` / ``csv`` for programs.

Rows arrive as an iterator of tuples with a list of column names, and every format but
``table`` streams them, so `mirror query --limit 0 --format jsonl` over millions of rows
runs in constant memory. ``table`` has to see every row to size its columns, then fits the
terminal (``shutil.get_terminal_size``, which honours ``COLUMNS``): the widest columns are
shortened with an ellipsis, and when even that cannot fit, each row is printed as a block
of ``column  value`` lines. Timestamps show to the second there. A table with more columns
than a terminal holds can first be narrowed (`narrow`): the least important columns are
left out, so the rest stay side by side.

- ``json``: one JSON array of objects; ``jsonl``: one object per line. Columns named in
  ``json_columns`` (the payloads) hold JSON text and are decoded into real JSON values.
- ``csv``: a header row, then one row per record; null is an empty field.

Values are the server's text, and may hold control characters (a request id with an
escape sequence in it). The table makes them visible (``mirror.redact.printable``: ``\n``,
``\x1b``), so a value can neither break the table's lines nor drive the terminal. JSON
escapes them by its own rules. CSV keeps them as they are, quoted where needed (a line
break inside a quoted field is valid CSV): it is for programs, which must get the value the
database holds, byte for byte (an id rewritten to ``\x1b`` would no longer match it).
"""

from __future__ import annotations

import csv
import shutil
import unicodedata
from collections.abc import Iterable, Sequence
from typing import Any, TextIO

import orjson

from mirror.redact import printable

FORMATS = ("table", "json", "jsonl", "csv")
#: a column of a table is never cut below this many characters (see `fit`)
_MIN_WIDTH = 12


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
    text = str(value)
    if not full and len(text) == 27 and text[10] == "T" and text[19] == "." and text[26] == "Z":
        return text[:19] + "Z"  # a stored timestamp, to the second: people do not read µs
    return text if full else printable(text)


def _table(out: TextIO, columns: Sequence[str], rows: Iterable[Sequence[Any]], width: int) -> int:
    """Columns side by side when they fit (the widest shortened first), else one record a block."""
    width = max(width, 20)
    data = [list(r) for r in rows]
    cells = [[cell_text(v) for v in r] for r in data]
    numeric = [
        all(isinstance(r[i], (int, float)) or r[i] is None for r in data) and bool(data)
        for i in range(len(columns))
    ]
    widths = fit(_natural_widths(columns, cells), width, gap=2)
    if widths is None:
        _records(out, columns, cells, width)
        return len(data)
    lines = [_line([printable(str(c)) for c in columns], widths, numeric)]
    lines.append("  ".join("-" * w for w in widths))
    lines += [_line(r, widths, numeric) for r in cells]
    out.write("\n".join(line.rstrip() for line in lines) + "\n")
    return len(data)


def narrow(
    columns: Sequence[str], rows: Iterable[Sequence[Any]], ranked: Sequence[str], width: int
) -> tuple[list[str], list[list[Any]], list[str]]:
    """The columns (and rows) of a table narrowed to fit ``width``, and those left out.

    ``ranked``: the columns that may be left out, most important first; every other column
    (the keys that name a row) always stays. As many ranked columns as fit side by side
    at their full width are kept, in the order of ``columns``; failing that, as many as
    fit with the widest shortened (`fit`). Only when not even the first ranked column fits
    beside the keys is nothing left out: the table then prints one block per row.
    """
    ranked = [c for c in ranked if c in columns]
    data = [list(r) for r in rows]
    cells = [[cell_text(v) for v in r] for r in data]
    natural = dict(zip(columns, _natural_widths(columns, cells), strict=True))
    keys = [c for c in columns if c not in ranked]
    width = max(width, 20)

    def fits(chosen: Sequence[str], shortened: bool) -> bool:
        widths = [natural[c] for c in chosen]
        if shortened:
            return fit(widths, width, gap=2) is not None
        return sum(widths) + 2 * (len(widths) - 1) <= width

    for shortened in (False, True):
        for n in range(len(ranked), 0, -1):
            keep = set(keys) | set(ranked[:n])
            chosen = [c for c in columns if c in keep]
            if fits(chosen, shortened):
                at = [columns.index(c) for c in chosen]
                return chosen, [[r[i] for i in at] for r in data], list(ranked[n:])
    return list(columns), data, []


def _natural_widths(columns: Sequence[str], cells: Sequence[Sequence[str]]) -> list[int]:
    """Each column's width with nothing shortened: its name's or its widest cell's."""
    return [
        max([display_width(c), *(display_width(r[i]) for r in cells)])
        for i, c in enumerate(columns)
    ]


def aligned(columns: Sequence[str], rows: Iterable[Sequence[Any]]) -> list[str]:
    """A header line and a line per row, the columns side by side and left-aligned, each as
    wide as its widest value (``str`` of it): no rule, no fitting to the terminal, padding
    kept. For a few short rows set in running text (`mirror demo`'s example answers)."""
    head = [str(c) for c in columns]
    cells = [[str(v) for v in r] for r in rows]
    widths = _natural_widths(head, cells)
    left = [False] * len(head)
    return [_line(r, widths, left) for r in [head, *cells]]


def fit(natural: list[int], total: int, *, gap: int) -> list[int] | None:
    """Column widths that fit ``total``, shortening the widest first; None if none do.

    No column is cut below ``_MIN_WIDTH`` characters (or its natural width, if smaller):
    past that a table is unreadable, and records are printed one after another instead.
    """
    widths = list(natural)
    floor = [min(n, _MIN_WIDTH) for n in natural]
    while sum(widths) + gap * (len(widths) - 1) > total:
        i = max(range(len(widths)), key=lambda j: widths[j] - floor[j])
        if widths[i] <= floor[i]:
            return None
        widths[i] -= 1
    return widths


def _records(out: TextIO, columns: Sequence[str], cells: list[list[str]], width: int) -> None:
    """One block per row, a column a line (like psql's expanded display)."""
    key_w = max(len(c) for c in columns)
    room = max(width - key_w - 2, 8)
    for n, row in enumerate(cells, 1):
        out.write(
            f"-[ {n} ]" + "-" * max(0, min(width, key_w + 2 + room) - len(f"-[ {n} ]")) + "\n"
        )
        for c, text in zip(columns, row, strict=True):
            out.write(f"{c.ljust(key_w)}  {_clip(text, room)}".rstrip() + "\n")


def display_width(text: str) -> int:
    """Terminal columns a text takes: wide (CJK) characters two, combining marks none."""
    if text.isascii():
        return len(text)
    return sum(_char_width(c) for c in text)


def _char_width(c: str) -> int:
    if unicodedata.combining(c):
        return 0
    return 2 if unicodedata.east_asian_width(c) in ("W", "F") else 1


def _clip(text: str, width: int) -> str:
    """``text`` cut to ``width`` terminal columns (an ellipsis marking the cut), then padded."""
    if display_width(text) <= width:
        return text
    out, used = [], 0
    for c in text:
        w = _char_width(c)
        if used + w > width - 1:
            break
        out.append(c)
        used += w
    return "".join(out) + "…"


def _pad(text: str, width: int, *, right: bool) -> str:
    gap = " " * max(0, width - display_width(text))
    return gap + text if right else text + gap


def _line(cells: Sequence[str], widths: Sequence[int], numeric: Sequence[bool]) -> str:
    return "  ".join(
        _pad(_clip(text, w), w, right=num)
        for text, w, num in zip(cells, widths, numeric, strict=True)
    )
