"""What a sync run keeps about cost: billing events, prices, and fal's usage totals.

Called by ``mirror.sync`` after the requests of a run are written (``SyncOptions.cost``),
through ``mirror.billing_api`` (every field checked before anything is stored) into
``mirror.store`` and the tables of migration 0014:

- **Billing events** are mirrored the way requests are: the range from the earliest start
  any target asked for to the moment the sync started is cut into windows of at most
  `WINDOW` (within the API's 90-day cap), each walked page by page (`EVENTS_LIMIT` a page)
  along the cursor, every page upserted in its own transaction (keyed by ``request_id``:
  an event is stored once however often it is read) and the window marked complete
  (``cost_windows``) in the same transaction as its last page. A run killed mid-window
  walks the window again; nothing committed is lost. Events appear some minutes after a
  request ends, dated earlier: the stretch after the last completed point minus `LOOKBACK`
  is walked again every run. An event for a request the mirror does not hold is kept.
- **Prices** of every model endpoint the mirror knows (`model_endpoints`) are asked for at
  most once per `PRICE_EVERY`, and ``Store.record_prices`` adds a row only when one changed.
- **Usage totals** (``/models/usage``) of the last `USAGE_DAYS` whole UTC days are fetched
  at most once per `USAGE_EVERY`, stored per day and endpoint (``usage_checks``) beside the
  billing events' sum, and every day whose sums differ is one note of the run.

On PostgreSQL, where several sync processes may share one database, one of them at a time
does this step (a session advisory lock, `COST_LOCK_KEY`); the others leave it to it.

A run with ``--no-cost`` calls nothing and only records that it skipped cost
(`skip_cost`). A key without ADMIN scope (403 on billing events or usage) is not a
failure: the run notes it once, ``cost_state`` says ``refused`` and why (``mirror status``
shows it), the requests the run synced stand, and prices (which need no ADMIN scope) are
still kept. Any other failure (bad data, the API failing) is recorded as ``failed`` and
raised: the run fails as it would on requests.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.engine import Connection

from mirror.api import FalClient
from mirror.billing_api import (
    EVENTS_LIMIT,
    MAX_RANGE,
    fetch_prices,
    fetch_usage,
    list_billing_events,
)
from mirror.cost import CURRENCY, CostFilters, usage_differences, usd_text
from mirror.cost_status import STATE_ID, state_row
from mirror.errors import AdminRequired, BadDataError
from mirror.redact import redact
from mirror.schema import (
    billing_events,
    cost_state,
    cost_windows,
    requests,
    sync_targets,
    usage_checks,
)
from mirror.store import Store
from mirror.timeparse import from_text, to_text
from mirror.windows import Window, plan

__all__ = [
    "COST_LOCK_KEY",
    "LOOKBACK",
    "PRICE_EVERY",
    "USAGE_DAYS",
    "USAGE_EVERY",
    "WINDOW",
    "CostReport",
    "differences_text",
    "model_endpoints",
    "skip_cost",
    "sync_cost",
    "sync_cost_now",
]

log = logging.getLogger("mirror.cost_sync")

#: the longest window of billing events walked at once: within the API's 90-day cap, and
#: short enough that a run killed mid-window walks little again
WINDOW = timedelta(days=30)
assert WINDOW <= MAX_RANGE
#: billing events appear minutes (sometimes hours) after the request they are dated by:
#: this much before the last completed point is walked again every run
LOOKBACK = timedelta(days=1)
#: prices are asked for at most this often
PRICE_EVERY = timedelta(days=1)
#: usage totals are checked at most this often, over this many whole UTC days
USAGE_EVERY = timedelta(days=1)
USAGE_DAYS = 7
_DAY = timedelta(days=1)
#: the PostgreSQL advisory lock of the cost step ("mirror" + 2; the migration's is + 1)
COST_LOCK_KEY = 0x6D6972726F720002


@dataclass
class CostReport:
    """What one run did about cost."""

    events_new: int = 0
    events_changed: int = 0
    windows: int = 0
    pages: int = 0
    prices_added: int = 0
    prices_checked: bool = False
    #: whether fal's usage totals were checked (at most once a day)
    usage_checked: bool = False
    #: days and endpoints where the mirror's billed sum differs from fal's usage total
    differences: list[dict[str, Any]] = field(default_factory=list)
    #: why cost was not mirrored (the key lacks ADMIN scope), or None
    refused: str | None = None

    def summary(self) -> str:
        """A clause of the run's summary line."""
        line = (
            f"billing: {self.events_new} new events, {self.events_changed} changed, "
            f"in {self.pages} pages"
        )
        if self.prices_checked:
            line += f"; prices checked, {self.prices_added} changed"
        return line


def _state_insert(dialect: str) -> Any:
    return postgresql.insert if dialect == "postgresql" else sqlite_insert


