"""Every class of failure, through the real CLI: one line naming the class and what to do.

| class | exit | provoked by |
|---|---|---|
| usage | 2 | a bad flag value, ``--until`` before ``--since``, a negative lookback, no endpoint |
| bad or unsafe configuration | 2 | no key, a key file others can read, plain http to a remote host, a bad tuning variable |
| key rejected | 1 | a wrong key (401), an endpoint of another account (403) |
| API unavailable after retries | 1 | a persistent outage |
| bad data from the API | 1 | a page saying ``has_more`` with no cursor |
| another sync running | 75 | a sync already holding the database |
| local storage error | 1 | a foreign file, a file from a newer mirror, a folder that does not exist |

For each: the exit code, exactly one line on stderr that starts ``mirror: <class>:`` and says
what to do, no traceback, nothing on stdout, and a file whose state is not ahead of its data
(for usage and configuration errors: no file created at all).
"""

from __future__ import annotations

import re
import signal
import sqlite3
from dataclasses import dataclass
from pathlib import Path

import pytest
from support.cli import assert_one_line, run_cli, wait_for
from support.compare import check_consistent, query
from support.figures import count
from support.sim import env_for, listable, static_world, sync_args

from mirror.simulator import FaultConfig, SimulatedAPI


@dataclass(frozen=True)
class Case:
    code: int
    kind: str
    #: what the line must say the user should do (a regex, case-insensitive)
    todo: str
    args: tuple[str, ...] = ()
    env: tuple[tuple[str, str], ...] = ()
    faults: FaultConfig | None = None
    creates_nothing: bool = False


CASES = {
    "usage: unparseable --since": Case(2, "usage", r"--help", ("--since", "yesterday-ish"), creates_nothing=True),
    "usage: --until before --since": Case(2, "usage", r"--help", ("--since", "2d", "--until", "3d"), creates_nothing=True),
    "usage: negative lookback": Case(2, "usage", r"--help", ("--lookback", "-2h"), creates_nothing=True),
    "usage: no endpoint on a new file": Case(2, "usage", r"--endpoint", ("--no-targets",), creates_nothing=True),
    "configuration: no key": Case(2, "usage", r"set FAL_KEY", env=(("FAL_KEY", ""),), creates_nothing=True),
    "configuration: key file readable by others": Case(2, "usage", r"chmod 600", env=(("FAL_KEY", ""), ("MIRROR_KEY_FILE", "<keyfile-644>")), creates_nothing=True),
    "configuration: plain http to a remote host": Case(2, "usage", r"use https", env=(("MIRROR_BASE_URL", "http://api.example.com/v1"),), creates_nothing=True),
    "configuration: bad tuning variable": Case(2, "usage", r"MIRROR_RETRY_BASE", env=(("MIRROR_RETRY_BASE", "fast"),), creates_nothing=True),
    "key rejected: wrong key (401)": Case(1, "key rejected", r"\b(check|set|use|replace)\b.*(FAL_KEY|key)", env=(("FAL_KEY", "nope:wrong"),)),
    "key rejected: endpoint of another account (403)": Case(1, "key rejected", r"\b(check|make sure|use)\b", ("-e", "someone-else/app")),
    "api unavailable: persistent outage": Case(1, "api unavailable", r"next run", env=(("MIRROR_RETRY_ATTEMPTS", "3"),), faults=FaultConfig(outage=True)),
    "bad data: has_more without a cursor": Case(1, "bad data from api", r"next run|try again|report", faults=FaultConfig(bad_data="has_more_no_cursor")),
    "storage: a foreign SQLite file": Case(1, "storage error", r"point --db", ("<foreign>",)),
    "storage: a file from a newer mirror": Case(1, "schema too new", r"upgrade mirror", ("<newer>",)),
    "storage: a folder that does not exist": Case(1, "storage error", r"create|check|does not exist", ("<nofolder>",), creates_nothing=True),
}  # fmt: skip


@pytest.fixture(scope="module")
def fc_world():
    return static_world(seed=101, hours=6, per_hour=40)


