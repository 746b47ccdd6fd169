"""The offline commands as a user meets them: formats, bad input, status, help."""

from __future__ import annotations

import csv
import io
import json

import pytest
from support.rows import add_targets, fill, make_rows, read_all
from support.sim import NOW

from mirror import query
from mirror.output import display_width
from mirror.store import Store
from mirror.timeparse import to_text

COLS = ["request_id", "endpoint_id", "status", "status_code", "duration", "ended_at"]
NEWEST_SQL = (
    f"SELECT {', '.join(COLS)} FROM requests WHERE endpoint_id = 'acme/upscaler' "
    "ORDER BY ended_at IS NULL, ended_at DESC, request_id DESC LIMIT 5"
)
#: a target's media archive in `mirror status --format json` when nothing is archived
NO_MEDIA = {"files": 0, "bytes": 0, "last_gone_at": None, "pending": 0, "archived": 0,
            "gone": 0, "failed": 0, "refused": 0}  # fmt: skip
#: what status says of cost in a mirror no sync has mirrored cost into
NO_COST = {"state": "never", "reason": None, "checked_at": None, "ok_at": None,
           "covered_to": None, "events": 0, "prices_checked_at": None,
           "usage_checked_at": None, "usage_differences": 0}  # fmt: skip


def one_line(result) -> str:
    lines = [ln for ln in result.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, f"expected one line on stderr, got:\n{result.stderr}"
    assert "Traceback" not in result.output
    return lines[0]


def test_json_jsonl_and_csv_carry_the_same_rows(run_cli, demo_db):
    want = [dict(zip(COLS, r, strict=True)) for r in read_all(demo_db, NEWEST_SQL)]
    base = ["query", "--db", str(demo_db), "-e", "acme/upscaler", "-n", "5"]
    js = run_cli([*base, "--format", "json"])
    assert js.exit_code == 0, js.output
    assert js.stdout.startswith("[") and json.loads(js.stdout) == want
    jl = run_cli([*base, "--format", "jsonl"]).stdout.splitlines()
    assert [json.loads(line) for line in jl] == want
    rows = list(csv.DictReader(io.StringIO(run_cli([*base, "--format", "csv"]).stdout)))
    assert next(list(r) for r in rows) == COLS
    assert rows == [{k: "" if v is None else str(v) for k, v in w.items()} for w in want]


def test_an_empty_result_is_still_valid_output(run_cli, demo_db):
    base = ["query", "--db", str(demo_db), "-e", "nobody/else"]
    assert json.loads(run_cli([*base, "--format", "json"]).stdout) == []
    assert run_cli([*base, "--format", "jsonl"]).stdout == ""
    assert run_cli([*base, "--format", "csv"]).stdout == ",".join(COLS) + "\n"


def test_payloads_are_decoded_in_json(run_cli, demo_db):
    out = run_cli(["query", "--db", str(demo_db), "--payloads", "-n", "3", "--format", "jsonl",
                   "-c", "request_id", "--search", "lighthouse"])  # fmt: skip
    assert out.exit_code == 0, out.output
    rows = [json.loads(line) for line in out.stdout.splitlines()]
    assert rows and all(list(r) == ["request_id", "json_input", "json_output"] for r in rows)
    for r in rows:
        (raw,) = read_all(
            demo_db, "SELECT json_input FROM requests WHERE request_id = ?", (r["request_id"],)
        )
        assert r["json_input"] == json.loads(raw[0]) and "lighthouse" in r["json_input"]["prompt"]


@pytest.mark.parametrize("width", [60, 100, 140, 250])
def test_the_table_fits_the_terminal(run_cli, demo_db, width):
    out = run_cli(
        ["query", "--db", str(demo_db), "-n", "20", "--payloads"], env={"COLUMNS": str(width)}
    )
    assert out.exit_code == 0, out.output
    lines = out.stdout.splitlines()
    assert max(display_width(line) for line in lines) <= width, "\n".join(lines)
    cols = [*COLS, "json_input", "json_output"]
    if width >= 140:  # side by side: a header, a rule and 20 rows
        assert len(lines) == 22 and lines[0].split() == cols, "\n".join(lines[:3])
    else:  # too narrow for 8 columns: one block of "column  value" lines per row
        assert len(lines) == 20 * 9 and lines[0].startswith("-[ 1 ]-"), "\n".join(lines[:10])
        assert [line.split()[0] for line in lines[1:9]] == cols
    want = read_all(
        demo_db, "SELECT request_id FROM requests ORDER BY ended_at DESC, request_id DESC LIMIT 1"
    )
    assert want[0][0][:8] in out.stdout


def test_wide_characters_keep_the_columns_aligned():
    from mirror.output import write

    buf = io.StringIO()
    write(
        buf,
        ["prompt", "n"],
        [["東京の夜景, neon reflections", 1], ["São Paulo", 22]],
        "table",
        width=24,
    )
    lines = buf.getvalue().splitlines()
    assert [display_width(line) for line in lines] == [24, 24, 24, 24], lines
    assert lines[2] == "東京の夜景, neon re…   1"


def test_unknown_columns_are_a_usage_error(run_cli, demo_db):
    out = run_cli(["query", "--db", str(demo_db), "-c", "request_id,password"])
    assert out.exit_code == 2
    assert "unknown column 'password'" in one_line(out)


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["query", "--since", "yesterday-ish"], "not a time"),
        (["query", "--since", "2d", "--until", "3d"], "--until must be after --since"),
        (["query", "--status", "failed"], "'failed' is not one of"),
        (["query", "--min-duration", "5", "--max-duration", "1"], "--max-duration"),
        (["query", "--search", "  "], "--search needs at least one word"),
        (["query", "--sort", "prompt"], "'prompt' is not one of"),
        (["query", "--limit", "-1"], "--limit"),
        (["stats", "--by", "endpoint,week"], "cannot group by 'week'"),
        (["stats", "--by", "hour,day"], "not both"),
        (["sql", "SELECT 1", "--timeout", "0"], "--timeout"),
    ],
)
def test_bad_flags_are_one_line_and_exit_2(run_cli, demo_db, args, needle):
    out = run_cli([*args, "--db", str(demo_db)])
    assert out.exit_code == 2, out.output
    assert needle in one_line(out)


