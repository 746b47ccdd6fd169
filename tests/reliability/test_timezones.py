"""The machine's time zone changes nothing, across DST changes inside the synced range.

Two ranges of history, each containing DST changes (America/New_York springs forward on
2026-03-08; Europe falls back on 2026-10-25 and New York on 2026-11-01), are synced under
every distinct local time zone: the 599 IANA zones fall into about fifty groups whose
offsets are identical hour by hour over the range (and now), and one zone of each group
runs the real CLI with ``TZ`` set. Every mirror must hold exactly the same content as the
UTC one, and every bookkeeping stamp (``first_seen_at``, the run log) must be UTC, not
local time dressed as UTC. ``--since``/``--until`` are given the way people type them:
naive date-times (taken as UTC, even when the local clock skips that hour) and dates.
"""

from __future__ import annotations

import zoneinfo
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from support.cli import run_cli_parallel
from support.compare import assert_mirror_equals, content_dump, query
from support.figures import count, record
from support.sim import env_for, listable, static_world, sync_args

from mirror.simulator import SimulatedAPI

RANGES = {
    # New York springs forward at 2026-03-08T07:00Z; the local hour 02:xx does not exist there
    "spring-2026-03-08": (datetime(2026, 3, 9, 12, tzinfo=UTC), "2026-03-07 02:30:00", "2026-03-09"),
    # Europe falls back 2026-10-25T01:00Z, New York 2026-11-01T06:00Z (01:xx happens twice)
    "autumn-2026-10-25..11-01": (datetime(2026, 11, 2, 12, tzinfo=UTC), "2026-10-24", "2026-11-01T06:30:00"),
}  # fmt: skip
ALWAYS = ("UTC", "America/New_York", "Europe/London", "Europe/Dublin", "Australia/Lord_Howe",
          "Asia/Kathmandu", "America/St_Johns", "Pacific/Chatham", "Pacific/Kiritimati",
          "Pacific/Pago_Pago", "Africa/Casablanca", "Antarctica/Troll", "Etc/GMT+12")  # fmt: skip


def zone_groups(start: datetime, end: datetime) -> dict[tuple, list[str]]:
    """IANA zones grouped by their UTC offset at every hour of [start, end] and now."""
    now = datetime.now(UTC)
    hours = int((end - start) / timedelta(hours=1)) + 1
    groups: dict[tuple, list[str]] = {}
    for name in sorted(zoneinfo.available_timezones()):
        tz = zoneinfo.ZoneInfo(name)
        key = tuple((start + timedelta(hours=h)).astimezone(tz).utcoffset() for h in range(hours))
        key += (now.astimezone(tz).utcoffset(),)
        groups.setdefault(key, []).append(name)
    return groups


def _ts_ok(db: Path, started: datetime, ended: datetime) -> list[str]:
    """Bookkeeping stamps that are not canonical UTC text from the time the run happened."""
    bad = []
    lo, hi = started - timedelta(seconds=5), ended + timedelta(seconds=5)
    for table, cols in (("requests", ("first_seen_at", "last_changed_at")),
                        ("sync_runs", ("started_at", "ended_at")),
                        ("sync_targets", ("added_at",)), ("sync_windows", ("completed_at",))):  # fmt: skip
        for col in cols:
            for (v,) in query(db, f"SELECT DISTINCT {col} FROM {table}"):
                if len(v) != 27 or not v.endswith("Z"):
                    bad.append(f"{table}.{col} {v!r} is not canonical UTC text")
                    continue
                t = datetime.fromisoformat(v.replace("Z", "+00:00"))
                # windows are stamped with the run's "now", the next whole second
                hi2 = hi + timedelta(seconds=1) if table == "sync_windows" else hi
                if not lo <= t <= hi2:
                    bad.append(f"{table}.{col} {v} is not when the run happened ({lo}..{hi2})")
    return bad


@pytest.mark.parametrize("range_name", list(RANGES))
def test_every_local_time_zone_gives_the_same_mirror(tmp_path, range_name: str) -> None:
    world_now, since, until = RANGES[range_name]
    world = static_world(seed=81, now=world_now, hours=24 * 10.5, per_hour=1.5, running=0,
                         endpoints=("acme/flux-lora", "acme/flux-lora/turbo"))  # fmt: skip
    lo = datetime.fromisoformat(since.replace(" ", "T")).replace(tzinfo=UTC)
    hi = datetime.fromisoformat(until).replace(tzinfo=UTC)
    groups = zone_groups(lo - timedelta(days=1), hi + timedelta(days=1))
    zones = sorted({g[0] for g in groups.values()} | set(ALWAYS), key=lambda z: z != "UTC")
    expected = {rid: rec for rid, rec in listable(world).items()
                if lo <= rec["ended_at"] < hi}  # fmt: skip
    assert len(expected) > 50, "too little history in the range to prove anything"
    dbs = {zone: tmp_path / f"{zone.replace('/', '_')}.db" for zone in zones}
    with SimulatedAPI(world) as api:
        jobs = [
            (sync_args(dbs[z], "--since", since, "--until", until, targets=["acme/flux-lora"]),
             env_for(api.base_url, TZ=z))
            for z in zones
        ]  # fmt: skip
        t0 = datetime.now(UTC)
        outcomes = run_cli_parallel(jobs, tmp_path / "out", parallel=2, no_second_wait=True)
        t1 = datetime.now(UTC)
    reference = None
    for zone, o in zip(zones, outcomes, strict=True):
        db = dbs[zone]
        assert o.code == 0, f"TZ={zone}: exit {o.code}: {o.stderr[-1500:]}"
        bad = _ts_ok(db, t0, t1)
        assert not bad, f"TZ={zone}: {bad[:3]}"
        dump = content_dump(db)
        if reference is None:
            assert_mirror_equals(
                db, expected, context=f"TZ={zone}"
            )  # the reference itself is right
            reference = dump
            continue
        assert dump[1] == reference[1], (
            f"TZ={zone}: completed windows differ from UTC's: {dump[1]} vs {reference[1]}"
        )
        diff = set(dump[0]) ^ set(reference[0])
        assert not diff, f"TZ={zone}: {len(diff)} rows differ from UTC's, e.g. {sorted(diff)[:2]}"
    count("time zone syncs (one zone per distinct offset history, per DST range)", len(zones))
    record("IANA zones covered", sum(len(g) for g in groups.values()))