def _prepare(
    tmp_path: Path, case: Case, api: SimulatedAPI
) -> tuple[Path, list[str], dict[str, str]]:
    (tmp_path / "w").mkdir()
    db = tmp_path / "w" / "m.db"
    env = env_for(api.base_url, MIRROR_RETRY_ATTEMPTS="4")
    extra = [a for a in case.args if not a.startswith("<") and a != "--no-targets"]
    targets: list[str] = [] if "--no-targets" in case.args or "-e" in extra else ["acme/upscaler"]
    if "<foreign>" in case.args:
        con = sqlite3.connect(db)
        con.execute("CREATE TABLE invoices (id INTEGER PRIMARY KEY)")
        con.commit()
        con.close()
    if "<newer>" in case.args:
        first = run_cli(sync_args(db, targets=targets), env, tmp_path / "out", no_second_wait=True)
        assert first.code == 0, first.stderr
        con = sqlite3.connect(db)
        con.execute("UPDATE alembic_version SET version_num = '0999'")
        con.commit()
        con.close()
    if "<nofolder>" in case.args:
        db = tmp_path / "w" / "missing" / "m.db"
    for k, v in case.env:
        if v == "<keyfile-644>":
            kf = tmp_path / "fal-key"  # (outside the watched folder)
            kf.write_text("sim-key-id:sim-key-secret\n")
            kf.chmod(0o644)
            v = str(kf)
        if v:
            env[k] = v
        else:
            env.pop(k, None)
    return db, sync_args(db, *extra, targets=targets), env


@pytest.mark.parametrize("name", list(CASES))
def test_failure_is_one_line_naming_its_class_and_what_to_do(tmp_path, fc_world, name: str) -> None:
    case = CASES[name]
    with SimulatedAPI(fc_world, faults=case.faults) as api:
        db, args, env = _prepare(tmp_path, case, api)
        before = sorted(p.name for p in db.parent.glob("*")) if db.parent.exists() else []
        o = run_cli(args, env, tmp_path / "out", no_second_wait=True)
    count("failure classes provoked")
    assert o.code == case.code, f"{name}: exit {o.code}, expected {case.code}: {o.stderr[-1500:]}"
    assert o.stdout == "", f"{name}: printed on stdout: {o.stdout!r}"
    line = assert_one_line(o.stderr, case.kind, context=name)
    detail = line.split(": ", 2)[-1]
    assert re.search(case.todo, detail, re.IGNORECASE), (
        f"{name}: the line names the class but not what to do (expected something like "
        f"/{case.todo}/): {line!r}"
    )
    if case.creates_nothing:
        after = sorted(p.name for p in db.parent.glob("*")) if db.parent.exists() else []
        assert after == before, f"{name}: files were created: {sorted(set(after) - set(before))}"
    elif db.exists() and case.kind not in ("schema too new", "storage error"):
        check_consistent(db, listable(fc_world), fc_world.config.filter_field, context=name)
        (n,) = query(db, "SELECT count(*) FROM sync_windows")[0]
        assert n == 0, f"{name}: {n} windows recorded complete by a run that failed at once"


def test_another_sync_running_is_exit_75_in_one_line(tmp_path, fc_world) -> None:
    db = tmp_path / "m.db"
    with SimulatedAPI(fc_world, faults=FaultConfig(latency=0.3)) as api:
        env = env_for(api.base_url)
        import threading

        holder = threading.Thread(target=run_cli, args=(
            sync_args(db, "--since", "7h", "--max-concurrency", "1"), env, tmp_path / "o1"))  # fmt: skip
        holder.start()
        wait_for(lambda: len(api.log) > 0, 60, "the first sync's first call")
        o = run_cli(sync_args(db), env, tmp_path / "o2")
        holder.join(120)
    assert o.code == 75, f"exit {o.code}: {o.stderr}"
    line = assert_one_line(o.stderr, "busy")
    assert "--wait" in line and "try again" in line, line
    assert o.stdout == ""


def test_interrupted_is_exit_130_in_one_line(tmp_path, fc_world) -> None:
    db = tmp_path / "m.db"
    with SimulatedAPI(fc_world, faults=FaultConfig(latency=0.2)) as api:
        o = run_cli(sync_args(db, "--since", "7h", "--max-concurrency", "1"), env_for(api.base_url),
                    tmp_path / "out", kill_after=0.3, sig=signal.SIGTERM,
                    after=lambda: len(api.log) > 0, no_second_wait=True)  # fmt: skip
    assert o.code == 130, o.stderr
    assert o.stderr == "mirror: interrupted; everything committed so far is kept\n"
    check_consistent(db, listable(fc_world), fc_world.config.filter_field)
