"""Pages over the body cap (mirror.walk): a walk asks for its window again in smaller pages,
from the first page, halving the limit down to 1; a request too big for a page of one is
read without its payloads and the walk goes on past it; the page size a walk ended with is
learned for its window, and later walks there start with it.

The server here (an ``httpx.MockTransport``) pages as fal does: the cursor is the page
number (base64), the offset ``(page - 1) * limit``, and every answer declares its length.
"""

from __future__ import annotations

import base64
import logging
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import orjson
import pytest
import sqlalchemy as sa

from mirror import oversize
from mirror.api import FalClient, RetryPolicy
from mirror.errors import BadDataError
from mirror.oversize import Stretch, TooBig
from mirror.records import Row
from mirror.schema import oversized_requests
from mirror.store import Store
from mirror.timeparse import api_param
from mirror.walk import Lister, Notes, PageLimits, Stop, WindowWalk

T0 = datetime(2025, 1, 1, tzinfo=UTC)
T1 = T0 + timedelta(hours=1)
TARGET = "acme/app"
log = logging.getLogger("mirror.test")


def item(n: int, output_bytes: int) -> dict[str, Any]:
    at = api_param(T0 + timedelta(seconds=n + 1))
    return {"request_id": f"r{n:03d}", "endpoint_id": TARGET, "runner_id": None,
            "sent_at": at, "started_at": at, "ended_at": at, "status_code": 200,
            "duration": 0.0, "json_input": {"n": n},
            "json_output": {"text": "x" * output_bytes}}  # fmt: skip


def fal(items: list[dict[str, Any]], seen: list[httpx.Request], *, metadata_bytes: int = 0):
    """The list call over ``items``, paged by page number. ``metadata_bytes``: padding in
    every item's own fields, so that even a page without payloads can be too big."""

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        p = request.url.params
        limit = int(p["limit"])
        page = int(base64.b64decode(p.get("cursor", "MQ==")))
        rows = items
        if "request_id" in p:
            rows = [it for it in items if it["request_id"] == p["request_id"]]
        payloads = "payloads" in p.get_list("expand")
        chunk = rows[(page - 1) * limit : page * limit]
        padding = {"runner_id": "p" * metadata_bytes or None}
        shown = [
            {k: v for k, v in it.items() if payloads or not k.startswith("json_")} | padding
            for it in chunk
        ]
        more = page * limit < len(rows)
        nxt = base64.b64encode(str(page + 1).encode()).decode() if more else None
        body = {"items": shown, "next_cursor": nxt, "has_more": more}
        return httpx.Response(200, content=orjson.dumps(body))

    return httpx.MockTransport(handler)


def lister(transport: httpx.MockTransport, cap: int, *, payloads: bool = True,
           limits: PageLimits | None = None, notes: Notes | None = None) -> Lister:  # fmt: skip
    client = FalClient(httpx.Client(transport=transport), "k:s",
                       base_url="https://api.example.test/v1",
                       retry=RetryPolicy(attempts=1, max_body=cap))  # fmt: skip
    return Lister(client, payloads=payloads, billing=False, stop=Stop(), notes=notes or Notes(log),
                  without_billing="", limits=limits or PageLimits())  # fmt: skip


def asked(seen: list[httpx.Request]) -> list[tuple[int, int, bool]]:
    """(limit, page number, with payloads) of each call, in order."""
    return [
        (int(r.url.params["limit"]), int(base64.b64decode(r.url.params.get("cursor", "MQ=="))),
         "payloads" in r.url.params.get_list("expand"))
        for r in seen
    ]  # fmt: skip