@pytest.mark.parametrize("command", ["query", "stats", "status", "sql", "browse"])
def test_a_missing_database_is_not_created(run_cli, tmp_path, command):
    args = [command, "--db", str(tmp_path / "missing.db")]
    if command == "sql":
        args.insert(1, "SELECT 1")
    out = run_cli(args)
    assert out.exit_code in (1, 2), out.output
    assert "does not exist" in one_line(out) or "Datasette" in out.stderr
    assert list(tmp_path.iterdir()) == [], "a reader created files"


def test_a_file_that_is_not_a_mirror_is_refused(run_cli, tmp_path):
    (tmp_path / "notes.db").write_bytes(b"hello, not sqlite at all" * 100)
    out = run_cli(["query", "--db", str(tmp_path / "notes.db")])
    assert out.exit_code == 1
    assert "not a mirror database or corrupt" in one_line(out)


def test_status_reports_each_target(run_cli, tmp_path):
    db = tmp_path / "m.db"
    rows = make_rows(400, seed=3)
    fill(db, rows)
    store = Store.open(str(db))
    with store.engine.begin() as conn:
        add_targets(conn, ["acme/flux-lora", "beta/sdaxl"], to_text(NOW))
        # asked for more than it covers: the stretch before the first window is a gap too
        store.request_range(conn, ["acme/flux-lora"], to_text(NOW),
                            since="2026-11-24T00:00:00.000000Z", default_from=to_text(NOW))  # fmt: skip
        for a, b in [("2026-11-25T00:00:00.000000Z", "2026-11-26T00:00:00.000000Z"),
                     ("2026-11-26T06:00:00.000000Z", "2026-11-28T12:00:00.000000Z")]:  # fmt: skip
            store.mark_complete(conn, "acme/flux-lora", a, b, to_text(NOW))
    run_id = store.start_run(["acme/flux-lora", "beta/sdaxl"], NOW)
    store.finish_run(run_id, NOW, "ok", {"pages": 3}, None, clock_skew=-7.5)
    store.close()
    out = run_cli(["status", "--db", str(db), "--format", "json"])
    assert out.exit_code == 0, out.output
    got = {t["target"]: t for t in json.loads(out.stdout)}

    def expect(target: str) -> dict:
        r = [x for x in rows if x[1] == target or x[1].startswith(target + "/")]
        ended = sorted(x[5] for x in r if x[5] is not None)
        return {"rows": len(r), "unfinished": sum(1 for x in r if x[5] is None),
                "oldest_ended_at": ended[0], "newest_ended_at": ended[-1]}  # fmt: skip

    assert got["acme/flux-lora"] == {
        "target": "acme/flux-lora", "history": "serverless", **expect("acme/flux-lora"),
        "requested_from": "2026-11-24T00:00:00.000000Z",
        "covered_from": "2026-11-25T00:00:00.000000Z", "covered_to": "2026-11-28T12:00:00.000000Z",
        "gaps": [["2026-11-24T00:00:00.000000Z", "2026-11-25T00:00:00.000000Z"],
                 ["2026-11-26T00:00:00.000000Z", "2026-11-26T06:00:00.000000Z"]],
        "last_run": "ok", "last_run_started_at": to_text(NOW), "last_run_ended_at": to_text(NOW),
        "last_run_error": None, "clock_skew": -7.5, "oversized": [], "media": NO_MEDIA, "cost": NO_COST,
    }  # fmt: skip
    assert got["beta/sdaxl"] == {
        "target": "beta/sdaxl", "history": "serverless", **expect("beta/sdaxl"), "requested_from": None,
        "covered_from": None, "covered_to": None,
        "gaps": [], "last_run": "ok", "last_run_started_at": to_text(NOW),
        "last_run_ended_at": to_text(NOW), "last_run_error": None, "clock_skew": -7.5,
        "oversized": [], "media": NO_MEDIA, "cost": NO_COST,
    }  # fmt: skip
    table = run_cli(["status", "--db", str(db)], env={"COLUMNS": "250"}).stdout.splitlines()
    assert table[0].split() == ["target", "history", "rows", "unfinished", "oldest_ended_at", "newest_ended_at",
                                "requested_from", "covered_from", "covered_to", "gaps", "last_run",
                                "last_run_started_at", "last_run_error", "clock_skew"]  # fmt: skip
    assert table[2].split()[:11] == [
        "acme/flux-lora", "serverless", str(got["acme/flux-lora"]["rows"]), str(got["acme/flux-lora"]["unfinished"]),
        got["acme/flux-lora"]["oldest_ended_at"][:16] + "Z", got["acme/flux-lora"]["newest_ended_at"][:16] + "Z",
        "2026-11-24T00:00Z", "2026-11-25T00:00Z", "2026-11-28T12:00Z", "2:",
        "2026-11-24T00:00Z…2026-11-25T00:00Z,",
    ], table  # fmt: skip
    assert table[2].split()[-4:] == ["8s", "behind", "the", "API"], table[2]


def test_every_command_documents_itself(run_cli):
    for command in ("query", "stats", "sql", "status", "browse"):
        out = run_cli([command, "--help"])
        assert out.exit_code == 0 and "--db" in out.stdout, command
    assert "percentile_cont" in run_cli(["stats", "--help"]).stdout


def test_register_is_idempotent():
    import click

    from mirror.commands_query import COMMANDS, register

    group = click.Group()
    register(group)
    register(group)
    assert sorted(group.commands) == sorted(c.name for c in COMMANDS)


def test_the_query_layer_never_imports_click():
    import ast
    from pathlib import Path

    for module in (
        query,
        __import__("mirror.readonly").readonly,
        __import__("mirror.output").output,
    ):
        tree = ast.parse(Path(module.__file__).read_text())
        names = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import | ast.ImportFrom)
                 for a in n.names} | {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}  # fmt: skip
        assert "click" not in names, f"{module.__name__} imports click"
