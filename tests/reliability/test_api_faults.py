"""What the network and the API throw at a sync: each scenario named, each checked whole.

Recoverable faults (429 with and without ``Retry-After``, a token-bucket rate limit, bursts
of HTML and JSON 5xx, connection resets, truncated bodies, stalled bodies) must end in exit
0 with a mirror equal to the server. A persistent outage, or a body that never finishes,
must end in exit 1 with one line naming the class, nothing half-written, and the state not
ahead of the data; the next healthy run then completes the mirror.
"""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
from support.cli import assert_one_line, run_cli
from support.compare import assert_mirror_equals, check_consistent, runs, stored_ids
from support.figures import count
from support.sim import env_for, listable, static_world, sync_args

from mirror.api import FalClient, RetryPolicy, make_http_client
from mirror.errors import ApiUnavailable
from mirror.simulator import DEFAULT_KEY, FaultConfig, SimulatedAPI

LIST = "/v1/serverless/requests/by-endpoint"


@pytest.fixture(scope="module")
def fault_world():
    return static_world(seed=21, hours=30, per_hour=50)


def _sync(tmp_path: Path, world, faults: FaultConfig, *extra: str, **env_extra: str):  # type: ignore[no-untyped-def]
    db = tmp_path / "m.db"
    with SimulatedAPI(world, faults=faults) as api:
        o = run_cli(sync_args(db, "--since", "31h", *extra), env_for(api.base_url, **env_extra),
                    tmp_path / "out", no_second_wait=True)  # fmt: skip
        log = api.log
    kinds = [e.fault for e in log if e.fault]
    count("API faults injected", len(kinds))
    return db, o, log, kinds


RECOVERABLE = {
    "429-without-retry-after": FaultConfig(seed=1, p_429=0.35),
    "429-with-retry-after": FaultConfig(seed=2, p_429=0.35, retry_after=0.3),
    "429-mixed-retry-after": FaultConfig(seed=3, p_429=0.35, retry_after=0.05, p_retry_after=0.5),
    "rate-limit-token-bucket": FaultConfig(seed=4, rate_limit=12, burst=3),
    "5xx-html-burst": FaultConfig(seed=5, p_5xx=1.0, max_faults=8),
    "json-500-burst": FaultConfig(seed=6, p_json_500=1.0, max_faults=8),
    "5xx-scattered": FaultConfig(seed=7, p_5xx=0.3, p_json_500=0.1),
    "connection-resets": FaultConfig(seed=8, p_reset=0.35),
    "truncated-bodies": FaultConfig(seed=9, p_truncate=0.35),
    "stalled-bodies": FaultConfig(seed=10, p_stall=1.0, stall_byte_delay=0.01, max_faults=3),
    "everything-at-once": FaultConfig(seed=11, p_429=0.1, retry_after=0.02, p_retry_after=0.5,
                                      p_5xx=0.1, p_json_500=0.05, p_reset=0.1, p_truncate=0.1,
                                      p_stall=0.03, stall_byte_delay=0.01, latency=0.005),
}  # fmt: skip
EXPECTED_KIND = {
    "429-without-retry-after": {"429"},
    "429-with-retry-after": {"429+retry-after"},
    "429-mixed-retry-after": {"429", "429+retry-after"},
    "rate-limit-token-bucket": {"rate-limit"},
    "5xx-html-burst": {"5xx-html"},
    "json-500-burst": {"json-500"},
    "5xx-scattered": {"5xx-html", "json-500"},
    "connection-resets": {"reset"},
    "truncated-bodies": {"truncate"},
    "stalled-bodies": {"stall"},
    "everything-at-once": {"429", "5xx-html", "reset", "truncate"},
}


@pytest.mark.parametrize("scenario", list(RECOVERABLE))
def test_recoverable_faults_end_in_a_complete_mirror(tmp_path, fault_world, scenario) -> None:
    extra = ["--max-concurrency", "8"] if scenario == "rate-limit-token-bucket" else []
    db, o, _log, kinds = _sync(
        tmp_path, fault_world, RECOVERABLE[scenario], *extra,
        MIRROR_RETRY_ATTEMPTS="16", MIRROR_REQUEST_DEADLINE="1",
    )  # fmt: skip
    missing = EXPECTED_KIND[scenario] - set(kinds)
    assert not missing, f"{scenario}: the simulator never injected {missing}; it proves nothing"
    assert o.code == 0, f"{scenario}: exit {o.code}: {o.stderr[-1500:]}"
    assert o.stderr == "", f"{scenario}: a successful run printed to stderr: {o.stderr[-1500:]}"
    expected = listable(fault_world)
    assert_mirror_equals(db, expected, context=scenario)
    check_consistent(db, expected, fault_world.config.filter_field, context=scenario)
    assert runs(db)[-1] == ("ok", None)


