"""A cursor that never ends: sync's and verify's walks refuse it after a few pages.

The server here (an ``httpx.MockTransport``) answers every call with a new cursor, either on
empty pages or on pages of new rows. A walk must call that bad data after a handful of
empty pages in a row, or once it has taken more pages than its window can plausibly hold,
without first splitting the window down to one-second pieces; and it must not record the
window complete. The server gives up after ``GIVE_UP`` calls (a last page without cursor),
so a walk without these rules ends, wrongly, as a success instead of running for hours.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import orjson
import pytest
from support.rows import add_targets

from mirror.api import FalClient, RetryPolicy
from mirror.errors import BadDataError
from mirror.store import Store
from mirror.sync import SyncOptions, sync
from mirror.timeparse import to_text
from mirror.verify import verify

T0 = datetime(2026, 11, 28, 12, tzinfo=UTC)
TARGET = "acme/app"
#: calls after which the server stops (with a last page), so a failing test ends quickly
GIVE_UP = 400
#: "a small number": no walk of a one-second window may take more calls than this
FEW = 200


def endless(kind: str, calls: list[httpx.Request]) -> Callable[[httpx.Request], httpx.Response]:
    """Pages with a new cursor every time: ``empty`` pages, or ``full`` pages of new rows."""
    ids = itertools.count()

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(request)
        items: list[dict[str, Any]] = []
        if kind == "full":
            at = to_text(T0 + timedelta(seconds=0.5))
            items = [
                {"request_id": f"r{next(ids)}", "endpoint_id": TARGET, "sent_at": at,
                 "started_at": at, "ended_at": at, "status_code": 200, "duration": 0.0}
                for _ in range(100)
            ]  # fmt: skip
        more = len(calls) < GIVE_UP
        body = {"items": items, "next_cursor": f"c{len(calls)}" if more else None,
                "has_more": more}  # fmt: skip
        return httpx.Response(200, content=orjson.dumps(body))

    return handler


def client(handler: Callable[[httpx.Request], httpx.Response]) -> FalClient:
    http = httpx.Client(transport=httpx.MockTransport(handler))
    return FalClient(http, "k:s", base_url="https://api.example.test/v1",
                     retry=RetryPolicy(attempts=1), sleep=lambda _s: None)  # fmt: skip


def outcome(run: Callable[[], Any]) -> BaseException | None:
    try:
        run()
    except Exception as e:  # the test judges whatever it was
        return e
    return None


@pytest.mark.parametrize(
    ("kind", "length"),
    [
        ("empty", timedelta(seconds=1)),
        ("empty", timedelta(hours=6)),  # not split down to seconds on its empty pages
        ("full", timedelta(seconds=1)),  # 10,000 requests in one second is not plausible
    ],
)
def test_sync_refuses_a_cursor_that_never_ends(tmp_path, kind: str, length: timedelta) -> None:
    calls: list[httpx.Request] = []
    store = Store.open(str(tmp_path / "m.db"))
    opts = SyncOptions(targets=[TARGET], since=T0, until=T0 + length, recheck=False,
                       max_concurrency=1, cost=False)  # fmt: skip
    try:
        err = outcome(lambda: sync(store, client(endless(kind, calls)), opts,
                                   clock=lambda: T0 + length + timedelta(hours=1)))  # fmt: skip
        completed = store.completed(TARGET)
    finally:
        store.close()
    where = f"{kind} pages, a {length} window"
    assert isinstance(err, BadDataError), (
        f"{where}: the sync followed the cursor for {len(calls)} calls and ended with {err!r}, "
        "not bad data"
    )
    assert len(calls) <= FEW, f"{where}: refused only after {len(calls)} calls: {err}"
    if kind == "empty":
        assert "empty" in str(err), f"{where}: the message does not say what was wrong: {err}"
    assert completed == [], f"{where}: recorded complete: {completed}"


@pytest.mark.parametrize("kind", ["empty", "full"])
def test_verify_refuses_a_cursor_that_never_ends(tmp_path, kind: str) -> None:
    """verify walks completed hours with the same rules (a one-second hour, for ``full``)."""
    calls: list[httpx.Request] = []
    length = timedelta(seconds=1) if kind == "full" else timedelta(hours=1)
    store = Store.open(str(tmp_path / "m.db"))
    try:
        with store.engine.begin() as conn:
            add_targets(conn, [TARGET], to_text(T0))
            store.mark_complete(conn, TARGET, to_text(T0), to_text(T0 + length), to_text(T0))
        err = outcome(lambda: verify(store, client(endless(kind, calls)), targets=[TARGET],
                                     since=T0, until=T0 + length, use_analytics=False,
                                     concurrency=1, clock=lambda: T0 + timedelta(days=1)))  # fmt: skip
    finally:
        store.close()
    where = f"verify, {kind} pages, a {length} window"
    assert isinstance(err, BadDataError), (
        f"{where}: followed the cursor for {len(calls)} calls and ended with {err!r}"
    )
    assert len(calls) <= FEW, f"{where}: refused only after {len(calls)} calls: {err}"
