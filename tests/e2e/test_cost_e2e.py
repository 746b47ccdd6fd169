"""`mirror sync` keeps what requests cost: the real command against the simulated API over
HTTP, on SQLite and PostgreSQL (docs/cost.md).

The world: a day and a half of calls to three hosted models (billed per request) and to the
account's own app (not billed), prices that change during it, billing events appearing two
minutes after their request ends. The sync's target is the app; the billing events are the
account's, whatever endpoint they are for.
"""

from __future__ import annotations

import json
import signal
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from support.cli import assert_one_line, die, forked, note, run_cli
from support.sim import API_SCOPE_KEY, KEYS, fast_env, listable, static_world

from mirror.db import make_engine
from mirror.schema import billing_events
from mirror.simulator import DEFAULT_KEY, SimulatedAPI
from mirror.simulator.billing import BillingConfig, BillingEvent, EventQuery, PriceBook
from mirror.simulator.generate import MODEL_ENDPOINTS
from mirror.simulator.world import WorldConfig

APP = "acme/app"
ENDPOINTS = {**MODEL_ENDPOINTS, APP: 0.3}
HOURS = 36
EPOCH = datetime(2000, 1, 1, tzinfo=UTC)
#: the mirror's billing events, as the server's are compared with them
EVENT_COLUMNS = ("request_id", "endpoint_id", "timestamp", "cost_estimate_nano_usd",
                 "api_key_id", "login_username")  # fmt: skip


def _world(per_hour: float = 40) -> Any:
    now = (datetime.now(UTC) - timedelta(seconds=2)).replace(microsecond=0)
    return static_world(WorldConfig(), seed=13, hours=HOURS, per_hour=per_hour, now=now,
                        endpoints=list(ENDPOINTS), big_tie_group=0, running=0)  # fmt: skip


def _billing(world: Any) -> BillingConfig:
    now = world.config.clock.now()
    return BillingConfig(prices=PriceBook(changes=[now - timedelta(hours=20)]))


def _server_events(api: SimulatedAPI) -> dict[str, tuple[Any, ...]]:
    """Every billing event the server shows now, as the mirror's rows are compared."""
    now = api.world.config.clock.now()
    out = {}
    for e in api.ledger.select(EventQuery(start=EPOCH, end=now + timedelta(days=1)), now):
        item = e.item(structured=True)
        who = item["auth_method_structured"]
        ts = item["timestamp"].astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        out[e.request_id] = (e.request_id, e.endpoint_id, ts, e.total_nano,
                             who.get("api_key_id"), who.get("login_username"))  # fmt: skip
    return out


def _mirror_events(db: str) -> dict[str, tuple[Any, ...]]:
    engine = make_engine(db)
    try:
        with engine.connect() as conn:
            cols = [billing_events.c[c] for c in EVENT_COLUMNS]  # timestamps as stored text
            rows = conn.execute(sa.select(*cols))
            return {r[0]: tuple(r) for r in rows}
    finally:
        engine.dispose()


def _table(db: str, sql: str) -> list[tuple[Any, ...]]:
    engine = make_engine(db)
    try:
        with engine.connect() as conn:
            return [tuple(r) for r in conn.execute(sa.text(sql))]
    finally:
        engine.dispose()


def _usage_per_day(api: SimulatedAPI) -> dict[tuple[str, str], int]:
    """The server's usage totals per UTC day and endpoint, in nano-USD (its ledger's events
    summed: the simulator's usage lines are exactly these sums)."""
    out: dict[tuple[str, str], int] = {}
    now = api.world.config.clock.now()
    for e in api.ledger.select(EventQuery(start=EPOCH, end=now + timedelta(days=1)), now):
        day = datetime.fromtimestamp(e.timestamp_us / 1e6, UTC).strftime("%Y-%m-%d")
        out[(day, e.endpoint_id)] = out.get((day, e.endpoint_id), 0) + e.total_nano
    return out


def _sync(db: str, env: dict[str, str], *extra: str) -> Any:
    return forked(["sync", "--db", db, "-e", APP, "--since", f"{HOURS + 2}h", *extra], env)


