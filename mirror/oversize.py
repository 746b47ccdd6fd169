"""What mirror keeps of requests too big for a page, and where pages must be small.

A page of the list call over the body cap is asked for again in smaller pages, down to a
page of one request; one that is still over the cap is read without its payloads
(``mirror.walk``). Two things outlive the walk that found them:

- ``TooBig``: such a request. The sync stores its row without payloads, and records it in
  ``oversized_requests`` in the same transaction (``record``); ``mirror status`` lists
  them per target (``mirror.query.sync_status``).
- ``Stretch``: a stretch of a target's history whose pages had to be smaller than
  ``PAGE_LIMIT`` to stay under the cap. The sync keeps them in ``sync_page_limits``
  (``save_stretches``, ``load_stretches``), so that a walk there starts small on the next
  run too, instead of meeting the cap again.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection

from mirror.records import Row
from mirror.schema import oversized_requests, sync_page_limits
from mirror.timeparse import from_text, to_text


@dataclass(frozen=True)
class TooBig:
    """A request whose page of one is over the body cap with its payloads: it was read
    without them (its ``row``'s ``json_input`` and ``json_output`` are None)."""

    row: Row
    #: the size its one-request page declared (``Content-Length``), if it did
    page_bytes: int | None
    #: the cap that page was over
    cap: int


@dataclass(frozen=True)
class Stretch:
    """A stretch ``[start, end)`` of a target's history whose pages must hold at most
    ``limit`` requests to stay under the body cap (its requests' payloads are that big)."""

    target: str
    start: datetime
    end: datetime
    limit: int


def record(conn: Connection, found: Iterable[TooBig], now: str) -> None:
    """Record requests read without payloads (seen again: ``last_seen_at`` and sizes
    updated), in the caller's transaction. One statement per request, an upsert: two
    PostgreSQL writers recording the same request at once cannot collide on its key."""
    insert = postgresql.insert if conn.dialect.name == "postgresql" else sqlite.insert
    for big in {b.row.request_id: b for b in found}.values():
        r = big.row
        values = {"endpoint_id": r.endpoint_id, "sent_at": r.sent_at,
                  "page_bytes": big.page_bytes, "cap_bytes": big.cap, "last_seen_at": now}  # fmt: skip
        conn.execute(
            insert(oversized_requests)
            .values(request_id=r.request_id, first_seen_at=now, **values)
            .on_conflict_do_update(index_elements=["request_id"], set_=values)
        )


def save_stretches(conn: Connection, stretches: Iterable[Stretch], now: str) -> None:
    """Keep what walks learned; a stretch learned again keeps its smallest limit."""
    p = sync_page_limits.c
    for s in stretches:
        key = (p.target == s.target, p.window_start == to_text(s.start),
               p.window_end == to_text(s.end))  # fmt: skip
        had = conn.execute(sa.select(p.page_limit).where(*key)).scalar_one_or_none()
        if had is not None and had <= s.limit:
            continue
        conn.execute(sync_page_limits.delete().where(*key))
        row = {"target": s.target, "window_start": to_text(s.start),
               "window_end": to_text(s.end), "page_limit": s.limit, "learned_at": now}  # fmt: skip
        conn.execute(sync_page_limits.insert().values(**row))


def load_stretches(conn: Connection, targets: Iterable[str]) -> list[Stretch]:
    """The stretches kept for these targets."""
    p = sync_page_limits.c
    q = sa.select(p.target, p.window_start, p.window_end, p.page_limit).where(
        p.target.in_(list(targets))
    )
    return [Stretch(t, from_text(a), from_text(b), int(n)) for t, a, b, n in conn.execute(q)]
