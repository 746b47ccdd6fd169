"""Storing what requests cost, on SQLite and PostgreSQL: billing events upserted by
request id (exact nano-USD, never twice), price snapshots kept as history, the history
column of requests, and migration 0009 both ways."""

from __future__ import annotations

import sqlalchemy as sa
from alembic import command

from mirror.billing_api import BillingEvent
from mirror.db import alembic_config
from mirror.records import Row, derive_status
from mirror.schema import billing_events, prices, requests
from mirror.store import ROWS_PER_STATEMENT, Store

T1, T2, T3 = (
    "2026-11-28T10:00:00.000000Z",
    "2026-11-28T11:00:00.000000Z",
    "2026-11-28T12:00:00.000000Z",
)


def event(n: int, nano: int = 45_000_000, **change: object) -> BillingEvent:
    e = BillingEvent(
        request_id=f"req-{n:05d}",
        endpoint_id="fal-ai/flux/dev",
        timestamp=f"2026-11-28T09:{n % 60:02d}:00.000000Z",
        output_units=2.0,
        unit_price=0.025,
        percent_discount=10.0,
        cost_subtotal=0.05,
        cost_discount=0.005,
        cost_total=nano / 1e9,
        cost_estimate_nano_usd=nano,
        auth_method="Key 1",
        api_key_id="key-1",
        login_username=None,
    )
    return e._replace(**change)  # type: ignore[arg-type]


def upsert(store: Store, events: list[BillingEvent], now: str = T1) -> tuple[int, int]:
    with store.engine.begin() as conn:
        return tuple(store.upsert_billing_events(conn, events, now=now))  # type: ignore[return-value]


def stored(store: Store) -> list[tuple[object, ...]]:
    """Every stored event with its bookkeeping, through the schema's types."""
    with store.engine.connect() as conn:
        return [
            tuple(r)
            for r in conn.execute(sa.select(billing_events).order_by(billing_events.c.request_id))
        ]


def test_billing_events_are_stored_once_and_changed_only_when_fal_changes_them(db_url) -> None:
    store = Store.open(db_url)
    try:
        a, b = event(1), event(2, login_username="alice", api_key_id=None)
        assert upsert(store, [a, b]) == (2, 0)
        assert stored(store) == [(*a, T1, T1), (*b, T1, T1)]
        assert upsert(store, [b, a], now=T2) == (0, 0), "the same events again changed nothing"
        assert stored(store) == [(*a, T1, T1), (*b, T1, T1)], "unchanged rows keep their stamps"
        corrected = a._replace(cost_total=0.04, cost_estimate_nano_usd=40_000_000)
        assert upsert(store, [corrected, event(3)], now=T3) == (1, 1)
        assert stored(store) == [(*corrected, T1, T3), (*b, T1, T1), (*event(3), T3, T3)]
        # the same id twice in one batch: the last one wins, one row
        assert upsert(store, [event(4, 1), event(4, 2)], now=T3) == (1, 0)
        assert stored(store)[-1] == (*event(4, 2), T3, T3)
        # more events than one statement holds, and sums of them exact to the nano-USD
        many = [event(n, nano=123_456_789_012 + n) for n in range(10, 10 + ROWS_PER_STATEMENT + 37)]
        assert upsert(store, many) == (len(many), 0)
        with store.engine.connect() as conn:
            total = conn.execute(
                sa.select(sa.func.sum(billing_events.c.cost_estimate_nano_usd)).where(
                    billing_events.c.request_id >= "req-00010"
                )
            ).scalar()
        assert total == sum(e.cost_estimate_nano_usd for e in many)
        # an integer on SQLite, a numeric (Decimal) on PostgreSQL: exact either way
        assert not isinstance(total, float), "the sum of nano-USD came back as a float"
    finally:
        store.close()


def test_an_event_for_a_request_never_seen_is_kept_and_the_largest_amounts_fit(db_url) -> None:
    store = Store.open(db_url)
    try:
        biggest = event(1, nano=100_000 * 10**9, cost_subtotal=100_000.0, cost_discount=0.0)
        assert upsert(store, [biggest]) == (1, 0)
        with store.engine.connect() as conn:
            assert conn.execute(sa.select(sa.func.count()).select_from(requests)).scalar() == 0
        assert stored(store) == [(*biggest, T1, T1)]
    finally:
        store.close()


