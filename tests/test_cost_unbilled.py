"""`mirror cost`'s estimate, read from the unbilled requests kept per hour (revision 0015),
equals a recomputation request by request, on SQLite and PostgreSQL: after a mixed history
written the ways mirror writes (events before and after their requests, requests that
finish, fail or change later, deletes as ``verify --repair`` makes them, events deleted by
hand, model and serverless requests, prices that change mid-hour, one in EUR); after the
upgrade of a file that held that history before the revision; after ``mirror copy``; and
when a request and its event are written at once by two PostgreSQL transactions.
"""

from __future__ import annotations

import random
import threading
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from alembic import command
from click.testing import CliRunner
from support.spend import expected_rollup, expected_spend, stored_rollup

from mirror.billing_api import BillingEvent
from mirror.cli import cli
from mirror.cost import CostFilters, spend
from mirror.db import alembic_config, make_engine
from mirror.records import Row, derive_status
from mirror.schema import billing_events, prices, requests
from mirror.store import Store
from mirror.timeparse import from_text, to_text

FLUX, SCHNELL, WHISPER, NOPRICE = (
    "fal-ai/flux/dev", "fal-ai/flux/schnell", "fal-ai/whisper", "fal-ai/unpriced",
)  # fmt: skip
APP, ROUTE = "acme/app", "acme/app/turbo"  # serverless; the route has a price of its own
MODELS = (FLUX, SCHNELL, WHISPER, NOPRICE)
STAMP = "2026-11-29T00:00:00.000000Z"
DAY0 = datetime(2026, 11, 26, tzinfo=UTC)
#: (endpoint, seen_at, unit_price, currency): changes mid-hour, one exactly on an hour
PRICES = [
    (FLUX, "2026-11-26T10:17:23.500000Z", 0.025, "USD"),
    (FLUX, "2026-11-27T03:40:00.000001Z", 0.03, "USD"),
    (FLUX, "2026-11-28T00:00:00.000000Z", 0.0275, "USD"),
    (SCHNELL, "2026-11-27T12:30:00.000000Z", 0.003, "USD"),
    (WHISPER, "2026-11-26T00:00:00.000000Z", 0.0011, "EUR"),
    (ROUTE, "2026-11-26T05:05:05.000000Z", 0.0005, "USD"),
]
#: the questions asked: (by, since, until, endpoints)
QUESTIONS: list[tuple[tuple[str, ...], str | None, str | None, tuple[str, ...]]] = [
    ((), None, None, ()),
    (("day", "endpoint"), None, None, ()),
    (("day", "endpoint", "key"), None, None, ()),
    (("endpoint",), "2026-11-26T10:30:00.000000Z", "2026-11-28T07:12:00.000000Z", ()),
    (("day",), "2026-11-27T00:00:00.000000Z", "2026-11-28T00:00:00.000000Z", (FLUX,)),
    (("day", "endpoint"), "2026-11-27T03:10:00.000000Z", "2026-11-27T03:50:00.000000Z", ()),
    (("endpoint",), None, "2026-11-27T12:45:00.000000Z", (APP, SCHNELL)),
    (("key",), "2026-11-26T23:59:59.999999Z", None, ()),
]


def at(k: int) -> str:
    """An instant of the three days, one in seven on the hour exactly."""
    secs = k * 613 % (3 * 86400)
    if k % 7 == 0:
        return to_text(DAY0 + timedelta(seconds=secs - secs % 3600))
    return to_text(DAY0 + timedelta(seconds=secs, microseconds=k * 7919 % 1_000_000))


def request(rid: str, endpoint: str, ended: str | None, code: int | None,
            units: float | None) -> Row:  # fmt: skip
    code = code if ended else None
    return Row(rid, endpoint, None, "2026-11-25T00:00:00.000000Z", None, ended, code, 1.5,
               units, None, None, derive_status(ended, code))  # fmt: skip


def event(rid: str, endpoint: str, when: str, nano: int, k: int) -> BillingEvent:
    key, user, label = [("key-1", None, "Key"), (None, "alice", "User"), (None, None, "Tok")][k % 3]
    return BillingEvent(rid, endpoint, when, 1.0, None, None, nano / 1e9, 0.0, nano / 1e9, nano,
                        label, key, user)  # fmt: skip


@dataclass
class History:
    """What is written, step by step, as mirror writes it."""

    first: list[tuple[str, list[Row]]]  # (history, rows) per batch
    events_before: list[BillingEvent]
    events_after: list[BillingEvent]
    changed: list[tuple[str, list[Row]]]
    deleted_requests: list[str]
    deleted_events: list[str]


