"""Text from the server reaches the terminal neutralised, and the database unchanged.

A server (or a proxy in front of it) may put line breaks, carriage returns and terminal
escape sequences in an error's ``type``, ``message`` or ``detail``, and in the request ids
and runner ids of its pages. Printed raw, these start new lines (a forged ``mirror:`` line),
retitle the terminal or clear it. Every printed error is one line with such characters
shown as escapes (``\\x1b``) and of bounded length; the table shows ids the same way; JSON
and CSV carry the exact values, and the database keeps what the server sent.
"""

from __future__ import annotations

import csv
import io
import re
from dataclasses import replace
from pathlib import Path

import orjson
from support.cli import assert_one_line, run_cli
from support.compare import query, runs
from support.figures import count
from support.sim import env_for, static_world, sync_args

from mirror.simulator import FaultConfig, SimulatedAPI

#: what a terminal would act on: every C0 control but the line feed, DEL, the C1 controls
#: (0x9b is a one-byte CSI) and the bidi overrides
RAW_CONTROL = re.compile("[\x00-\x09\x0b-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")
TITLE = "\x1b]0;pwned\x07"
CLEAR = "\x1b[2J"


def _raw_controls(text: str) -> list[str]:
    return sorted({repr(c) for c in RAW_CONTROL.findall(text)})


def _run(args: list[str], env: dict[str, str], out_dir: Path) -> tuple[int, str, str]:
    """Exit code, stdout and stderr exactly as written (``Outcome`` reads them with newline
    translation, which would turn a raw ``\r`` into a line break)."""
    o = run_cli(args, env, out_dir, no_second_wait=True)
    (out,) = out_dir.glob("*.out")
    (err,) = out_dir.glob("*.err")
    return o.code, out.read_bytes().decode(), err.read_bytes().decode()


def test_a_hostile_error_message_prints_as_one_safe_bounded_line(tmp_path: Path) -> None:
    world = static_world(seed=121, hours=2, per_hour=10)
    fal_shape = orjson.dumps({"error": {
        "type": "validation_error\r\nmirror: note: forged " + "T" * 5000,
        "message": f"bad value{TITLE}\nmirror: ok: forged{CLEAR}",
    }})  # fmt: skip
    detail_shape = orjson.dumps({"detail": f"bad\nmirror: ok: all synced{TITLE}\r{CLEAR}"})
    cases = {"fal's error shape": fal_shape, "a proxy's detail": detail_shape}
    db = tmp_path / "m.db"
    with SimulatedAPI(world) as api:
        for name, body in cases.items():
            api.faults = FaultConfig(answer_with=(400, body))
            env = env_for(api.base_url)
            stderr = {}
            for how, extra in (("", ()), (", -vv", ("-vv",))):
                code, _, err = _run(sync_args(db, *extra), env, tmp_path / f"{name}{how}")
                assert code == 1, f"{name}{how}: exit {code}:\n{err[-1500:]}"
                raw = _raw_controls(err)
                assert not raw, f"{name}{how}: stderr carries {raw}:\n{err[-1500:]!r}"
                ours = [ln for ln in err.split("\n") if ln.startswith("mirror: ")]
                assert len(ours) == 1, f"{name}{how}: {len(ours)} 'mirror:' lines: {ours}"
                assert len(ours[0]) <= 1200, f"{name}{how}: a {len(ours[0])}-character line"
                stderr[how] = err
            line = assert_one_line(stderr[""], "api error", context=name)
            assert "\\x1b]0;pwned\\x07" in line, f"{name}: the escape is not shown: {line!r}"
            count("hostile error texts printed", 2)
    stored = [error for _, error in runs(db)]
    assert len(stored) == 4 and all(TITLE in (e or "") for e in stored), (
        f"sync_runs.error should keep the server's text as sent: {stored!r}"
    )


def test_ids_with_escape_sequences_are_shown_escaped_in_a_table_exact_elsewhere(
    tmp_path: Path,
) -> None:
    world = static_world(seed=122, hours=2, per_hour=10)
    some = next(r for r in world.server_view().values() if r.get("ended_at"))
    evil_id = f"0190a000-evil-{TITLE}-{CLEAR}"
    evil_runner = "runner\r\nmirror: forged\u202eEVIL\x9b31m"
    world.add(replace(world.get(some["request_id"]), request_id=evil_id, runner_id=evil_runner))
    db = tmp_path / "m.db"
    with SimulatedAPI(world) as api:
        env = env_for(api.base_url, COLUMNS="400")
        o = run_cli(sync_args(db), env, tmp_path / "out", no_second_wait=True)
        assert o.code == 0, o.stderr
    assert query(db, "SELECT runner_id FROM requests WHERE request_id = ?", evil_id) == [
        (evil_runner,)
    ], "the database must keep the ids as the server sent them"
    shown: dict[str, str] = {}
    for fmt in ("table", "json", "csv"):
        args = ["query", "--db", str(db), "-c", "request_id,runner_id", "-n", "0", "-f", fmt]
        code, shown[fmt], err = _run(args, env, tmp_path / fmt)
        assert code == 0, f"{fmt}: exit {code}: {err}"
    table = shown["table"]
    raw = _raw_controls(table)
    assert not raw, f"the table carries {raw}:\n{table[-1500:]!r}"
    assert not any(ln.startswith("mirror: ") for ln in table.splitlines()), table[-1500:]
    assert "0190a000-evil-\\x1b]0;pwned\\x07-\\x1b[2J" in table, table[-1500:]
    assert "runner\\r\\nmirror: forged\\u202eEVIL\\x9b31m" in table, table[-1500:]
    as_json = {r["request_id"]: r["runner_id"] for r in orjson.loads(shown["json"])}
    as_csv = {r["request_id"]: r["runner_id"]
              for r in csv.DictReader(io.StringIO(shown["csv"], newline=""))}  # fmt: skip
    assert (as_json.get(evil_id), as_csv.get(evil_id)) == (evil_runner, evil_runner), (
        "json and csv must carry the exact values"
    )
    assert len(as_json) == len(as_csv) > 1