def test_retry_after_is_waited_out_before_the_same_call_again(tmp_path, fault_world) -> None:
    """A 429 with ``Retry-After: 0.3`` is followed by the same call no sooner than 0.3 s later.

    (A lower bound the client must honour, not a speed measurement.)
    """
    _, o, log, _kinds = _sync(tmp_path, fault_world, FaultConfig(seed=2, p_429=0.35, retry_after=0.3),
                             "--max-concurrency", "1")  # fmt: skip
    assert o.code == 0, o.stderr
    throttled = [k for k, e in enumerate(log) if e.fault == "429+retry-after"]
    assert len(throttled) >= 3, f"only {len(throttled)} Retry-After answers: proves nothing"
    for k in throttled:
        same = [e for e in log[k + 1 :] if e.params == log[k].params]
        assert same, f"the call refused at {log[k].time} was never made again"
        gap = (same[0].time - log[k].time).total_seconds()
        assert gap >= 0.3 - 0.02, f"retried {gap:.3f}s after a Retry-After of 0.3s"


def test_persistent_outage_fails_in_one_line_and_claims_nothing(tmp_path, fault_world) -> None:
    db, o, _log, kinds = _sync(tmp_path, fault_world, FaultConfig(outage=True),
                              MIRROR_RETRY_ATTEMPTS="5")  # fmt: skip
    assert o.code == 1, f"exit {o.code}: {o.stderr[-1500:]}"
    line = assert_one_line(o.stderr, "api unavailable")
    assert "after 5 attempts" in line and "503" in line, line
    assert "next run" in line, f"the line does not say what happens next: {line}"
    assert stored_ids(db) == set()
    check_consistent(db, listable(fault_world), fault_world.config.filter_field)
    assert [r[0] for r in runs(db)] == ["failed"], runs(db)
    assert all(k == "outage" for k in kinds)


def test_outage_in_the_middle_keeps_what_was_committed(tmp_path, fault_world) -> None:
    """The API goes down after a few pages: exit 1, committed pages kept, state not ahead,
    and once the API is back the next run completes the mirror."""
    db = tmp_path / "m.db"
    expected = listable(fault_world)
    with SimulatedAPI(fault_world, faults=FaultConfig(latency=0.02)) as api:
        stop = threading.Event()

        def go_down() -> None:
            while not stop.is_set():
                if sum(1 for e in api.log if e.path == LIST and e.status == 200) >= 6:
                    api.faults = FaultConfig(outage=True)
                    return
                stop.wait(0.002)

        t = threading.Thread(target=go_down, daemon=True)
        t.start()
        env = env_for(api.base_url, MIRROR_RETRY_ATTEMPTS="4")
        o = run_cli(sync_args(db, "--since", "31h", "--max-concurrency", "2"), env,
                    tmp_path / "out", no_second_wait=True)  # fmt: skip
        stop.set()
        t.join()
        assert o.code == 1, f"exit {o.code}: {o.stderr[-1500:]}"
        assert_one_line(o.stderr, "api unavailable")
        kept = check_consistent(db, expected, fault_world.config.filter_field, context="outage")
        assert kept, "no page was committed before the outage: the scenario proves nothing"
        count("API faults injected", sum(1 for e in api.log if e.fault))
        api.faults = None
        again = run_cli(sync_args(db, "--since", "31h"), env, tmp_path / "out", no_second_wait=True)
        assert again.code == 0, again.stderr
    assert_mirror_equals(db, expected, context="after the outage")
    assert [r[0] for r in runs(db)] == ["failed", "ok"]


