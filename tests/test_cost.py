"""`mirror cost`: spend by day, endpoint and key, exact where fal billed, estimated (and
said so) where it did not, on SQLite and PostgreSQL; the command's output and bad flags;
and, against the simulated API, spend per day equal to fal's usage totals to the nano-USD.
"""

from __future__ import annotations

import csv
import io
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
from click.testing import CliRunner
from support.sim import NOW, static_world

from mirror.api import FalClient
from mirror.billing_api import BillingEvent, fetch_prices, fetch_usage, list_billing_events
from mirror.cli import cli
from mirror.cost import CostFilters, spend, usage_differences, usd_text
from mirror.records import Row, derive_status
from mirror.schema import billing_events, requests
from mirror.simulator import SimulatedAPI, WorldConfig
from mirror.simulator.billing import BillingConfig, PriceBook
from mirror.simulator.generate import MODEL_ENDPOINTS
from mirror.store import Store
from mirror.timeparse import to_text

FLUX, WHISPER = "fal-ai/flux/dev", "fal-ai/whisper"
D1, D2 = "2026-11-27", "2026-11-28"


def ts(day: str, hour: int) -> str:
    return f"{day}T{hour:02d}:00:00.000000Z"


def ev(rid: str, endpoint: str, at: str, nano: int, key: str | None = None,
       user: str | None = None, label: str | None = "Key") -> BillingEvent:  # fmt: skip
    return BillingEvent(rid, endpoint, at, 1.0, None, None, nano / 1e9, 0.0, nano / 1e9, nano,
                        label, key, user)  # fmt: skip


def req(rid: str, endpoint: str, ended: str | None, code: int = 200,
        units: float | None = None) -> Row:  # fmt: skip
    return Row(rid, endpoint, None, ts(D1, 0), ts(D1, 0), ended, code if ended else None, 1.0,
               units, None, None, derive_status(ended, code if ended else None))  # fmt: skip


def fill(store: Store) -> None:
    with store.engine.begin() as conn:
        store.upsert(
            conn,
            [
                req("r1", FLUX, ts(D1, 10)),
                req("r2", FLUX, ts(D2, 10)),
                req("r3", FLUX, ts(D1, 9)),  # before the first price seen: priced at it
                req("r4", FLUX, ts(D2, 9), units=2.0),
                req("r5", FLUX, ts(D2, 9), code=500),  # failed: never billed
                req("r6", WHISPER, ts(D2, 8)),  # priced in EUR only
                req("r7", "fal-ai/unpriced", ts(D2, 7)),
                req("r8", "acme/app", ts(D2, 6)),  # a serverless app: not part of spend
                req("r10", FLUX, None),  # still running
            ],
            payloads=True,
            billing=True,
            now=ts(D2, 12),
        )
        conn.execute(requests.update().where(requests.c.endpoint_id != "acme/app")
                     .values(history="model"))  # fmt: skip
        store.upsert_billing_events(
            conn,
            [
                ev("r1", FLUX, ts(D1, 10), 45_000_000, key="key-1"),
                ev("r2", FLUX, ts(D2, 10), 30_000_000, user="alice"),
                ev("r9", "fal-ai/other", ts(D2, 11), 7, label="User token"),  # request not seen
            ],
            now=ts(D2, 12),
        )
        store.record_prices(conn, [(FLUX, "image", 0.025, "USD"), (WHISPER, "minute", 0.0011, "EUR")],
                            ts(D1, 12))  # fmt: skip
        store.record_prices(conn, [(FLUX, "image", 0.03, "USD")], ts(D2, 0))


def row(events: int = 0, billed: int = 0, estimated: int = 0, est: int = 0, unpriced: int = 0,
        **keys: Any) -> dict[str, Any]:  # fmt: skip
    return {**keys, "events": events, "billed_usd": usd_text(billed), "billed_nano_usd": billed,
            "estimated": estimated, "estimated_usd": usd_text(est), "estimated_nano_usd": est,
            "total_usd": usd_text(billed + est), "total_nano_usd": billed + est,
            "unpriced": unpriced}  # fmt: skip


@pytest.fixture
def store(db_url: str) -> Any:
    s = Store.open(db_url)
    fill(s)
    yield s
    s.close()


def answer(store: Store, **kw: Any) -> list[dict[str, Any]]:
    by = kw.pop("by", ())
    estimate = kw.pop("estimate", True)
    with store.engine.connect() as conn:
        return spend(conn, CostFilters(**kw), by=by, estimate=estimate)