def _set_state(store: Store, now: str, state: str, reason: str | None, **more: str) -> None:
    values: dict[str, Any] = {"state": state, "reason": reason, "checked_at": now, **more}
    if state == "ok":
        values["ok_at"] = now
    insert = _state_insert(store.dialect)(cost_state).values(id=STATE_ID, **values)
    with store.writing() as conn:
        conn.execute(insert.on_conflict_do_update(index_elements=["id"], set_=values))


def model_endpoints(conn: Connection) -> list[str]:
    """The model endpoints the mirror knows: model sync targets (where targets say which
    history they are), endpoints of the model history's requests, and endpoints billed."""
    found: set[str] = set()
    history = getattr(sync_targets.c, "history", None)
    if history is not None:
        found.update(
            conn.execute(sa.select(sync_targets.c.target).where(history == "model")).scalars()
        )
    r = requests.c
    found.update(
        conn.execute(sa.select(r.endpoint_id).where(r.history == "model").distinct()).scalars()
    )
    found.update(conn.execute(sa.select(billing_events.c.endpoint_id).distinct()).scalars())
    return sorted(found)


def _completed(conn: Connection) -> list[tuple[datetime, datetime]]:
    w = cost_windows.c
    rows = conn.execute(sa.select(w.window_start, w.window_end).order_by(w.window_start))
    return [(from_text(a), from_text(b)) for a, b in rows]


def _mark_complete(conn: Connection, window: Window, now: str) -> None:
    """Record ``window`` complete, merged with every interval it touches or overlaps."""
    w = cost_windows.c
    start, end = to_text(window.start), to_text(window.end)
    touching = conn.execute(
        sa.select(w.window_start, w.window_end).where(w.window_start <= end, w.window_end >= start)
    ).all()
    lo = min([start, *(r[0] for r in touching)])
    hi = max([end, *(r[1] for r in touching)])
    if touching:
        conn.execute(cost_windows.delete().where(w.window_start.in_([r[0] for r in touching])))
    conn.execute(cost_windows.insert().values(window_start=lo, window_end=hi, completed_at=now))


def _start(conn: Connection, default: datetime) -> datetime:
    """Where billing events are asked for from: the earliest start any target asked for."""
    earliest = conn.execute(sa.select(sa.func.min(sync_targets.c.requested_from))).scalar()
    return from_text(earliest) if earliest else default


def _walk(store: Store, client: FalClient, window: Window, report: CostReport, stamp: str) -> None:
    """Every billing event of ``window``, page by page, each page committed; the window
    marked complete with its last page."""
    cursor: str | None = None
    seen: set[str] = set()
    while True:
        page = list_billing_events(
            client, start=window.start, end=window.end, cursor=cursor, limit=EVENTS_LIMIT
        )
        report.pages += 1
        with store.writing() as conn:
            result = store.upsert_billing_events(conn, page.events, now=stamp)
            if page.next_cursor is None:
                _mark_complete(conn, window, stamp)
        report.events_new += result.inserted
        report.events_changed += result.updated
        if page.next_cursor is None:
            report.windows += 1
            return
        if page.next_cursor in seen:  # a cursor given twice would walk for ever
            raise BadDataError(f"the billing-events answer repeated a page cursor in {window}")
        seen.add(page.next_cursor)
        cursor = page.next_cursor


def _prices_due(row: Any, now: datetime) -> bool:
    return (
        row is None
        or row.prices_checked_at is None
        or (now - from_text(row.prices_checked_at) >= PRICE_EVERY)
    )


def _usage_due(row: Any, now: datetime) -> bool:
    return (
        row is None
        or row.usage_checked_at is None
        or (now - from_text(row.usage_checked_at) >= USAGE_EVERY)
    )


def _check_usage(
    store: Store, client: FalClient, start: datetime, end: datetime, stamp: str
) -> list[dict[str, Any]]:
    """fal's usage totals of [``start``, ``end``) against the mirror's billing events, per
    UTC day and endpoint (``mirror.cost.usage_differences``), kept in ``usage_checks``:
    the rows that differ."""
    lines = fetch_usage(client, start=start, end=end)
    totals: dict[tuple[str, str], int] = {}
    for line in lines:
        if line.currency == CURRENCY:
            key = (line.bucket[:10], line.endpoint_id)
            totals[key] = totals.get(key, 0) + line.cost_total_nano
    u = usage_checks.c
    with store.writing() as conn:
        diffs = usage_differences(conn, lines, CostFilters(since=start, until=end))
        differing = {(d["day"], d["endpoint"]): d["mirror_nano_usd"] for d in diffs}
        conn.execute(
            usage_checks.delete().where(u.day >= to_text(start)[:10], u.day < to_text(end)[:10])
        )
        rows = [
            {"day": day, "endpoint_id": endpoint, "checked_at": stamp,
             "usage_nano_usd": totals.get((day, endpoint), 0),
             "mirror_nano_usd": differing.get((day, endpoint), totals.get((day, endpoint), 0))}
            for day, endpoint in sorted(totals.keys() | differing.keys())
        ]  # fmt: skip
        if rows:
            conn.execute(usage_checks.insert(), rows)
    return diffs


