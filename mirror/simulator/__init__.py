"""A deterministic simulation of fal's request-history Platform API, for tests and demos.

`World` holds the simulated requests and answers queries the way the API would at the
world's current time; `generate_world`/`demo_world` fill one with realistic history;
`SimulatedAPI` serves it over real HTTP on 127.0.0.1 with optional `FaultConfig` faults,
and what the requests cost as its `billing` (``mirror.simulator.billing``) says;
`SimulatedCDN` serves the files requests refer to (`attach_media` gives a world some).
"""

from mirror.simulator.cdn import (
    Attached,
    CdnFile,
    CdnHit,
    MediaMix,
    SimulatedCDN,
    attach_media,
)
from mirror.simulator.faults import FaultConfig
from mirror.simulator.generate import demo_world, generate_world
from mirror.simulator.server import DEFAULT_KEY, LoggedRequest, SimulatedAPI
from mirror.simulator.world import ManualClock, Query, SimRequest, World, WorldConfig

__all__ = [
    "DEFAULT_KEY",
    "Attached",
    "CdnFile",
    "CdnHit",
    "FaultConfig",
    "LoggedRequest",
    "ManualClock",
    "MediaMix",
    "Query",
    "SimRequest",
    "SimulatedAPI",
    "SimulatedCDN",
    "World",
    "WorldConfig",
    "attach_media",
    "demo_world",
    "generate_world",
]