def test_a_page_over_the_cap_is_walked_again_in_half_pages_from_the_first() -> None:
    """Rows 100-199 are big: the second page of 100 is over the cap, pages of 50 are not.
    The walk starts again from the first page in pages of 50 (the cursor numbers pages, so
    the old one cannot be followed), gets to its end, and teaches the window's limit."""
    items = [item(n, 1_000 if 100 <= n < 200 else 10) for n in range(250)]
    seen: list[httpx.Request] = []
    pages = lister(fal(items, seen), cap=100_000)
    walk = WindowWalk(pages, TARGET, T0, T1)
    steps = [(s.number, len(s.page.rows), s.too_big) for s in walk.pages()]
    assert asked(seen) == [(100, 1, True), (100, 2, True),
                           *((50, n, True) for n in range(1, 6))], "not halved from the first page"  # fmt: skip
    assert steps == [(1, 100, ()), *((n, 50, ()) for n in range(1, 6))]
    assert (walk.limit, walk.calls, walk.too_big, walk.repeated) == (50, 7, [], False), (
        "the rows of the first pass read again are no repeat"
    )
    assert pages.limits.learned == [Stretch(TARGET, T0, T1, 50)]


def test_a_request_too_big_for_a_page_of_one_is_read_without_payloads() -> None:
    """r012's output alone is over the cap. The limit halves to 1; its page of one is asked
    for again without payloads, at the same cursor; the walk goes on past it, every other
    request read with its payloads, and it is said once."""
    items = [item(n, 30_000 if n == 12 else 100) for n in range(30)]
    seen: list[httpx.Request] = []
    notes = Notes(log)
    pages = lister(fal(items, seen), cap=20_000, notes=notes)
    walk = WindowWalk(pages, TARGET, T0, T1)
    steps = list(walk.pages())
    first_pages = [limit for limit, page, _ in asked(seen) if page == 1]
    assert first_pages == [100, 50, 25, 12, 6, 3, 1], "the limit does not halve down to 1"
    without = [a for a in asked(seen) if not a[2]]
    assert without == [(1, 13, False)], "not asked once without payloads, at r012's cursor"
    rows = {r.request_id: r for s in steps for r in s.page.rows}
    assert sorted(rows) == [it["request_id"] for it in items]
    big = [b for s in steps for b in s.too_big]
    assert [(b.row.request_id, b.cap) for b in big] == [("r012", 20_000)]
    assert big[0].page_bytes is not None and big[0].page_bytes > 20_000, big[0]
    assert (rows["r012"].json_input, rows["r012"].json_output) == (None, None)
    assert all(r.json_output is not None for rid, r in rows.items() if rid != "r012")
    assert walk.too_big == big and pages.limits.learned == [Stretch(TARGET, T0, T1, 1)]
    assert len(notes.texts) == 1 and "acme/app" in notes.texts[0], notes.texts


def test_a_walk_starts_with_the_limit_learned_for_its_stretch() -> None:
    items = [item(n, 1_000) for n in range(60)]
    seen: list[httpx.Request] = []
    known = PageLimits([Stretch(TARGET, T0 - timedelta(hours=1), T0 + timedelta(minutes=1), 25)])
    walk = WindowWalk(lister(fal(items, seen), cap=100_000, limits=known), TARGET, T0, T1)
    assert sum(len(s.page.rows) for s in walk.pages()) == 60
    assert asked(seen) == [(25, 1, True), (25, 2, True), (25, 3, True)]
    assert known.learned == [], "nothing new was learned"


def test_page_limits_start_small_only_where_a_stretch_overlaps_and_cut_at_its_bounds() -> None:
    m = timedelta(minutes=1)
    limits = PageLimits([Stretch(TARGET, T0 + 10 * m, T0 + 20 * m, 12),
                         Stretch(TARGET, T0 + 15 * m, T0 + 30 * m, 50),
                         Stretch("other/app", T0, T1, 1)])  # fmt: skip
    assert [limits.limit(TARGET, a, b) for a, b in
            [(T0, T0 + 10 * m), (T0, T0 + 11 * m), (T0 + 25 * m, T1), (T0 + 30 * m, T1)]] == [
        100, 12, 50, 100]  # fmt: skip
    assert limits.cut(TARGET, T0, T1) == [(T0, T0 + 10 * m), (T0 + 10 * m, T0 + 15 * m),
                                          (T0 + 15 * m, T0 + 20 * m), (T0 + 20 * m, T0 + 30 * m),
                                          (T0 + 30 * m, T1)]  # fmt: skip
    assert limits.cut(TARGET, T0 + 11 * m, T0 + 14 * m) == [(T0 + 11 * m, T0 + 14 * m)]