def test_billing_events_prices_and_spend_equal_the_servers(db_url: str) -> None:
    """Events, prices and spend per day equal the server's to the nano-dollar; a second run
    stores nothing twice; fal's usage totals agree, so no difference is reported."""
    world = _world()
    with SimulatedAPI(world, billing=_billing(world)) as api:
        env = fast_env(api.base_url)
        first = _sync(db_url, env)
        assert first.code == 0, f"sync failed: {first.stderr}"
        assert "cost:" not in first.stderr, f"a cost note on a clean run: {first.stderr}"
        server = _server_events(api)
        assert len(server) > 500, "the world should bill hundreds of model calls"
        assert _mirror_events(db_url) == server, (
            "the mirror's billing events differ from the server's"
        )
        api.clear_log()
        again = _sync(db_url, env)
        assert again.code == 0, f"second sync failed: {again.stderr}"
        asked = sorted({c.path.split("/v1")[-1] for c in api.log if "/models/" in c.path})
        assert asked == ["/models/billing-events"], (
            f"prices and usage are checked at most once a day, yet the second run asked {asked}"
        )
        assert "billing: 0 new events, 0 changed" in again.stdout, (
            f"a second run stored events again: {again.stdout}"
        )
        assert _mirror_events(db_url) == server, "the second run changed the billing events"
        now = api.world.config.clock.now()
        expected_prices = sorted(
            (ep, p.unit, p.unit_price, "USD")
            for ep in MODEL_ENDPOINTS
            for p in [api.ledger.price_at(ep, now)]
            if p is not None
        )
        usage = _usage_per_day(api)
    got_prices = sorted(
        _table(db_url, "SELECT endpoint_id, unit, unit_price, currency FROM prices")
    )
    assert got_prices == expected_prices, "the prices kept are not the server's current prices"
    out = forked(
        ["cost", "--db", db_url, "--by", "day,endpoint", "--no-estimate", "-f", "json"], env
    )
    assert out.code == 0, out.stderr
    spent = {(r["day"], r["endpoint"]): r["billed_nano_usd"] for r in json.loads(out.stdout)}
    assert spent == usage, "spend per day and endpoint differs from the server's usage totals"
    stats = forked(["stats", "--db", db_url, "--by", "day,endpoint", "--cost", "-f", "json"], env)
    assert stats.code == 0, stats.stderr
    per_day = {(r["day"], r["endpoint"]): r["cost_nano_usd"] for r in json.loads(stats.stdout)
               if r["cost_nano_usd"] is not None}  # fmt: skip
    assert per_day == usage, "stats --cost per day and endpoint differs from the usage totals"
    by_key = forked(["stats", "--db", db_url, "--by", "key", "--cost", "-f", "csv"], env)
    lines = by_key.stdout.splitlines()
    assert (
        lines[0] == "key,cost_usd,cost_per_request_usd,cost_nano_usd,cost_per_request_nano_usd"
    ), f"stats --cost --by key's columns: {lines[0]}"
    wide = {**env, "COLUMNS": "400"}
    table = forked(["stats", "--db", db_url, "--by", "endpoint", "--cost"], wide)
    header = table.stdout.splitlines()[0].split()
    assert header[-2:] == ["cost_usd", "cost_per_request_usd"], f"the table's columns: {header}"
    refused = forked(["stats", "--db", db_url, "--by", "status", "--cost"], env)
    assert refused.code == 2 and "--cost" in refused.stderr, (refused.code, refused.stderr)
    callers = {line.split(",")[0]: int(line.split(",")[3]) for line in lines[1:]}
    assert sum(callers.values()) == sum(usage.values()) and len(callers) == 3, (
        f"spend by key does not add up to the usage totals over the three callers: {callers}"
    )
    diffs = _table(db_url, "SELECT day FROM usage_checks WHERE usage_nano_usd <> mirror_nano_usd")
    assert diffs == [], f"the usage check found differences where there are none: {diffs}"
    status = forked(["status", "--db", db_url, "-f", "json"], env)
    cost = json.loads(status.stdout)[0]["cost"]
    assert (cost["state"], cost["events"], cost["reason"]) == ("ok", len(server), None), cost


