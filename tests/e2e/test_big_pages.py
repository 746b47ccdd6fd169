"""Pages over the body cap, end to end: the real `mirror sync`, `status` and `verify`
against the simulated API, whose requests carry long outputs (``huge_outputs``).

``MIRROR_MAX_PAGE_BYTES`` lowers the cap (64 MiB) so that the pages are small enough for a
test; every logged call's answer is recomputed from the standing world to tell which were
over it. Before, such a page was refused as bad data and its window failed on every run.
"""

from __future__ import annotations

import base64
import json
import time
from pathlib import Path
from typing import Any

from support.cli import assert_one_line, run_cli
from support.compare import assert_mirror_equals, db_query
from support.sim import env_for, listable, static_world

from mirror.simulator import DEFAULT_KEY, LoggedRequest, SimulatedAPI
from mirror.timeparse import to_text

LIST = "/v1/serverless/requests/by-endpoint"
TARGET = "acme/llm"
CAP = 80_000


def world(huge: tuple[int, int], per_hour: float = 80) -> Any:
    """Three hours of ``TARGET`` (about 370 requests at 80 an hour, each about 600 bytes of a
    page), of which ``huge[0]`` answer ``huge[1]`` bytes of text."""
    return static_world(endpoints=[TARGET], hours=3, per_hour=per_hour, running=0,
                        big_tie_group=0, late_fraction=0, huge_outputs=huge)  # fmt: skip


def sync(db: Path, api: SimulatedAPI, out: Path, *extra: str) -> Any:
    args = ["sync", "--db", str(db), "--since", "4h", "--lookback", "5h", "--no-recheck",
            "--max-concurrency", "2", *extra, "-e", TARGET]  # fmt: skip
    env = env_for(api.base_url, MIRROR_MAX_PAGE_BYTES=str(CAP))
    return run_cli(args, env, out, no_second_wait=True)


def list_calls(api: SimulatedAPI) -> list[LoggedRequest]:
    return [e for e in api.log if e.path == LIST]


def size(api: SimulatedAPI, e: LoggedRequest) -> int:
    """The length of the answer to a logged call (the world stands still)."""
    return len(api.respond("GET", e.path, e.params, f"Key {DEFAULT_KEY}", now=e.world_time).body)


def call(e: LoggedRequest) -> tuple[str, str, int, int, bool]:
    """(start, end, limit, page number, with payloads) of a logged list call."""
    p = e.params
    page = int(base64.b64decode(p["cursor"][-1])) if "cursor" in p else 1
    return (p["start"][0], p["end"][0], int(p["limit"][0]), page,
            "payloads" in p.get("expand", []))  # fmt: skip


def test_a_window_too_big_for_pages_of_100_completes_in_pages_of_50(tmp_path: Path) -> None:
    w = world((60, 3_000))
    db = tmp_path / "m.db"
    with SimulatedAPI(w) as api:
        first = sync(db, api, tmp_path / "out")
        assert first.code == 0, f"the sync failed on a page over the cap: {first.stderr[-1500:]}"
        calls = [(call(e), size(api, e)) for e in list_calls(api)]
        over = [c for c, n in calls if n > CAP]
        assert over, "no page was over the cap: the test proves nothing"
        start, end = over[0][:2]
        # each page over the cap sends the window back to its first page in half the size,
        # until one fits (where the huge requests cluster, 50 may not)
        limits = [c[2] for c in over]
        assert all(c[:2] == (start, end) for c in over) and limits == [
            100 // 2**k for k in range(len(limits))
        ], f"pages over the cap: {over}"
        fits = limits[-1] // 2
        i = [c for c, _ in calls].index(over[-1])
        again = next(c for c, _ in calls[i + 1 :] if c[:2] == (start, end))
        assert again[:4] == (start, end, fits, 1), (
            f"after a page of {limits[-1]} of {start}..{end} over the cap came {again}, not that "
            f"window again from its first page in pages of {fits}"
        )
        assert all(c[4] for c, _ in calls), "a call left payloads out: no request is that big"
        api.clear_log()
        # the whole lookback again (the steady state would skip its unchanged hours), so the
        # run meets that window and must remember its page size
        second = sync(db, api, tmp_path / "out", "--full-lookback")
        assert second.code == 0, second.stderr[-1500:]
        later = [call(e) for e in list_calls(api)]
        inside = [c for c in later if start <= c[0] and c[1] <= end]
        assert inside and {c[2] for c in inside} == {fits}, (
            f"the next run did not walk {start}..{end} in pages of {fits} from the start: {inside}"
        )
        assert not [call(e) for e in list_calls(api) if size(api, e) > CAP], later
    assert_mirror_equals(db, listable(w))
    learned = db_query(db, "SELECT target, page_limit FROM sync_page_limits")
    assert learned == [(TARGET, fits)], learned


