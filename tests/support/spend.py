"""What ``mirror cost`` must answer, and what ``unbilled_hourly`` must hold, worked out in
Python request by request and event by event from the stored rows, without mirror's code
(beyond ``usd_text``, the printing of an amount)."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from decimal import ROUND_HALF_EVEN, Decimal
from typing import Any

import sqlalchemy as sa

from mirror.cost import usd_text
from mirror.schema import billing_events, prices, requests, unbilled_hourly
from support.compare import covers


def micro(units: float | None) -> int:
    x = (1.0 if units is None else units) * 1_000_000
    return int(Decimal(x).to_integral_value("ROUND_HALF_UP"))


def table(conn: sa.Connection, t: sa.Table) -> list[dict[str, Any]]:
    return [dict(r._mapping) for r in conn.execute(sa.select(t))]


def expected_rollup(conn: sa.Connection) -> dict[tuple[str, str, str], tuple[int, int]]:
    """What ``unbilled_hourly`` must hold, worked out in Python from the stored rows."""
    billed = {e["request_id"] for e in table(conn, billing_events)}
    out: dict[tuple[str, str, str], tuple[int, int]] = {}
    for r in table(conn, requests):
        if r["status"] == "success" and r["ended_at"] and r["request_id"] not in billed:
            key = (r["endpoint_id"], r["ended_at"][:13] + ":00:00.000000Z", r["history"])
            n, m = out.get(key, (0, 0))
            out[key] = (n + 1, m + micro(r["billable_units"]))
    return out


def stored_rollup(conn: sa.Connection) -> dict[tuple[str, str, str], tuple[int, int]]:
    return {(r["endpoint_id"], r["hour"], r["history"]): (r["requests"], r["units_micro"])
            for r in table(conn, unbilled_hourly)}  # fmt: skip


def matches(endpoint: str, chosen: Sequence[str]) -> bool:
    return not chosen or any(covers(c, endpoint) for c in chosen)


def expected_spend(conn: sa.Connection, by: Sequence[str], since: str | None,
                   until: str | None, chosen: Sequence[str]) -> list[dict[str, Any]]:  # fmt: skip
    """`mirror cost`'s answer worked out request by request and event by event."""

    def within(t: str) -> bool:
        return (since is None or t >= since) and (until is None or t < until)

    def group(day: str, endpoint: str, who: str | None) -> tuple[Any, ...]:
        return tuple({"day": day, "endpoint": endpoint, "key": who}[g] for g in by)

    acc: dict[tuple[Any, ...], dict[str, int]] = defaultdict(lambda: defaultdict(int))
    events = table(conn, billing_events)
    for e in events:
        if within(e["timestamp"]) and matches(e["endpoint_id"], chosen):
            who = e["api_key_id"] or (e["login_username"] and "user:" + e["login_username"])
            slot = acc[group(e["timestamp"][:10], e["endpoint_id"], who or e["auth_method"])]
            slot["events"] += 1
            slot["billed"] += e["cost_estimate_nano_usd"]
    book: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for p in sorted(table(conn, prices), key=lambda p: p["seen_at"]):
        book[p["endpoint_id"]].append(p)
    billed = {e["request_id"] for e in events}
    units: dict[tuple[Any, ...], int] = defaultdict(int)  # (group, endpoint, period) -> micro
    for r in table(conn, requests):
        ended = r["ended_at"]
        if r["status"] != "success" or r["request_id"] in billed or not within(ended):
            continue
        if not matches(r["endpoint_id"], chosen):
            continue
        key = group(ended[:10], r["endpoint_id"], None)
        periods = book.get(r["endpoint_id"])
        if not periods:
            if r["history"] == "model":
                acc[key]["unpriced"] += 1
            continue
        k = max([i for i, p in enumerate(periods) if p["seen_at"] <= ended], default=0)
        if periods[k]["currency"] != "USD":
            acc[key]["unpriced"] += 1
            continue
        acc[key]["estimated"] += 1
        units[key, r["endpoint_id"], k] += micro(r["billable_units"])
    for (key, endpoint, k), m in units.items():
        unit_nano = Decimal(repr(book[endpoint][k]["unit_price"])) * 1_000_000_000
        acc[key]["est"] += int((m * unit_nano / 1_000_000).to_integral_value(ROUND_HALF_EVEN))
    if not acc and not by:
        acc[()]["events"] = 0
    out = []
    for key in sorted(acc, key=lambda k: tuple((v is not None, v) for v in k)):
        s = acc[key]
        total = s["billed"] + s["est"]
        out.append({**dict(zip(by, key, strict=True)), "events": s["events"],
                    "billed_usd": usd_text(s["billed"]), "billed_nano_usd": s["billed"],
                    "estimated": s["estimated"], "estimated_usd": usd_text(s["est"]),
                    "estimated_nano_usd": s["est"], "total_usd": usd_text(total),
                    "total_nano_usd": total, "unpriced": s["unpriced"]})  # fmt: skip
    return out
