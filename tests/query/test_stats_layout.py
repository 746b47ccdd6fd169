"""`mirror stats` as a table in the terminal a user has: the figures that matter side by side,
the rest on demand (--wide, --columns), and one block per row only when nothing else fits."""

from __future__ import annotations

import io
import json

import pytest

from mirror import query
from mirror.output import cell_text, display_width, narrow, write


def stats_json(run_cli, db, *args: str) -> list[dict]:
    out = run_cli(["stats", "--db", str(db), *args, "--format", "json"])
    assert out.exit_code == 0, out.output
    return json.loads(out.stdout)


def table(run_cli, db, width: int, *args: str):
    out = run_cli(["stats", "--db", str(db), *args], env={"COLUMNS": str(width)})
    assert out.exit_code == 0, out.output
    lines = out.stdout.splitlines()
    too_wide = [ln for ln in lines if display_width(ln) > width]
    assert not too_wide, f"lines wider than {width} columns:\n" + "\n".join(too_wide)
    return lines, out.stderr


def side_by_side(lines: list[str]) -> list[list[str]]:
    """A table's header and rows as words (no value of these tables holds a space)."""
    assert set(lines[1]) == {"-", " "}, f"no rule under the header: {lines[:2]}"
    return [ln.split() for ln in [lines[0], *lines[2:]]]


def test_an_80_column_terminal_gets_the_telling_columns_side_by_side(run_cli, demo_db):
    lines, err = table(run_cli, demo_db, 80, "--by", "endpoint")
    full = stats_json(run_cli, demo_db, "--by", "endpoint")
    header = lines[0].split()
    kept = len(header) - 1
    assert 0 < kept < len(query.STATS_FIELDS), f"not a narrowed table: {lines[0]}"
    cols = ["endpoint", *(c for c in query.STATS_FIELDS if c in query.STATS_RANKED[:kept])]
    want = [[cell_text(r[c]) for c in cols] for r in full]
    assert side_by_side(lines) == [cols, *want], "\n".join(lines)
    # the next column by rank would not have fitted beside them
    following = query.STATS_RANKED[kept]
    room = max(display_width(t) for t in [following, *(cell_text(r[following]) for r in full)])
    assert len(lines[1]) + 2 + room > 80, f"{following} would have fitted: {lines[1]}"
    left_out = query.STATS_RANKED[kept:]
    assert err == (
        f"mirror: note: {len(left_out)} columns left out to fit 80: {', '.join(left_out)}; "
        "--wide shows them all, --columns picks\n"
    ), err


def test_a_wide_terminal_shows_every_column_and_no_note(run_cli, demo_db):
    lines, err = table(run_cli, demo_db, 250, "--by", "endpoint")
    assert side_by_side(lines)[0] == ["endpoint", *query.STATS_FIELDS], lines[0]
    assert err == ""


def test_wide_keeps_every_column_as_blocks_when_they_cannot_sit_side_by_side(run_cli, demo_db):
    lines, err = table(run_cli, demo_db, 80, "--by", "endpoint", "--wide")
    groups = stats_json(run_cli, demo_db, "--by", "endpoint")
    per_row = 1 + 1 + len(query.STATS_FIELDS)
    assert len(lines) == len(groups) * per_row, "\n".join(lines)
    assert [ln.split()[0] for ln in lines[1:per_row]] == ["endpoint", *query.STATS_FIELDS]
    assert err == ""


def test_columns_picks_the_figures_in_every_format(run_cli, demo_db):
    lines, err = table(
        run_cli, demo_db, 80, "--by", "endpoint", "--columns", "p99,error", "-c", "max"
    )
    full = stats_json(run_cli, demo_db, "--by", "endpoint")
    cols = ["endpoint", "p99", "error", "max"]
    assert side_by_side(lines) == [cols, *([cell_text(r[c]) for c in cols] for r in full)]
    assert err == ""
    picked = stats_json(run_cli, demo_db, "--by", "endpoint", "-c", "p99,error,max")
    assert picked == [{c: r[c] for c in cols} for r in full]


def test_a_group_named_in_columns_is_shown_once_first(run_cli, demo_db):
    picked = stats_json(run_cli, demo_db, "--by", "endpoint", "-c", "requests,endpoint")
    assert picked and all(list(r) == ["endpoint", "requests"] for r in picked), picked[:2]


def test_blocks_only_when_not_even_one_figure_fits_beside_the_keys(run_cli, demo_db):
    lines, err = table(run_cli, demo_db, 30, "--by", "endpoint,hour")
    n = len(stats_json(run_cli, demo_db, "--by", "endpoint,hour"))
    per_row = 1 + 2 + len(query.STATS_FIELDS)
    assert lines[0].startswith("-[ 1 ]-") and len(lines) == n * per_row, "\n".join(lines[:20])
    assert [ln.split()[0] for ln in lines[1:per_row]] == ["endpoint", "hour", *query.STATS_FIELDS]
    assert err == ""


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--columns", "requests,latency"], "unknown column 'latency'"),
        (["--wide", "--columns", "p50"], "--wide shows every column and --columns picks some"),
    ],
)
def test_bad_column_choices_are_one_line_and_exit_2(run_cli, demo_db, args, needle):
    out = run_cli(["stats", "--db", str(demo_db), *args])
    assert out.exit_code == 2, out.output
    lines = out.stderr.splitlines()
    assert len(lines) == 1 and needle in lines[0], out.stderr


def test_narrow_keeps_the_keys_and_the_longest_ranked_prefix_that_fits():
    cols = ["key", "a", "bbbbbbbb", "c"]
    rows = [["k" * 10, 1, 2, 3], ["k2", 10, 20, 30]]
    ranked = ["c", "bbbbbbbb", "a"]
    # widths 10, 2, 8, 2 and a gap of 2 between columns: 28 in all
    assert narrow(cols, rows, ranked, 28) == (cols, rows, [])
    # the least telling goes first, and the table keeps its order
    kept = [["k" * 10, 2, 3], ["k2", 20, 30]]
    assert narrow(cols, rows, ranked, 27) == (["key", "bbbbbbbb", "c"], kept, ["a"])
    assert narrow(cols, rows, ranked, 23) == (
        ["key", "c"],
        [["k" * 10, 3], ["k2", 30]],
        ["bbbbbbbb", "a"],
    )
    # keys shortened to 12 columns each leave no room for any figure: everything stays,
    # for the table's one block per row
    two_keys = (["k1", "k2", "c"], [["x" * 40, "y" * 40, 3]])
    assert narrow(*two_keys, ["c"], 26) == (*two_keys, [])


def test_a_narrowed_table_prints_as_the_table_writer_sets_it():
    cols, rows, hidden = narrow(["key", "x", "y"], [["a" * 14, 1.5, 2]], ["x", "y"], 20)
    buf = io.StringIO()
    write(buf, cols, rows, "table", width=20)
    assert (hidden, buf.getvalue()) == (
        ["y"],
        "key               x\n--------------  ---\naaaaaaaaaaaaaa  1.5\n",
    )
