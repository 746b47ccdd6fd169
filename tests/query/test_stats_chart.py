"""`mirror stats --chart`: a bar column for people, asked for, never in a program's output."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mirror.termchart import bar, bars

BLOCKS = set("▏▎▍▌▋▊▉█")


@pytest.mark.parametrize(
    ("value", "top", "width", "drawn"),
    [
        (8, 8, 2, "██"),
        (4, 8, 2, "█"),
        (3, 8, 2, "▊"),  # six eighths of a character
        (1, 1000, 2, "▏"),  # a value above zero always shows
        (0, 8, 2, ""),
        (9, 8, 2, "██"),  # never past the width
        (5, 0, 2, ""),
    ],
)
def test_a_bar_is_its_share_of_the_largest_in_eighths(value, top, width, drawn) -> None:
    assert bar(value, top, width) == drawn


def test_bars_scale_to_the_largest_value() -> None:
    assert bars([10, 5, None, 0], width=4) == ["████", "██", "", ""]


def test_stats_by_day_draws_a_bar_per_day(run_cli, demo_db: Path) -> None:
    args = ["stats", "--db", str(demo_db), "--by", "day", "--since", "2026-11-25"]
    plain = run_cli([*args, "-f", "json"])
    counts = [r["requests"] for r in json.loads(plain.stdout)]
    r = run_cli([*args, "--chart"], env={"COLUMNS": "240"})
    assert r.exit_code == 0, r.stderr
    head, _rule, *rows = r.stdout.splitlines()
    assert head.split()[:3] == ["day", "requests", "chart"]
    start = head.index("chart")
    drawn = [row[start : start + 20].strip() for row in rows]
    assert drawn == bars(counts), r.stdout
    assert max(len(d) for d in drawn) == 20 and all(set(d) <= BLOCKS for d in drawn)


def test_without_chart_there_is_no_bar_and_with_a_program_format_it_is_refused(
    run_cli, demo_db: Path
) -> None:
    args = ["stats", "--db", str(demo_db), "--by", "day"]
    assert not BLOCKS & set(run_cli(args).stdout), "bars drawn without --chart"
    for fmt in ("json", "jsonl", "csv"):
        r = run_cli([*args, "--chart", "-f", fmt])
        assert r.exit_code == 2
        assert r.stderr.startswith(
            f"mirror: usage: --chart draws bars in the table: it does not mix with --format {fmt}"
        ), r.stderr