def test_a_key_without_admin_scope_syncs_requests_and_status_says_why(tmp_path: Path) -> None:
    """A key the billing operations refuse (403): exit 0, one note, the requests stored,
    and `mirror status` (table, json, --check) says cost is not mirrored and why; then
    with --no-cost, not a word, no billing call, and the check passes."""
    db = str(tmp_path / "m.db")
    world = _world(per_hour=10)
    with SimulatedAPI(world, keys=KEYS, admin_keys=frozenset({DEFAULT_KEY})) as api:
        env = fast_env(api.base_url, FAL_KEY=API_SCOPE_KEY)
        run = _sync(db, env)
        assert run.code == 0, f"a non-ADMIN key failed the sync: {run.stderr}"
        line = assert_one_line(run.stderr, "note", context="non-ADMIN key")
        assert "ADMIN" in line and "cost is not mirrored" in line, line
        want = {rid for rid, item in listable(world).items() if item["endpoint_id"] == APP}
    got = {r[0] for r in _table(db, f"SELECT request_id FROM requests WHERE endpoint_id = '{APP}'")}
    assert got == want, (
        f"the requests did not sync with a non-ADMIN key ({len(got)} of {len(want)})"
    )
    assert _table(db, "SELECT count(*) FROM billing_events") == [(0,)], "events with no access?"
    table = forked(["status", "--db", db], env)
    assert "cost: NOT being mirrored: the key lacks ADMIN scope" in table.stdout, table.stdout
    js = json.loads(forked(["status", "--db", db, "-f", "json"], env).stdout)
    assert js[0]["cost"]["state"] == "refused" and "ADMIN" in js[0]["cost"]["reason"], js[0]
    check = forked(["status", "--db", db, "--check"], env)
    assert check.code == 1, f"--check passed a mirror whose cost is refused: {check.stdout}"
    assert "cost is not being mirrored" in check.stdout, check.stdout
    with SimulatedAPI(world, keys=KEYS, admin_keys=frozenset({DEFAULT_KEY})) as api:
        env = fast_env(api.base_url, FAL_KEY=API_SCOPE_KEY)
        quiet = _sync(db, env, "--no-cost")
        assert (quiet.code, quiet.stderr) == (0, ""), f"--no-cost still spoke: {quiet.stderr}"
        asked = [c.path for c in api.log if "/models/" in c.path]
        assert asked == [], f"--no-cost still called the cost operations: {asked}"
    check = forked(["status", "--db", db, "--check"], env)
    assert (check.code, check.stdout.startswith("ok: 1 target;")) == (0, True), (
        f"--check failed a mirror whose syncs chose --no-cost: {check.stdout}"
    )


def _age_cost(db: str, by: timedelta) -> str:
    """Make the mirror's cost as old as if it had last been mirrored ``by`` ago: when."""
    engine = make_engine(db)
    old = {"end": _text(datetime.now(UTC) - by)}
    try:
        with engine.begin() as conn:
            conn.execute(sa.text("UPDATE cost_windows SET window_end = :end"), old)
            conn.execute(sa.text("UPDATE cost_state SET ok_at = :end, checked_at = :end"), old)
    finally:
        engine.dispose()
    return old["end"]


def _text(when: datetime) -> str:
    return when.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def test_no_cost_is_not_a_failing_check_and_cost_that_stopped_is_said_plainly(
    tmp_path: Path,
) -> None:
    """Syncs that always ran with --no-cost: status says cost is not mirrored and why,
    --check passes without a word of cost. Syncs that mirrored cost and then only ran with
    --no-cost for days: the check (which, while cost was on, counted it behind) passes,
    and both status and the check's line say since when cost is not mirrored and why."""
    never, stopped = str(tmp_path / "never.db"), str(tmp_path / "stopped.db")
    world = _world(per_hour=10)
    with SimulatedAPI(world, billing=_billing(world)) as api:
        env = fast_env(api.base_url)
        assert _sync(never, env, "--no-cost").code == 0
        assert _sync(stopped, env).code == 0
        events = len(_mirror_events(stopped))
        aged = _age_cost(stopped, timedelta(days=3))
        behind = forked(["status", "--db", stopped, "--check"], env)
        assert behind.code == 1 and "cost: billing events covered only up to" in behind.stdout, (
            f"cost left days behind by syncs that mirror it is a problem: {behind.stdout}"
        )
        assert _sync(stopped, env, "--no-cost").code == 0
    table = forked(["status", "--db", never], env).stdout.splitlines()
    assert table[-1] == "cost: not mirrored: the syncs run with --no-cost", table
    check = forked(["status", "--db", never, "--check"], env)
    assert check.code == 0 and "cost" not in check.stdout, (
        f"--check spoke of cost a user chose not to mirror: {check.code} {check.stdout}"
    )
    since = aged[:16] + "Z"
    said = (
        f"NOT mirrored since {since}: the syncs run with --no-cost "
        f"({events} billing events up to {since} kept)"
    )
    table = forked(["status", "--db", stopped], env).stdout.splitlines()
    assert table[-1] == f"cost: {said}", f"status does not say cost stopped: {table[-1]}"
    check = forked(["status", "--db", stopped, "--check"], env)
    assert check.code == 0, f"--check failed a mirror whose syncs chose --no-cost: {check.stdout}"
    assert check.stdout.strip().endswith(f"; cost {said}"), check.stdout
    js = json.loads(forked(["status", "--db", stopped, "-f", "json"], env).stdout)[0]["cost"]
    assert (js["state"], js["events"], js["ok_at"][:16] + "Z") == ("skipped", events, since), js