def test_spend_is_billed_exactly_and_estimated_apart(store: Store) -> None:
    assert answer(store) == [row(3, 75_000_007, 2, 85_000_000, 2)]
    assert answer(store, by=["day"]) == [
        row(1, 45_000_000, 1, 25_000_000, day=D1),
        row(2, 30_000_007, 1, 60_000_000, 2, day=D2),
    ], "r3 is priced at the first price seen, r4 at the price of its day for its 2 units"
    assert answer(store, by=["endpoint"]) == [
        row(2, 75_000_000, 2, 85_000_000, endpoint=FLUX),
        row(1, 7, endpoint="fal-ai/other"),
        row(unpriced=1, endpoint="fal-ai/unpriced"),
        row(unpriced=1, endpoint=WHISPER),
    ]
    assert answer(store, by=["key", "day"]) == [
        row(0, 0, 1, 25_000_000, key=None, day=D1),
        row(0, 0, 1, 60_000_000, 2, key=None, day=D2),
        row(1, 7, key="User token", day=D2),
        row(1, 45_000_000, key="key-1", day=D1),
        row(1, 30_000_000, key="user:alice", day=D2),
    ]


def test_filters_narrow_both_parts(store: Store) -> None:
    since = datetime(2026, 11, 28, tzinfo=UTC)
    assert answer(store, since=since) == [row(2, 30_000_007, 1, 60_000_000, 2)]
    assert answer(store, until=since) == [row(1, 45_000_000, 1, 25_000_000)]
    assert answer(store, endpoints=("fal-ai/flux",), by=["endpoint"]) == [
        row(2, 75_000_000, 2, 85_000_000, endpoint=FLUX)
    ], "an app id covers its routes"
    assert answer(store, estimate=False, by=["day"]) == [
        row(1, 45_000_000, day=D1),
        row(2, 30_000_007, day=D2),
    ]
    assert answer(store, since=since + timedelta(days=5)) == [row()], "nothing: one zero row"
    assert answer(store, since=since + timedelta(days=5), by=["day"]) == []


def test_sums_stay_exact_where_floating_point_drifts(tmp_path: Path) -> None:
    store = Store.open(str(tmp_path / "m.db"))
    try:
        events = [ev(f"r{n}", FLUX, ts(D1, n % 24), 100_000_000) for n in range(10_000)]
        with store.engine.begin() as conn:
            store.upsert_billing_events(conn, events, now=ts(D2, 0))
        assert sum(e.cost_total for e in events) != 1000.0, "the float sum should drift here"
        (got,) = answer(store)
        assert (got["billed_usd"], got["billed_nano_usd"]) == ("1000.00", 10**12)
    finally:
        store.close()


def test_usd_text_is_exact() -> None:
    assert [usd_text(n) for n in (0, 7, 45_000_000, 10**9, 1_234_567_890_123, -5)] == [
        "0.00", "0.000000007", "0.045", "1.00", "1234.567890123", "-0.000000005"]  # fmt: skip


# --------------------------------------------------------------------------- the command


@pytest.fixture
def db(tmp_path: Path) -> str:
    path = str(tmp_path / "m.db")
    s = Store.open(path)
    fill(s)
    s.close()
    return path


def run(*args: str) -> Any:
    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


def test_the_command_prints_every_format(db: str) -> None:
    table = run("cost", "--db", db, "--by", "day")
    assert table.exit_code == 0, table.output
    assert table.stdout.splitlines() == [
        "day         events  billed_usd   estimated  estimated_usd  total_usd    unpriced",
        "----------  ------  -----------  ---------  -------------  -----------  --------",
        "2026-11-27       1  0.045                1  0.025          0.07                0",
        "2026-11-28       2  0.030000007          1  0.06           0.090000007         2",
    ]
    assert table.stderr.splitlines() == [
        "mirror: note: estimated_usd is an estimate: 2 requests without a billing event, "
        "priced at the price seen for their time",
        "mirror: note: 2 model requests without a billing event have no price in USD",
    ]
    js = run("cost", "--db", db, "--by", "day", "--format", "json")
    assert json.loads(js.stdout) == [
        row(1, 45_000_000, 1, 25_000_000, day=D1),
        row(2, 30_000_007, 1, 60_000_000, 2, day=D2),
    ]
    assert js.stderr == "", "programs get no notes: the columns say it"
    lines = run("cost", "--db", db, "-b", "endpoint,key", "-e", FLUX, "-f", "jsonl").stdout
    assert [json.loads(line) for line in lines.splitlines()] == [
        row(0, 0, 2, 85_000_000, endpoint=FLUX, key=None),
        row(1, 45_000_000, endpoint=FLUX, key="key-1"),
        row(1, 30_000_000, endpoint=FLUX, key="user:alice"),
    ]
    rows = list(csv.DictReader(io.StringIO(run("cost", "--db", db, "-f", "csv").stdout)))
    assert rows == [{k: str(v) for k, v in row(3, 75_000_007, 2, 85_000_000, 2).items()}]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--by", "hour"], "cannot group spend by 'hour'; use day, endpoint, key"),
        (["--by", "day,day"], "each --by group may be named once"),
        (["--since", "yesterday-ish"], "'yesterday-ish' is not a time"),
        (["--since", "2026-11-28", "--until", "2026-11-27"], "--until (2026-11-27T00:00:00Z) must be after"),
        (["--endpoint", "has space"], "'has space' is not an endpoint id"),
        (["--format", "xml"], "'xml' is not one of"),
    ],
)  # fmt: skip
def test_bad_flags_are_one_line_and_exit_2(db: str, args: list[str], message: str) -> None:
    result = run("cost", "--db", db, *args)
    assert result.exit_code == 2, result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and message in lines[0], result.stderr
    assert "Traceback" not in result.output


