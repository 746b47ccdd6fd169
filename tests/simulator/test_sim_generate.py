"""Generated history is deterministic and has the features that make mirroring hard."""

from __future__ import annotations

import uuid
from collections import Counter
from datetime import timedelta

import pytest
from support.sim import NOW

from mirror.simulator import ManualClock, SimRequest, World, WorldConfig, demo_world, generate_world
from mirror.simulator.world import EPOCH

DENSE_START = NOW - timedelta(hours=30)


@pytest.fixture(scope="module")
def world() -> World:
    return generate_world(
        WorldConfig(clock=ManualClock(NOW)),
        seed=8,
        now=NOW,
        days=3,
        requests_per_hour=200,
        dense_hour=(DENSE_START, 2500),
        future_minutes=30,
        running=12,
    )


@pytest.fixture(scope="module")
def reqs(world: World) -> list[SimRequest]:
    return list(world)


def test_same_seed_same_history_other_seed_other_history() -> None:
    def view(seed: int) -> dict[str, dict[str, object]]:
        config = WorldConfig(clock=ManualClock(NOW), filter_field="sent_at")
        return generate_world(
            config, seed=seed, now=NOW, days=0.5, requests_per_hour=80
        ).server_view()

    first, again, other = view(1), view(1), view(2)
    assert first == again, "a seed must name one history"
    assert first.keys() != other.keys()


def test_timestamps_are_consistent(reqs: list[SimRequest]) -> None:
    bad = [r.request_id for r in reqs if not r.sent_at < r.started_at < r.ended_at]
    assert not bad, f"need sent_at < started_at < ended_at: {bad[:5]}"
    off = [
        r.request_id
        for r in reqs
        if abs(r.duration - (r.ended_at - r.started_at).total_seconds()) > 1e-9
    ]
    assert not off, f"duration must equal ended_at - started_at: {off[:5]}"
    assert all(r.recorded_at >= r.sent_at for r in reqs)
    late = [r for r in reqs if r.recorded_at > r.ended_at]
    assert 0.002 * len(reqs) < len(late) < 0.02 * len(reqs), f"{len(late)} late-recorded requests"


def test_request_ids_are_uuid7_ordered_by_sent_at(reqs: list[SimRequest]) -> None:
    for r in reqs:
        u = uuid.UUID(r.request_id)
        assert (u.version, u.variant) == (7, uuid.RFC_4122), r.request_id
        millis = int(r.request_id.replace("-", "")[:12], 16)
        assert millis == (r.sent_at - EPOCH) // timedelta(milliseconds=1), r.request_id
    assert len({r.request_id for r in reqs}) == len(reqs)


def test_status_mix_and_runnerless_failures(reqs: list[SimRequest]) -> None:
    classes = Counter(r.status_code // 100 for r in reqs)
    total = len(reqs)
    assert 0.88 < classes[2] / total < 0.94, classes
    assert 0.045 < classes[4] / total < 0.075, classes
    assert 0.02 < classes[5] / total < 0.04, classes
    codes = {r.status_code for r in reqs}
    assert {200, 201, 400, 404, 422, 500, 503, 504} <= codes, codes
    runnerless = [r for r in reqs if r.runner_id is None]
    assert runnerless and all(r.status_code >= 400 for r in runnerless), (
        "only failures lack a runner"
    )


def test_durations_span_seconds_to_long_jobs(reqs: list[SimRequest]) -> None:
    durations = sorted(r.duration for r in reqs if r.status_code < 300)
    median = durations[len(durations) // 2]
    assert 1 < median < 60, median
    long_jobs = [d for d in durations if 1200 <= d <= 2400]
    assert 5 <= len(long_jobs) <= 0.01 * len(durations), f"{len(long_jobs)} jobs of 20-40 minutes"


def test_ties_on_ended_at_include_one_larger_than_a_page(reqs: list[SimRequest]) -> None:
    groups = Counter(r.ended_at for r in reqs)
    sizes = sorted((n for n in groups.values() if n > 1), reverse=True)
    assert sizes[0] > 100, f"largest tie group {sizes[0]}"
    assert len(sizes) > 20, f"only {len(sizes)} tie groups"
    big = [r for r in reqs if groups[r.ended_at] == sizes[0]]
    assert len({r.duration for r in big}) == 1, "the big group also ties on duration"


def test_payloads(reqs: list[SimRequest]) -> None:
    inputs = [r.json_input for r in reqs]
    nulls = sum(1 for r in reqs if r.json_input is None and r.json_output is None)
    assert 0.015 * len(reqs) < nulls < 0.05 * len(reqs), f"{nulls} opted-out payloads"
    texts = {str(i) for i in inputs if i is not None}
    for needle in ("café au lait", "東京の夜景", "Сибирь", "🦊"):
        assert any(needle in t for t in texts), f"no payload mentions {needle!r}"
    assert any(isinstance(i, dict) and isinstance(i.get("image_size"), dict) for i in inputs), (
        "nested objects"
    )
    failures = [r.json_output for r in reqs if r.status_code == 422 and r.json_output is not None]
    assert failures and all("detail" in o for o in failures)


def test_billing_lags_and_sometimes_never_lands(reqs: list[SimRequest]) -> None:
    billed = [r for r in reqs if r.billable_units is not None]
    assert all(r.status_code < 300 for r in billed), "only successes are billed"
    assert len(billed) == sum(1 for r in reqs if r.status_code < 300)
    lags = [(r.billing_at - r.ended_at).total_seconds() for r in billed if r.billing_at is not None]
    never = len(billed) - len(lags)
    assert all(lag > 0 for lag in lags)
    assert sum(1 for lag in lags if lag <= 20) > 0.9 * len(lags)
    assert sum(1 for lag in lags if lag >= 60) > 0.02 * len(lags)
    assert 0 < never < 0.02 * len(billed), f"{never} billing events never land"


def test_running_future_dense_and_endpoints(reqs: list[SimRequest]) -> None:
    running = [r for r in reqs if r.sent_at <= NOW < r.ended_at]
    future = [r for r in reqs if r.sent_at > NOW]
    dense = [r for r in reqs if DENSE_START <= r.sent_at < DENSE_START + timedelta(hours=1)]
    assert len(running) >= 12
    assert all(r.sent_at <= NOW + timedelta(minutes=30) for r in future) and len(future) > 30
    assert len(dense) > 2500
    endpoints = Counter(r.endpoint_id for r in reqs)
    assert set(endpoints) == {
        "acme/flux-lora",
        "acme/flux-lora/turbo",
        "acme/upscaler",
        "acme/whisper-v3",
    }


def test_demo_world_is_a_pleasant_size() -> None:
    clock = ManualClock(NOW)
    world = demo_world(NOW, config=WorldConfig(clock=clock))
    reqs = list(world)
    assert 3_000 < len(reqs) < 20_000, len(reqs)
    assert any(r.sent_at > NOW for r in reqs), "future arrivals trickle in"
    assert any(r.sent_at <= NOW < r.ended_at for r in reqs), "some requests are running"
    assert demo_world(NOW).server_view(NOW) == world.server_view(), "the demo is deterministic"