def _kill_on_third_page(notes: Path) -> None:
    """In the forked child: small pages, and SIGKILL while the third page is being
    written, after its rows are sent and before they are committed."""
    import mirror.cost_sync
    from mirror.store import Store

    mirror.cost_sync.EVENTS_LIMIT = 40  # type: ignore[misc]
    original = Store.upsert_billing_events
    calls = [0]

    def upsert(self: Store, conn: Any, events: Any, *, now: str) -> Any:
        result = original(self, conn, events, now=now)
        calls[0] += 1
        if calls[0] == 3:
            note(notes, f"killed writing page {calls[0]}")
            die(signal.SIGKILL)
        return result

    Store.upsert_billing_events = upsert  # type: ignore[method-assign]


def test_a_kill_mid_billing_page_loses_no_event(db_url: str, tmp_path: Path) -> None:
    """SIGKILL while a billing page is being written: the rerun from cron stores every
    event the server has, none twice."""
    world = _world(per_hour=15)
    with SimulatedAPI(world, billing=_billing(world)) as api:
        env = fast_env(api.base_url)
        args = ["sync", "--db", db_url, "-e", APP, "--since", f"{HOURS + 2}h"]
        killed = run_cli(args, env, tmp_path, patch=_kill_on_third_page)
        assert killed.killed and killed.notes == ["killed writing page 3"], (
            f"the kill point was not reached: {killed}"
        )
        kept = _mirror_events(db_url)
        assert 0 < len(kept) <= 80, f"two pages of 40 should be committed, not {len(kept)}"
        rerun = _sync(db_url, env)
        assert rerun.code == 0, f"the rerun failed: {rerun.stderr}"
        assert _mirror_events(db_url) == _server_events(api), "events lost or wrong after a kill"


def _negative(event: BillingEvent, **kw: Any) -> dict[str, Any]:
    item = _ORIGINAL_ITEM(event, **kw)
    item["cost_total"] = item["cost_subtotal"] = -item["cost_total"]
    item["cost_estimate_nano_usd"] = -item["cost_estimate_nano_usd"]
    return item


_ORIGINAL_ITEM = BillingEvent.item