def test_a_file_that_is_not_a_mirror_is_one_line_and_exit_1(tmp_path: Path) -> None:
    bad = tmp_path / "notes.db"
    bad.write_text("not a database")
    result = run("cost", "--db", str(bad))
    assert result.exit_code == 1, result.output
    assert len(result.stderr.strip().splitlines()) == 1 and "mirror:" in result.stderr


# --------------------------------------------------------------------------- against fal's figures


def test_spend_per_day_equals_the_usage_totals_and_a_difference_is_reported(db_url: str) -> None:
    """Billing events walked from the simulated API into the store, summed by `mirror cost`
    per day and endpoint, equal what /models/usage says for the same range, to the
    nano-USD; an event lost from the mirror shows as a difference where it was. Prices
    snapshotted on both sides of a price change are two rows each."""
    now = NOW
    world = static_world(WorldConfig(), seed=6, hours=30, per_hour=40, now=now,
                         endpoints=list(MODEL_ENDPOINTS), big_tie_group=0)  # fmt: skip
    billing = BillingConfig(prices=PriceBook(changes=[now - timedelta(hours=10)]),
                            discounts={FLUX: 12})  # fmt: skip
    start, end = now - timedelta(hours=30), now
    store = Store.open(db_url)
    with SimulatedAPI(world, billing=billing) as api:
        client = FalClient(httpx.Client(), "sim-key-id:sim-key-secret", base_url=api.base_url)
        cursor = None
        with store.engine.begin() as conn:
            while True:
                page = list_billing_events(client, start=start, end=end, cursor=cursor, limit=500)
                store.upsert_billing_events(conn, page.events, now=to_text(now))
                cursor = page.next_cursor
                if cursor is None:
                    break
        usage: dict[tuple[str, str], int] = {}
        lines = fetch_usage(client, start=start, end=end)
        for line in lines:
            key = (line.bucket[:10], line.endpoint_id)
            usage[key] = usage.get(key, 0) + line.cost_total_nano
        for at in (now - timedelta(hours=20), now):
            world.config.clock.set(at)  # type: ignore[attr-defined]
            with store.engine.begin() as conn:
                store.record_prices(conn, fetch_prices(client, MODEL_ENDPOINTS), to_text(at))
    try:
        with store.engine.connect() as conn:
            got = spend(conn, CostFilters(since=start, until=end), by=["day", "endpoint"])
            n_prices = conn.execute(sa.text("SELECT count(*) FROM prices")).scalar()
        assert {(r["day"], r["endpoint"]): r["billed_nano_usd"] for r in got} == usage
        whole = CostFilters(since=start, until=end)
        with store.engine.connect() as conn:
            assert usage_differences(conn, lines, whole) == []
        e = billing_events.c
        with store.engine.begin() as conn:  # an event lost: the check must say where
            gone = conn.execute(
                sa.select(e.request_id, e.timestamp, e.endpoint_id, e.cost_estimate_nano_usd)
                .order_by(e.request_id)
                .limit(1)
            ).one()
            conn.execute(billing_events.delete().where(e.request_id == gone.request_id))
        key = (gone.timestamp[:10], gone.endpoint_id)
        with store.engine.connect() as conn:
            assert usage_differences(conn, lines, whole) == [
                {"day": key[0], "endpoint": key[1], "mirror_nano_usd": usage[key] - gone[3],
                 "usage_nano_usd": usage[key], "difference_nano_usd": -gone[3]}
            ]  # fmt: skip
        assert len(usage) >= 4, "the range should cover two days of three models"
        assert all(r["estimated"] == 0 for r in got), "no request is stored, none is estimated"
        assert n_prices == 2 * len(MODEL_ENDPOINTS), "a price change is a second row each"
    finally:
        store.close()