def test_a_request_too_big_for_a_page_of_one_is_stored_without_payloads_and_listed(
    tmp_path: Path,
) -> None:
    w = world((1, 100_000), per_hour=40)
    db = tmp_path / "m.db"
    expected = listable(w)
    (rid,) = [r for r, rec in expected.items() if len(json.dumps(rec["json_output"])) > CAP]
    with SimulatedAPI(w) as api:
        first = sync(db, api, tmp_path / "out")
        assert first.code == 0, (
            f"the sync failed on one request over the cap: {first.stderr[-1500:]}"
        )
        calls = [call(e) for e in list_calls(api)]
        without = [c for c in calls if not c[4]]
        assert without and all(c[2] == 1 for c in without), without
        # the window whose page of one was asked for without payloads got there by halving
        starts = [c[2] for c in calls if c[3] == 1 and c[:2] == without[0][:2] and c[4]]
        assert starts == [100, 50, 25, 12, 6, 3, 1], f"that window's first pages: {starts}"
        assert f"some requests of {TARGET} are too big" in first.stderr, (
            f"the run does not say it read requests without payloads: {first.stderr[-800:]}"
        )
        api.clear_log()
        time.sleep(1.01)  # the times it was seen are stamped to the second
        # the whole lookback again (the steady state would skip its unchanged hours), so the
        # run meets that window and must remember it needs pages of one
        second = sync(db, api, tmp_path / "out", "--full-lookback")
        assert second.code == 0, f"the next run failed: {second.stderr[-1500:]}"
        over = [call(e) for e in list_calls(api) if size(api, e) > CAP]
        assert over and all(c[2] == 1 for c in over), (
            f"the next run met the cap again in pages of more than one: {over}"
        )
        verified = run_cli(["verify", "--db", str(db), "--full", "--since", "4h", "-e", TARGET],
                           env_for(api.base_url, MIRROR_MAX_PAGE_BYTES=str(CAP)),
                           tmp_path / "out")  # fmt: skip
        assert verified.code == 0, f"verify: {verified.stdout[-800:]} {verified.stderr[-800:]}"
    expected[rid] = {**expected[rid], "json_input": None, "json_output": None}
    assert_mirror_equals(db, expected, context="every request, the big one without payloads")
    status = run_cli(["status", "--db", str(db), "-f", "json"], env_for("http://127.0.0.1:9/v1"),
                     tmp_path / "out")  # fmt: skip
    assert status.code == 0, status.stderr
    (st,) = json.loads(status.stdout)
    big = st["oversized"]
    assert [{k: v for k, v in b.items() if not k.endswith("seen_at")} for b in big] == [
        {"request_id": rid, "endpoint_id": TARGET, "sent_at": to_text(expected[rid]["sent_at"]),
         "page_bytes": big[0]["page_bytes"], "cap_bytes": CAP}
    ], big  # fmt: skip
    assert big[0]["page_bytes"] > CAP, "the size of its page of one is not what it declared"
    assert big[0]["first_seen_at"] < big[0]["last_seen_at"], f"not seen again by run 2: {big}"
    table = run_cli(["status", "--db", str(db)], env_for("http://127.0.0.1:9/v1"), tmp_path / "out")
    assert f"{TARGET}: 1 request stored without payloads" in table.stdout and rid in table.stdout, (
        table.stdout
    )


def test_a_cap_that_is_not_a_number_of_bytes_is_a_usage_error(tmp_path: Path) -> None:
    env = env_for("http://127.0.0.1:9/v1", MIRROR_MAX_PAGE_BYTES="64MB")
    o = run_cli(["sync", "--db", str(tmp_path / "m.db"), "-e", TARGET], env, tmp_path / "out")
    assert o.code == 2, o.stderr
    line = assert_one_line(o.stderr, "usage")
    assert "MIRROR_MAX_PAGE_BYTES" in line, line