def test_without_payloads_a_request_too_big_for_a_page_of_one_is_bad_data() -> None:
    """Nothing is left to leave out: the run fails, as it does for any bad page."""
    items = [item(n, 10) for n in range(5)]
    seen: list[httpx.Request] = []
    pages = lister(fal(items, seen, metadata_bytes=5_000), cap=4_000, payloads=False)
    with pytest.raises(BadDataError, match="cap"):
        list(WindowWalk(pages, TARGET, T0, T1).pages())
    assert [limit for limit, _, _ in asked(seen)] == [100, 50, 25, 12, 6, 3, 1]


def test_a_page_of_one_over_the_cap_even_without_payloads_is_bad_data() -> None:
    items = [item(n, 10) for n in range(5)]
    seen: list[httpx.Request] = []
    pages = lister(fal(items, seen, metadata_bytes=5_000), cap=4_000)
    with pytest.raises(BadDataError, match="over the 4000-byte cap even without payloads"):
        list(WindowWalk(pages, TARGET, T0, T1).pages())
    assert asked(seen)[-2:] == [(1, 1, True), (1, 1, False)]


def test_a_request_looked_up_by_id_too_big_is_read_without_payloads() -> None:
    items = [item(n, 30_000 if n == 2 else 10) for n in range(5)]
    seen: list[httpx.Request] = []
    pages = lister(fal(items, seen), cap=20_000)
    rows, _, calls, big = pages.look_up(TARGET, "r002", T0, T1)
    assert [(r.request_id, r.json_output) for r in rows] == [("r002", None)]
    assert (calls, [b.row for b in big]) == (2, rows)
    assert [a[2] for a in asked(seen)] == [True, False]
    rows, _, calls, big = pages.look_up(TARGET, "r001", T0, T1)
    assert (len(rows), calls, big) == (1, 1, ()) and rows[0].json_output is not None


def test_what_a_sync_keeps_of_them_on_either_backend(db_url: str) -> None:
    """Requests read without payloads: recorded once, seen again updates when and how big;
    stretches: a stretch learned again keeps its smallest limit, and each target reads
    back only its own."""
    store = Store.open(db_url)
    try:
        big = TooBig(Row("r1", TARGET, None, "2025-01-01T00:00:01.000000Z", None, None, None,
                         None, None, None, None, "unfinished"), None, 1_000)  # fmt: skip
        for now, seen in (("2025-01-02T00:00:00.000000Z", big),
                          ("2025-01-03T00:00:00.000000Z", replace(big, page_bytes=5_000))):  # fmt: skip
            with store.engine.begin() as conn:
                oversize.record(conn, [seen, seen], now)
        m = timedelta(minutes=1)
        with store.engine.begin() as conn:
            oversize.save_stretches(conn, [Stretch(TARGET, T0, T0 + m, 12),
                                           Stretch("other/app", T0, T1, 3)], "2025-01-02T00:00:00.000000Z")  # fmt: skip
            oversize.save_stretches(conn, [Stretch(TARGET, T0, T0 + m, 50),
                                           Stretch(TARGET, T0, T0 + m, 6)], "2025-01-03T00:00:00.000000Z")  # fmt: skip
        with store.engine.connect() as conn:
            rows = [tuple(r) for r in conn.execute(sa.select(oversized_requests))]
            kept = oversize.load_stretches(conn, [TARGET])
    finally:
        store.close()
    assert rows == [("r1", TARGET, "2025-01-01T00:00:01.000000Z", 5_000, 1_000,
                     "2025-01-02T00:00:00.000000Z", "2025-01-03T00:00:00.000000Z")]  # fmt: skip
    assert kept == [Stretch(TARGET, T0, T0 + m, 6)]