def snapshot(store: Store, quotes: list[tuple[str, str, float, str]], at: str) -> int:
    with store.engine.begin() as conn:
        return store.record_prices(conn, quotes, at)


def price_rows(store: Store) -> list[tuple[object, ...]]:
    with store.engine.connect() as conn:
        return [tuple(r) for r in conn.execute(sa.select(prices).order_by(*prices.primary_key))]


FLUX, WHISPER = "fal-ai/flux/dev", "fal-ai/whisper"


def test_prices_are_a_history_with_a_row_per_change(db_url) -> None:
    store = Store.open(db_url)
    try:
        assert (
            snapshot(store, [(FLUX, "image", 0.025, "USD"), (WHISPER, "minute", 0.0011, "USD")], T1)
            == 2
        )
        assert (
            snapshot(store, [(FLUX, "image", 0.025, "USD"), (WHISPER, "minute", 0.0011, "USD")], T2)
            == 0
        )
        assert price_rows(store) == [
            (FLUX, T1, "image", 0.025, "USD", T2),
            (WHISPER, T1, "minute", 0.0011, "USD", T2),
        ], "an unchanged price only moves its checked_at"
        assert snapshot(store, [(FLUX, "image", 0.03, "USD")], T3) == 1
        assert snapshot(store, [(WHISPER, "minute", 0.0011, "EUR")], T3) == 1
        assert price_rows(store) == [
            (FLUX, T1, "image", 0.025, "USD", T2),
            (FLUX, T3, "image", 0.03, "USD", T3),
            (WHISPER, T1, "minute", 0.0011, "USD", T2),
            (WHISPER, T3, "minute", 0.0011, "EUR", T3),
        ], "a change is a new row; the old price stays"
        # a clock gone back: the new price still comes after the one known
        assert snapshot(store, [(FLUX, "image", 0.02, "USD")], T1) == 1
        assert price_rows(store)[2] == (FLUX, "2026-11-28T12:00:00.000001Z", "image", 0.02, "USD",
                                        "2026-11-28T12:00:00.000001Z")  # fmt: skip
        assert snapshot(store, [], T3) == 0
    finally:
        store.close()


def test_requests_say_which_history_they_are_of(db_url) -> None:
    store = Store.open(db_url)
    try:
        row = Row("r1", "acme/app", None, T1, T1, T2, 200, 3600.0, None, None, None,
                  derive_status(T2, 200))  # fmt: skip
        with store.engine.begin() as conn:
            store.upsert(conn, [row], payloads=True, billing=True, now=T3)
        with store.engine.connect() as conn:
            assert conn.execute(sa.select(requests.c.history)).all() == [("serverless",)]
        with store.engine.begin() as conn:
            conn.execute(requests.update().values(history="model"))
        failed = None
        try:
            with store.engine.begin() as conn:
                conn.execute(requests.update().values(history="other"))
        except sa.exc.IntegrityError as e:
            failed = e
        assert failed is not None, "a history other than serverless or model was stored"
    finally:
        store.close()


def test_migration_0009_down_and_up_keeps_the_requests(db_url) -> None:
    store = Store.open(db_url)
    row = Row("r1", "acme/app", None, T1, T1, T2, 200, 3600.0, 1.5, '{"p": 1}', None,
              derive_status(T2, 200))  # fmt: skip
    with store.engine.begin() as conn:
        store.upsert(conn, [row], payloads=True, billing=True, now=T3)
    upsert(store, [event(1)])
    snapshot(store, [(FLUX, "image", 0.025, "USD")], T1)
    with store.engine.begin() as conn:
        command.downgrade(alembic_config(conn), "0006")
    with store.engine.connect() as conn:
        names = set(sa.inspect(conn).get_table_names())
        cols = [c["name"] for c in sa.inspect(conn).get_columns("requests")]
        kept = conn.exec_driver_sql("SELECT request_id, billable_units FROM requests").all()
    assert not {"billing_events", "prices"} & names
    assert "history" not in cols
    assert kept == [("r1", 1.5)]
    store.close()
    store = Store.open(db_url)  # upgrades again
    try:
        with store.engine.connect() as conn:
            again = conn.execute(sa.select(requests.c.request_id, requests.c.history)).all()
        assert again == [("r1", "serverless")]
        assert stored(store) == [] and price_rows(store) == []
    finally:
        store.close()