@pytest.mark.parametrize("absurd", ["negative", "absurd"])
def test_negative_or_absurd_amounts_are_refused_before_storing(
    absurd: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A server answering a negative or absurdly large charge: one line, exit 1, no event
    stored, the requests kept, and status says the last attempt failed and why."""
    db = str(tmp_path / "m.db")
    world = _world(per_hour=10)

    def huge(event: BillingEvent, **kw: Any) -> dict[str, Any]:
        item = _ORIGINAL_ITEM(event, **kw)
        item["cost_total"] = item["cost_subtotal"] = 10.0**9
        item["cost_discount"] = 0.0
        item["cost_estimate_nano_usd"] = 10**18
        return item

    monkeypatch.setattr(BillingEvent, "item", _negative if absurd == "negative" else huge)
    with SimulatedAPI(world, billing=_billing(world)) as api:
        env = fast_env(api.base_url)
        run = _sync(db, env)
    assert run.code == 1, f"bad amounts were not refused (exit {run.code}): {run.stderr}"
    line = assert_one_line(run.stderr, "bad data from api", context="bad billing amount")
    assert "billing event" in line and "not between 0 and" in line, line
    assert _table(db, "SELECT count(*) FROM billing_events") == [(0,)], "a bad event was stored"
    assert _table(db, "SELECT count(*) FROM requests")[0][0] > 50, "the requests were lost"
    js = json.loads(forked(["status", "--db", db, "-f", "json"], env).stdout)
    assert js[0]["cost"]["state"] == "failed" and "not between" in js[0]["cost"]["reason"], js


def test_a_difference_from_fals_usage_totals_is_reported_not_hidden(tmp_path: Path) -> None:
    """An event the mirror lost (or one that appeared after the day of lookback) makes the
    day's sum differ from fal's usage total: the next day's check says so in one note, in
    `mirror status`, and as a problem of `status --check`, and keeps both figures."""
    db = str(tmp_path / "m.db")
    world = _world(per_hour=15)
    with SimulatedAPI(world, billing=_billing(world)) as api:
        env = fast_env(api.base_url)
        assert _sync(db, env).code == 0
        usage = _usage_per_day(api)
        engine = make_engine(db)
        try:
            with engine.begin() as conn:  # an old event gone, the usage check due again
                e = billing_events.c
                gone = conn.execute(
                    sa.select(e.request_id, e.timestamp, e.endpoint_id, e.cost_estimate_nano_usd)
                    .order_by(e.timestamp)
                    .limit(1)
                ).one()
                conn.execute(billing_events.delete().where(e.request_id == gone.request_id))
                conn.execute(sa.text("UPDATE cost_state SET usage_checked_at = NULL"))
        finally:
            engine.dispose()
        run = _sync(db, env)
    assert run.code == 0, run.stderr
    day = gone.timestamp[:10]
    line = assert_one_line(run.stderr, "note", context="a usage difference")
    assert "differ" in line and f"{day} {gone.endpoint_id}" in line, line
    kept = _table(db, "SELECT day, endpoint_id, usage_nano_usd, mirror_nano_usd FROM usage_checks "
                      "WHERE usage_nano_usd <> mirror_nano_usd")  # fmt: skip
    full = usage[(day, gone.endpoint_id)]
    assert kept == [(day, gone.endpoint_id, full, full - gone.cost_estimate_nano_usd)], kept
    status = forked(["status", "--db", db], env)
    assert "fal's usage totals differ on 1 day(s)" in status.stdout, status.stdout
    check = forked(["status", "--db", db, "--check"], env)
    assert check.code == 1 and "usage totals differ" in check.stdout, check.stdout


@pytest.mark.parametrize(
    ("currency", "refusal"),
    [("US$", "'US$' is not a three-letter ISO 4217 code"),
     ("ZZZ", "'ZZZ' is not a known ISO 4217 currency"),
     ("EUR", None)],
)  # fmt: skip
def test_a_price_in_no_known_currency_is_refused_and_nothing_of_it_stored(
    currency: str, refusal: str | None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The pricing answer names a currency that is malformed or well-formed but no
    currency (ZZZ): one line, exit 1, no price stored, the billing events and requests of
    the run kept. A real currency other than USD (EUR) is kept as it came."""
    from mirror.simulator.billing import Ledger, Price

    original = Ledger.price_at

    def odd(self: Ledger, endpoint_id: str, when: datetime) -> Price | None:
        price = original(self, endpoint_id, when)
        return None if price is None else Price(price.nano, price.unit, currency)

    monkeypatch.setattr(Ledger, "price_at", odd)
    db = str(tmp_path / "m.db")
    world = _world(per_hour=10)
    with SimulatedAPI(world, billing=_billing(world)) as api:
        run = _sync(db, fast_env(api.base_url))
        events = _server_events(api)
    assert _mirror_events(db) == events, "the run's billing events were not kept"
    prices = _table(db, "SELECT DISTINCT currency FROM prices")
    if refusal is None:
        assert run.code == 0, f"a price in {currency} failed the run: {run.stderr}"
        assert prices == [(currency,)], f"the {currency} prices were not kept: {prices}"
        return
    assert run.code == 1, f"currency {currency} was not refused (exit {run.code}): {run.stderr}"
    line = assert_one_line(run.stderr, "bad data from api", context=f"currency {currency}")
    assert refusal in line and line.startswith("mirror: bad data from api: price '"), line
    assert prices == [], f"a price in {currency} was stored"


def test_usage_totals_in_no_known_currency_are_refused_and_nothing_of_them_stored(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """fal's usage answer in a well-formed code that is no currency: one line, exit 1, no
    usage check kept, the billing events and prices of the run kept, and status says the
    last attempt failed and why."""
    import mirror.simulator.cost_ops as cost_ops

    original = cost_ops.usage_lines

    def zzz(events: Any, **kw: Any) -> list[dict[str, Any]]:
        return [{**line, "currency": "ZZZ"} for line in original(events, **kw)]

    monkeypatch.setattr(cost_ops, "usage_lines", zzz)
    db = str(tmp_path / "m.db")
    world = _world(per_hour=10)
    with SimulatedAPI(world, billing=_billing(world)) as api:
        env = fast_env(api.base_url)
        run = _sync(db, env)
        events = _server_events(api)
    assert run.code == 1, f"usage in ZZZ was not refused (exit {run.code}): {run.stderr}"
    line = assert_one_line(run.stderr, "bad data from api", context="usage in ZZZ")
    assert "usage line" in line and "'ZZZ' is not a known ISO 4217 currency" in line, line
    assert _table(db, "SELECT count(*) FROM usage_checks") == [(0,)], "usage in ZZZ was kept"
    assert _mirror_events(db) == events, "the run's billing events were not kept"
    assert _table(db, "SELECT DISTINCT currency FROM prices") == [("USD",)], "prices lost"
    js = json.loads(forked(["status", "--db", db, "-f", "json"], env).stdout)
    cost = js[0]["cost"]
    assert cost["state"] == "failed" and "ZZZ" in cost["reason"], cost
