"""The live progress line of `mirror sync`, as a person at a terminal sees it: the real
command on a pseudo-terminal against the simulated API; and nothing of it under cron (a
pipe) or with -q."""

from __future__ import annotations

import re
from datetime import UTC, datetime

import pytest
from support.cli import mirror, on_terminal
from support.sim import ENDPOINTS, fast_env, sync_args

from mirror.output import display_width
from mirror.simulator import FaultConfig, SimulatedAPI, generate_world

#: the live line as drawn: its words, then tqdm's bar (cut to the terminal's width)
LIVE = re.compile(
    r"mirror sync: (?P<stored>[\d,]+) requests stored, (?P<rate>\d+\.\d) calls/s, "
    r"windows (?P<done>[\d,]+)/(?P<planned>[\d,]+)(?: \(\+(?P<grown>[\d,]+)\))?, "
    r"ETA (?P<eta>\?|\d+s|\d+m\d\ds|\d+h\d\dm)(?P<more>\+?) (?:\|.*)?"
)
LOG = re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} mirror\.\w+ (DEBUG|INFO|WARNING) \S.*")
SUMMARY = re.compile(r"synced 3 targets: \d+ new, \d+ updated, .*")


@pytest.fixture(scope="module")
def slow_api():
    """A day of history, each answer 30 ms late: a sync of a few seconds, long
    enough for the line to be redrawn many times."""
    world = generate_world(seed=8, now=datetime.now(UTC), days=1.2,
                           endpoints=list(ENDPOINTS), requests_per_hour=250)  # fmt: skip
    with SimulatedAPI(world, FaultConfig(latency=0.03)) as api:
        yield api


def segments(screen: str) -> list[str]:
    """What was written between carriage returns and line ends: each a line's new text."""
    return [s for s in re.split(r"[\r\n]", screen) if s.strip()]


def test_a_terminal_shows_the_live_line_with_its_figures(tmp_path, slow_api):
    run = on_terminal(sync_args(tmp_path / "m.db", "--since", "24h"), fast_env(slow_api.base_url))
    assert run.code == 0, run.stdout[-2000:]
    drawn = [s for s in segments(run.stdout) if s.startswith("mirror sync:")]
    assert len(drawn) >= 2, f"the live line was drawn {len(drawn)} times:\n{run.stdout[-2000:]}"
    shapes = [LIVE.fullmatch(s) for s in drawn]
    assert all(shapes), "a drawn line has another shape: " + repr(drawn[shapes.index(None)])
    wide = [s for s in drawn if display_width(s) > 80]
    assert not wide, f"lines wider than the 80-column terminal: {wide}"

    def figure(m: re.Match[str], name: str) -> int:
        return int(m[name].replace(",", ""))

    stored = [figure(m, "stored") for m in shapes if m]
    done = [figure(m, "done") for m in shapes if m]
    assert stored == sorted(stored) and done == sorted(done), f"went back: {stored}, {done}"
    assert all(figure(m, "done") <= figure(m, "planned") for m in shapes if m), drawn
    timed = [m for m in shapes if m and m["eta"] != "?"]
    assert timed, f"no line ever gave an estimate: {drawn}"
    # a plan that grew is shown as such, and its estimate says it may grow again
    assert all(bool(m["grown"]) == (m["more"] == "+") for m in timed), drawn
    assert any(m and float(m["rate"]) > 0 for m in shapes), f"no call rate shown: {drawn}"
    # the line is wiped at the end: the summary stands alone on the last line
    last = run.stdout.rstrip("\r\n").split("\r")
    assert SUMMARY.fullmatch(last[-1]) and not last[-2].strip(), repr(run.stdout[-400:])
    new = int(re.search(r"(\d+) new", last[-1])[1])  # type: ignore[index]
    assert stored[-1] <= new, f"the line showed {stored[-1]} stored, the summary {new} new"


def test_under_cron_nothing_of_it_is_written(tmp_path, slow_api):
    run = mirror(sync_args(tmp_path / "m.db", "--since", "24h"), fast_env(slow_api.base_url))
    assert run.code == 0, run.stderr
    assert run.stderr == "", f"stderr is not a terminal, yet it got: {run.stderr[:500]!r}"
    assert SUMMARY.fullmatch(run.stdout.rstrip("\n")), run.stdout


def test_quiet_on_a_terminal_prints_nothing(tmp_path, slow_api):
    run = on_terminal(
        sync_args(tmp_path / "m.db", "--since", "24h", "-q"), fast_env(slow_api.base_url)
    )
    assert (run.code, run.stdout) == (0, ""), run.stdout[-1000:]


def test_verbose_log_lines_stay_whole_beside_the_line(tmp_path, slow_api):
    run = on_terminal(
        sync_args(tmp_path / "m.db", "--since", "24h", "-v"), fast_env(slow_api.base_url)
    )
    assert run.code == 0, run.stdout[-2000:]
    parts = segments(run.stdout)
    logs = [s for s in parts if LOG.fullmatch(s)]
    drawn = [s for s in parts if LIVE.fullmatch(s)]
    others = [s for s in parts if s not in logs and s not in drawn and not SUMMARY.fullmatch(s)]
    assert not others, f"text that is neither a whole log line nor the live line: {others[:5]}"
    assert len(logs) > 20 and len(drawn) >= 2, f"{len(logs)} log lines, {len(drawn)} drawn"
    # each log line starts a line of its own: the live line is wiped before it, not run into
    for line in run.stdout.split("\n"):
        if re.search(r"\d,\d{3} mirror\.\w+ ", line):
            shown = line.rstrip("\r").split("\r")[-1]
            assert LOG.fullmatch(shown), f"a log line shares its line: {line!r}"
