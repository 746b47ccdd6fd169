"""Whether cost is being mirrored, as `mirror status` and `status --check` read it.

What ``mirror.cost_sync`` left in ``cost_state`` (ok, refused and why, failed and why,
skipped by a ``--no-cost`` run),
how far the billing events' completed windows reach, and how many days and endpoints the
last usage check found different (``usage_checks``). Reading only.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from mirror.schema import billing_events, cost_state, cost_windows, usage_checks

__all__ = ["STATE_ID", "CostStatus", "cost_status", "state_row"]

#: the one row of ``cost_state``
STATE_ID = 1


@dataclass(frozen=True)
class CostStatus:
    """``cost_state`` and what the mirror holds, as `mirror status` shows them."""

    #: "ok", "refused", "failed", "skipped" (the last sync ran with --no-cost), or "never"
    #: (no sync has tried yet)
    state: str
    reason: str | None
    checked_at: str | None
    ok_at: str | None
    covered_to: str | None
    events: int
    prices_checked_at: str | None
    usage_checked_at: str | None
    usage_differences: int

    def as_dict(self) -> dict[str, Any]:
        return {
            "state": self.state,
            "reason": self.reason,
            "checked_at": self.checked_at,
            "ok_at": self.ok_at,
            "covered_to": self.covered_to,
            "events": self.events,
            "prices_checked_at": self.prices_checked_at,
            "usage_checked_at": self.usage_checked_at,
            "usage_differences": self.usage_differences,
        }

    def text(self) -> str:
        """One line for `mirror status`'s table."""
        if self.state == "never":
            return "cost: not mirrored yet (mirror sync mirrors it unless --no-cost)"
        if self.state == "refused":
            return f"cost: NOT being mirrored: {self.reason}"
        if self.state == "failed":
            return f"cost: the last attempt failed: {self.reason}"
        if self.state == "skipped":
            return f"cost: {self.stopped()}" if self.ok_at else f"cost: not mirrored: {self.reason}"
        to = f" up to {self.covered_to[:16]}Z" if self.covered_to else ""
        diff = (
            f"; fal's usage totals differ on {self.usage_differences} day(s) and endpoint(s)"
            if self.usage_differences
            else ""
        )
        return f"cost: {self.events} billing events{to}{diff}"

    def stopped(self) -> str:
        """That cost was mirrored and no longer is, since when and why (``skipped``)."""
        held = f"{self.events} billing events"
        held += f" up to {self.covered_to[:16]}Z" if self.covered_to else ""
        since = self.ok_at[:16] + "Z" if self.ok_at else "?"
        return f"NOT mirrored since {since}: {self.reason} ({held} kept)"


def state_row(conn: Connection) -> Any:
    """``cost_state``'s row, or None before any sync tried to mirror cost."""
    return conn.execute(sa.select(cost_state).where(cost_state.c.id == STATE_ID)).first()


def cost_status(conn: Connection) -> CostStatus:
    """What `mirror status` says about cost, read on ``conn``."""
    row = state_row(conn)
    covered = conn.execute(sa.select(sa.func.max(cost_windows.c.window_end))).scalar()
    events = conn.execute(sa.select(sa.func.count()).select_from(billing_events)).scalar() or 0
    u = usage_checks.c
    differing = conn.execute(
        sa.select(sa.func.count()).where(u.usage_nano_usd != u.mirror_nano_usd)
    ).scalar()
    return CostStatus(
        state=row.state if row is not None else "never",
        reason=row.reason if row is not None else None,
        checked_at=row.checked_at if row is not None else None,
        ok_at=row.ok_at if row is not None else None,
        covered_to=covered,
        events=int(events),
        prices_checked_at=row.prices_checked_at if row is not None else None,
        usage_checked_at=row.usage_checked_at if row is not None else None,
        usage_differences=int(differing or 0),
    )