def _refusal(e: AdminRequired) -> str:
    return (
        f"the key lacks ADMIN scope, which billing events and usage need (HTTP {e.status}); "
        "requests are still mirrored, costs only estimated"
    )


@contextlib.contextmanager
def _exclusive(store: Store) -> Iterator[bool]:
    """Whether this process may do the cost step now: always on SQLite (the file's writer
    lock already excludes other syncs); on PostgreSQL, if no other process is doing it."""
    if store.dialect != "postgresql":
        yield True
        return
    with store.engine.connect() as conn:
        got = bool(
            conn.execute(sa.text("SELECT pg_try_advisory_lock(:k)"), {"k": COST_LOCK_KEY}).scalar()
        )
        conn.commit()
        try:
            yield got
        finally:
            if got:
                with contextlib.suppress(Exception):  # the session's end releases it anyway
                    conn.execute(sa.text("SELECT pg_advisory_unlock(:k)"), {"k": COST_LOCK_KEY})
                    conn.commit()


#: ``cost_state.reason`` of a run that left cost out on purpose
SKIPPED = "the syncs run with --no-cost"


def skip_cost(store: Store, now: datetime) -> None:
    """Record that a run left cost out (``--no-cost``): ``cost_state`` says ``skipped``,
    keeping when cost was last mirrored (``ok_at``), so `mirror status` can tell a mirror
    that never kept cost from one whose cost stopped, and neither is a failing check."""
    _set_state(store, to_text(now), "skipped", SKIPPED)


def sync_cost(
    store: Store,
    client: FalClient,
    *,
    now: datetime,
    default_from: datetime,
    note: Callable[[str], None],
) -> CostReport | None:
    """`sync_cost_now` unless another process is doing it (PostgreSQL): then None."""
    with _exclusive(store) as mine:
        if not mine:
            log.info("another mirror sync is mirroring cost; left to it")
            return None
        return sync_cost_now(store, client, now=now, default_from=default_from, note=note)


def sync_cost_now(
    store: Store,
    client: FalClient,
    *,
    now: datetime,
    default_from: datetime,
    note: Callable[[str], None],
) -> CostReport:
    """Mirror billing events up to ``now`` (the sync's horizon), the prices when due, and
    check usage totals when due. ``default_from``: where events start when no target has
    a requested start. ``note``: tells the run's user one line (a refusal, a difference)."""
    report = CostReport()
    stamp = to_text(now)
    with store.reading() as conn:
        start = _start(conn, default_from)
        completed = _completed(conn)
        row = state_row(conn)
    reached = max((b for _, b in completed), default=None)
    windows = plan(start, now, completed, recheck_from=reached and reached - LOOKBACK,
                   size=WINDOW)  # fmt: skip
    more: dict[str, str] = {}
    try:
        try:
            for window in windows:
                _walk(store, client, window, report, stamp)
        except AdminRequired as e:
            report.refused = _refusal(e)
        # prices need no ADMIN scope: kept for the estimates whether events are read or not
        if _prices_due(row, now):
            with store.reading() as conn:
                models = model_endpoints(conn)
            quotes = fetch_prices(client, models) if models else []
            with store.writing() as conn:
                report.prices_added = store.record_prices(conn, quotes, stamp)
            report.prices_checked = True
            more["prices_checked_at"] = stamp
        if report.refused is None and _usage_due(row, now):
            today = now.astimezone(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
            first = max(today - USAGE_DAYS * _DAY, min(start, today))
            try:
                if first < today:
                    report.differences = _check_usage(store, client, first, today, stamp)
                    report.usage_checked = True
                more["usage_checked_at"] = stamp
            except AdminRequired as e:
                report.refused = _refusal(e)
    except Exception as e:
        try:
            _set_state(store, stamp, "failed", redact(str(e))[:500])
        except Exception as again:  # the cost's own error is what the user must hear
            log.warning("could not record that cost mirroring failed: %s", again)
        raise
    if report.refused is not None:
        note(f"cost is not mirrored: {report.refused}")
        _set_state(store, stamp, "refused", report.refused, **more)
        return report
    _set_state(store, stamp, "ok", None, **more)
    if report.differences:
        note(differences_text(report.differences))
    return report


#: differing days and endpoints named in the run's note (all of them: ``usage_checks``)
DIFFERENCES_SHOWN = 3


def differences_text(diffs: list[dict[str, Any]]) -> str:
    """The run's one note about fal's usage totals differing from the billing events."""
    shown = "; ".join(
        f"{d['day']} {d['endpoint']}: billing events {usd_text(d['mirror_nano_usd'])} USD, "
        f"usage {usd_text(d['usage_nano_usd'])} USD"
        for d in diffs[:DIFFERENCES_SHOWN]
    )
    more = f"; and {len(diffs) - DIFFERENCES_SHOWN} more" if len(diffs) > DIFFERENCES_SHOWN else ""
    return (
        f"cost: fal's usage totals differ from the mirror's billing events on {len(diffs)} "
        f"day(s) and endpoint(s) (table usage_checks): {shown}{more}"
    )
