"""The media archive as the tests use it: a simulated API and CDN with hand-made files.

``media_site`` starts both on loopback around a world whose clock stands still a moment
ago; a test adds files to the CDN (``file``: a ``File`` object for a payload) and requests
whose outputs refer to them (``request``), syncs, then runs ``mirror media`` for real.
``refs`` and ``files_on_disk`` read what the run left without mirror's code.
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import os
import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from mirror.simulator import (
    DEFAULT_KEY,
    CdnFile,
    ManualClock,
    SimRequest,
    SimulatedAPI,
    SimulatedCDN,
    World,
    WorldConfig,
)
from support.sim import fast_env

#: the endpoint of hand-made media requests
APP = "acme/app"


@dataclass
class MediaSite:
    world: World
    api: SimulatedAPI
    cdn: SimulatedCDN
    now: datetime
    _n: Iterator[int] = field(default_factory=lambda: itertools.count(1))

    def file(self, name: str, size: int = 3000, **kw: Any) -> dict[str, Any]:
        """A file on the CDN (``kw``: `CdnFile`'s behaviours), as a payload's File object."""
        seed = int(hashlib.sha256(name.encode()).hexdigest()[:12], 16)  # its bytes differ
        self.cdn.add(CdnFile(name=name, size=size, seed=seed, **kw))
        return self.cdn.file_object(name)

    def request(
        self, output: Any, *, endpoint: str = APP, status: int = 200, json_input: Any = None
    ) -> str:
        """A finished request with this output, ended a few minutes ago; its id."""
        n = next(self._n)
        sent = self.now - timedelta(minutes=30) + timedelta(seconds=n)
        rid = f"0190b000-0000-7000-8000-{n:012x}"
        self.world.add(
            SimRequest(
                request_id=rid, endpoint_id=endpoint, runner_id=None, sent_at=sent,
                started_at=sent + timedelta(seconds=1), ended_at=sent + timedelta(seconds=5),
                status_code=status, duration=4.0, json_input=json_input, json_output=output,
            )
        )  # fmt: skip
        return rid

    def env(self, **extra: str) -> dict[str, str]:
        return fast_env(self.api.base_url, **extra)


@contextlib.contextmanager
def media_site(**cdn_kw: Any) -> Iterator[MediaSite]:
    """A simulated API and CDN on loopback over an empty world whose clock stands still."""
    now = (datetime.now(UTC) - timedelta(seconds=2)).replace(microsecond=0)
    world = World(WorldConfig(clock=ManualClock(now)))
    cdn_kw.setdefault("canaries", (DEFAULT_KEY, DEFAULT_KEY.split(":")[1]))
    with SimulatedCDN(clock=world.config.clock, **cdn_kw) as cdn, SimulatedAPI(world) as api:
        yield MediaSite(world, api, cdn, now)


def refs(db: Path) -> dict[str, tuple[Any, ...]]:
    """``media_refs`` by URL: (state, sha256, error, gone_at is set), read with sqlite3."""
    con = sqlite3.connect(db)
    try:
        rows = con.execute("SELECT url, state, sha256, error, gone_at FROM media_refs").fetchall()
    finally:
        con.close()
    return {url: (state, sha, error, gone is not None) for url, state, sha, error, gone in rows}


def files_on_disk(root: Path) -> dict[str, str]:
    """Every file under ``root`` (relative path -> SHA-256 of its bytes)."""
    out = {}
    for dirpath, _dirs, names in os.walk(root):
        for name in names:
            p = Path(dirpath) / name
            out[str(p.relative_to(root))] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out
