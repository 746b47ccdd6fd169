"""Fixtures for the simulator tests: a hand-moved clock and servers stopped at teardown."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
from support.sim import NOW
from support.spec import SpecChecker

from mirror.simulator import ManualClock, SimulatedAPI, World


@pytest.fixture
def clock() -> ManualClock:
    """A clock at `NOW` that only moves when the test moves it."""
    return ManualClock(NOW)


@pytest.fixture
def serve() -> Iterator[Callable[..., SimulatedAPI]]:
    """Start a `SimulatedAPI` for a world; every one started is stopped at teardown, and a
    test fails if the simulator hit an unexpected exception while serving it."""
    started: list[SimulatedAPI] = []

    def start(world: World, **kwargs: Any) -> SimulatedAPI:
        api = SimulatedAPI(world, **kwargs).start()
        started.append(api)
        return api

    yield start
    for api in started:
        api.stop()
    errors = [e for api in started for e in api.errors]
    assert not errors, f"the simulator raised while serving: {errors!r}"


@pytest.fixture(scope="session")
def spec() -> SpecChecker:
    """The vendored OpenAPI description, parsed once."""
    return SpecChecker()