def make_history(seed: int = 13, n: int = 480) -> History:
    rnd = random.Random(seed)
    rows: dict[str, tuple[str, Row]] = {}
    for k in range(n):
        endpoint = rnd.choice((*MODELS, APP, ROUTE))
        history = "serverless" if endpoint in (APP, ROUTE) else "model"
        ended = None if rnd.random() < 0.08 else at(k)
        code = rnd.choice((200, 200, 200, 201, 302, 422, 500))
        units = None if history == "model" else rnd.choice((None, 1.0, 2.0, 0.5, 1.25, 3.333))
        rows[f"r{k:04d}"] = (history, request(f"r{k:04d}", endpoint, ended, code, units))
    ids = list(rows)
    rnd.shuffle(ids)
    billed = [i for i in ids if rows[i][1].status == "success"][: n // 3]
    before, after = billed[: len(billed) // 2], billed[len(billed) // 2 :]

    def events_of(chosen: Sequence[str]) -> list[BillingEvent]:
        out = []
        for j, rid in enumerate(chosen):
            r = rows[rid][1]
            out.append(event(rid, r.endpoint_id, r.ended_at or STAMP, 1_000 + j * 997, j))
        return out

    # events of requests the mirror never holds, one of them with the id a deleted row had
    strays = [event(f"x{j}", FLUX, at(1000 + j), 5, j) for j in range(5)]
    first: dict[str, list[Row]] = defaultdict(list)
    for rid in ids:
        first[rows[rid][0]].append(rows[rid][1])
    changed: dict[str, list[Row]] = defaultdict(list)
    for rid in ids[: n // 5]:
        history, r = rows[rid]
        # finished, failed or re-measured later: a row moves in or out of success, or
        # changes its hour, endpoint or units
        ended = r.ended_at or at(rnd.randrange(n))
        code = rnd.choice((200, 500, 404))
        units = None if history == "model" else rnd.choice((None, 4.0, 0.25))
        endpoint = rnd.choice((r.endpoint_id, r.endpoint_id, FLUX if history == "model" else APP))
        changed[history].append(request(rid, endpoint, ended, code, units))
    return History(
        first=sorted(first.items()),
        events_before=events_of(before) + strays,
        events_after=events_of(after),
        changed=sorted(changed.items()),
        deleted_requests=ids[n // 5 : n // 5 + 25] + billed[:5],
        deleted_events=[e.request_id for e in events_of(after)[-10:]],
    )


def write(store: Store, h: History) -> None:
    """The history, in the transactions a sync, `verify --repair` and a hand would use."""
    with store.engine.begin() as conn:
        store.upsert_billing_events(conn, h.events_before, now=STAMP)
    for history, rows in h.first:
        for k in range(0, len(rows), 100):
            with store.engine.begin() as conn:
                store.upsert(conn, rows[k : k + 100], payloads=False, billing=True, now=STAMP,
                             history=history)  # fmt: skip
    with store.engine.begin() as conn:
        store.upsert_billing_events(conn, h.events_after, now=STAMP)
        # the same events again, one of them corrected: an update, not a new event
        again = [h.events_after[0]._replace(cost_estimate_nano_usd=77, cost_total=77 / 1e9,
                                            cost_subtotal=77 / 1e9)]  # fmt: skip
        store.upsert_billing_events(conn, again + h.events_after[1:], now=STAMP)
    for history, rows in h.changed:
        with store.engine.begin() as conn:
            store.upsert(conn, rows, payloads=False, billing=True, now=STAMP, history=history)
    with store.engine.begin() as conn:
        conn.execute(requests.delete().where(requests.c.request_id.in_(h.deleted_requests)))
        conn.execute(billing_events.delete().where(
            billing_events.c.request_id.in_(h.deleted_events)))  # fmt: skip
        conn.execute(prices.insert(), [
            {"endpoint_id": e, "seen_at": s, "unit": "image", "unit_price": p, "currency": c,
             "checked_at": s} for e, s, p, c in PRICES])  # fmt: skip


def check(url: str, what: str) -> None:
    """The rollup and every question's answer equal their recomputations."""
    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            want = expected_rollup(conn)
            assert want, "the history leaves unbilled requests to estimate"
            assert stored_rollup(conn) == want, f"{what}: unbilled_hourly is not what it holds"
            for by, since, until, chosen in QUESTIONS:
                got = spend(conn, CostFilters(since=since and from_text(since),
                                              until=until and from_text(until),
                                              endpoints=chosen), by=by)  # fmt: skip
                exp = expected_spend(conn, by, since, until, chosen)
                assert got == exp, f"{what}: spend by {by} {since}..{until} {chosen} differs"
    finally:
        engine.dispose()


# --------------------------------------------------------------------------- the tests


def test_the_estimate_equals_the_recomputation_after_a_mixed_history(db_url: str) -> None:
    h = make_history()
    store = Store.open(db_url)
    try:
        write(store, h)
        with store.engine.connect() as conn:
            estimated = spend(conn, CostFilters())[0]
        assert estimated["estimated"] > 50 and estimated["unpriced"] > 20, (
            f"the history exercises both the estimate and the unpriced: {estimated}"
        )
    finally:
        store.close()
    check(db_url, "after the history")


def test_the_upgrade_fills_the_rollup_from_what_is_stored(db_url: str) -> None:
    """A mirror written before revision 0015 (rows inserted as they are), then upgraded."""
    h = make_history(seed=5, n=200)
    engine = make_engine(db_url)
    with engine.begin() as conn:
        command.upgrade(alembic_config(conn), "0014")
        latest = {r.request_id: (hist, r) for hist, rows in h.first + h.changed for r in rows}
        gone = set(h.deleted_requests)
        conn.execute(requests.insert(), [
            {**r._asdict(), "first_seen_at": STAMP, "last_changed_at": STAMP, "history": hist}
            for rid, (hist, r) in latest.items() if rid not in gone])  # fmt: skip
        conn.execute(billing_events.insert(), [
            {**e._asdict(), "first_seen_at": STAMP, "last_changed_at": STAMP}
            for e in h.events_before + h.events_after
            if e.request_id not in set(h.deleted_events)])  # fmt: skip
        conn.execute(prices.insert(), [
            {"endpoint_id": e, "seen_at": s, "unit": "image", "unit_price": p, "currency": c,
             "checked_at": s} for e, s, p, c in PRICES])  # fmt: skip
    engine.dispose()
    Store.open(db_url).close()  # upgrades to head
    check(db_url, "after the upgrade")
    engine = make_engine(db_url)
    with engine.begin() as conn:  # and the triggers are in place: an event takes its row out
        rid = next(r.request_id for r in table_rows(conn) if r.status == "success"
                   and r.request_id not in billed_ids(conn))  # fmt: skip
        conn.execute(billing_events.insert(), [
            {**event(rid, FLUX, STAMP, 9, 0)._asdict(), "first_seen_at": STAMP,
             "last_changed_at": STAMP}])  # fmt: skip
    engine.dispose()
    check(db_url, "after an event of the upgraded file")


def table_rows(conn: sa.Connection) -> list[Any]:
    return list(conn.execute(sa.select(requests)))


def billed_ids(conn: sa.Connection) -> set[str]:
    return set(conn.execute(sa.select(billing_events.c.request_id)).scalars())


def test_a_copy_keeps_the_rollup(tmp_path: Path, db_url: str) -> None:
    """`mirror copy` from a SQLite file into a new file, or into PostgreSQL."""
    src, dst = str(tmp_path / "src.db"), db_url
    store = Store.open(src)
    try:
        write(store, make_history(seed=7, n=200))
    finally:
        store.close()
    result = CliRunner().invoke(cli, ["copy", "--from", src, "--to", dst, "-q"])
    assert result.exit_code == 0, f"copy failed: {result.output}"
    check(dst, "in the copy")
    engines = [make_engine(u) for u in (src, dst)]
    try:
        both = []
        for engine in engines:
            with engine.connect() as conn:
                both.append(stored_rollup(conn))
        assert both[0] == both[1], "the copy's rollup differs from the source's"
    finally:
        for engine in engines:
            engine.dispose()


def waiting_for_a_lock(conn: sa.Connection) -> bool:
    """Whether a session of this database waits for an advisory lock (each look in its own
    transaction: within one, PostgreSQL shows the same snapshot of its activity)."""
    waiting = conn.exec_driver_sql(
        "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
        "AND wait_event_type = 'Lock' AND wait_event = 'advisory'"
    ).scalar()
    conn.rollback()
    return bool(waiting)


@pytest.mark.parametrize("first", ["request", "event"])
def test_a_request_and_its_event_written_at_once_on_postgresql(pg_url: str, first: str) -> None:
    """Two transactions, neither seeing the other's row when it writes: the ``first`` one
    writes and holds its transaction open while the other writes; the request must still
    end up out of the estimate, which only holds if the second waited for the first."""
    store = Store.open(pg_url)
    rid = "race-1"
    row = request(rid, FLUX, "2026-11-27T10:00:00.000000Z", 200, None)

    def write_request(conn: sa.Connection) -> None:
        store.upsert(conn, [row], payloads=False, billing=True, now=STAMP, history="model")

    def write_event(conn: sa.Connection) -> None:
        store.upsert_billing_events(conn, [event(rid, FLUX, STAMP, 9, 0)], now=STAMP)

    one, other = (
        (write_request, write_event) if first == "request" else (write_event, write_request)
    )
    done = threading.Event()

    def second() -> None:
        with store.engine.begin() as conn:
            other(conn)
        done.set()

    try:
        holding = store.engine.connect()
        tx = holding.begin()
        one(holding)
        worker = threading.Thread(target=second)
        worker.start()
        with store.engine.connect() as watch:
            for _ in range(1200):  # until it waits, or is done (without the lock)
                if done.is_set() or waiting_for_a_lock(watch):
                    break
                done.wait(0.05)
        tx.commit()
        holding.close()
        worker.join(60)
        assert done.is_set(), "the second transaction never finished"
        with store.engine.connect() as conn:
            assert billed_ids(conn) == {rid} and [r.status for r in table_rows(conn)] == [
                "success"
            ], "both rows were written"
            assert stored_rollup(conn) == {}, "a billed request is still counted as unbilled"
    finally:
        store.close()
