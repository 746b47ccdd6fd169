"""The simulated API fuzzed against fal's OpenAPI description by schemathesis, over real HTTP.

All seven operations: the description's own examples, the boundaries of each parameter
and requests that break them, random requests, methods the description does not declare
(TRACE, POST, ...), requests without the key. Checked on every answer: no 5xx; status,
content type, headers and body as the description declares them; bad input refused with a
4xx; a missing key refused; an undeclared method answered 405 with ``Allow``, in fal's
JSON error shape.

Not checked: that every request the description allows is accepted (schemathesis's
``positive_data_acceptance``). The description leaves most limits in prose: the shape of
an endpoint id, the values ``expand`` takes, time zone names, the 90-day cap of billing
events, how many buckets an analytics answer holds. The simulator refuses what breaks
them with a 400 ``validation_error`` (docs/simulator.md), which that check would call a
failure.

Bounded to stay well under a minute: a fixed seed (a failure replays exactly), a few
random requests per operation, a small world.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import schemathesis
from support.sim import NOW
from support.spec import SPEC_PATH

from mirror.simulator import DEFAULT_KEY, ManualClock, SimulatedAPI, WorldConfig
from mirror.simulator import generate_world as gen
from mirror.simulator.generate import MODEL_ENDPOINTS

#: random requests per operation, on top of the examples and the boundary cases
MAX_EXAMPLES = 12
#: the operations (paths) whose test ran in this test process
FUZZED: set[str] = set()

fal_api = schemathesis.openapi.from_path(
    SPEC_PATH,
    config=schemathesis.Config.from_dict(
        {
            "seed": 13,
            "generation": {"max-examples": MAX_EXAMPLES},
            "phases": {"stateful": {"enabled": False}},
            "checks": {"positive_data_acceptance": {"enabled": False}},
        }
    ),
)


@pytest.fixture(scope="module")
def api() -> Iterator[SimulatedAPI]:
    """Calls to the account's own app and to hosted models (billed), a day of them."""
    world = gen(WorldConfig(clock=ManualClock(NOW)), seed=3, now=NOW, days=1,
                endpoints={**MODEL_ENDPOINTS, "acme/app": 0.3}, requests_per_hour=20,
                running=2, big_tie_group=0)  # fmt: skip
    with SimulatedAPI(world) as running:
        yield running
        assert not running.errors, f"the simulator raised while serving: {running.errors!r}"
        log = running.log
    # what the fuzzing claims to cover, it did: each operation whose test ran in this test
    # process (``pytest -n`` shares them out) was called, and nothing else
    paths = {e.path.removeprefix("/v1") for e in log}
    assert FUZZED and paths == FUZZED, f"operations fuzzed {sorted(FUZZED)}, called {paths}"
    refused = {e.method for e in log if e.status == 405}
    assert {"TRACE", "POST", "DELETE"} <= refused, f"undeclared methods tried: {refused}"
    assert any(not e.authorization_present for e in log), "no request went without the key"
    assert {e.status for e in log} >= {200, 400, 401}, "the answers were all of one kind"


@fal_api.parametrize()
def test_every_answer_conforms_to_fals_openapi_description(case: Any, api: SimulatedAPI) -> None:
    FUZZED.add(case.operation.path)
    case.call_and_validate(base_url=api.base_url, headers={"Authorization": f"Key {DEFAULT_KEY}"})