def test_a_body_that_never_finishes_hits_the_deadline(tmp_path, fault_world) -> None:
    """Every answer drips a byte at a time: each attempt is cut at the total deadline."""
    db, o, _log, kinds = _sync(
        tmp_path, fault_world, FaultConfig(p_stall=1.0, stall_byte_delay=0.02),
        "--max-concurrency", "1",
        MIRROR_RETRY_ATTEMPTS="2", MIRROR_REQUEST_DEADLINE="1",
    )  # fmt: skip
    assert o.code == 1, f"exit {o.code}: {o.stderr[-1500:]}"
    line = assert_one_line(o.stderr, "api unavailable")
    assert "incomplete after 1s" in line, f"the line does not name the deadline: {line}"
    assert kinds.count("stall") == 2, f"expected exactly 2 attempts, the server saw {kinds}"
    assert stored_ids(db) == set()
    check_consistent(db, listable(fault_world), fault_world.config.filter_field)


def test_headers_that_never_finish_hit_the_deadline(tmp_path, fault_world) -> None:
    """A stuck proxy sends its status line and headers a byte every half second: httpx's
    read timeout (per read) never trips, so each attempt must be cut at the total deadline.
    Without that, one attempt alone would last 80 s; the guard below stops the run at 60."""
    db = tmp_path / "m.db"
    with SimulatedAPI(fault_world, FaultConfig(p_stall_headers=1.0, stall_byte_delay=0.5)) as api:
        env = env_for(api.base_url, MIRROR_RETRY_ATTEMPTS="2", MIRROR_REQUEST_DEADLINE="1")
        o = run_cli(sync_args(db, "--since", "31h", "--max-concurrency", "1", "-v"), env,
                    tmp_path / "out", no_second_wait=True, timeout=60)  # fmt: skip
        kinds = [e.fault for e in api.log]
    assert o.code == 1, f"exit {o.code}: {o.stderr[-1500:]}"
    line = o.stderr.splitlines()[-1]
    assert line.startswith("mirror: api unavailable: ") and (
        "response headers still incomplete after 1s" in line
    ), f"the last line does not name the deadline on the headers: {line}"
    abandoned = [ln for ln in o.stderr.splitlines()
                 if " mirror.api " in ln and "headers still incomplete after 1s; retry" in ln]  # fmt: skip
    assert len(abandoned) == 2 and kinds == ["stall-headers"] * 2, (
        f"expected 2 attempts, each abandoned at the deadline; the log says {abandoned}, "
        f"the server saw {kinds}"
    )
    assert stored_ids(db) == set()
    assert runs(db) == [("failed", line.removeprefix("mirror: api unavailable: "))]


@pytest.mark.timeout(60)  # without the deadline on headers, one attempt lasts 80 s
def test_the_deadline_holds_on_a_connection_reused_from_the_pool(fault_world) -> None:
    """The first call leaves its keep-alive connection in the pool; the next call's first
    attempt reuses it when the headers start to drip, and is cut at the deadline all the
    same (the bound follows the attempt, not the connection)."""
    retry = RetryPolicy(attempts=2, deadline=1, read_timeout=1, base=0.01)
    window = {"start": "2000-01-01T00:00:00Z", "end": "2100-01-01T00:00:00Z"}
    with SimulatedAPI(fault_world) as api, make_http_client() as http:
        client = FalClient(http, DEFAULT_KEY, base_url=api.base_url, retry=retry)
        first = client.list_requests(["acme/upscaler"], **window)
        api.faults = FaultConfig(p_stall_headers=1.0, stall_byte_delay=0.5)
        with pytest.raises(ApiUnavailable) as failed:
            client.list_requests(["acme/upscaler"], **window)
        kinds = [e.fault for e in api.log]
    assert first.rows, "the first call should have listed requests"
    assert "(last: response headers still incomplete after 1s)" in str(failed.value), failed.value
    assert (client.stats.attempts, kinds) == (3, [None, "stall-headers", "stall-headers"]), (
        f"expected one good call, then 2 attempts cut at the deadline; the server saw {kinds}"
    )


def test_the_deadline_also_bounds_a_silent_server(tmp_path, fault_world) -> None:
    """Latency longer than the deadline (no byte at all): the same one-line failure."""
    db, o, _log, _kinds = _sync(
        tmp_path, fault_world, FaultConfig(latency=3.0), "--max-concurrency", "1",
        MIRROR_RETRY_ATTEMPTS="2", MIRROR_REQUEST_DEADLINE="1",
    )  # fmt: skip
    assert o.code == 1, f"exit {o.code}: {o.stderr[-1500:]}"
    line = assert_one_line(o.stderr, "api unavailable")
    assert "timeout" in line.lower() or "incomplete" in line, line
    assert stored_ids(db) == set()
