"""What sync's and verify's walks share (mirror.walk): the walk of a window along the
cursor, the billing fallback, notes, the stop signal and the re-walk of a window whose rows
moved."""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import httpx
import orjson
import pytest

from mirror.api import FalClient, RetryPolicy
from mirror.errors import AuthError
from mirror.walk import Lister, Notes, Stop, Stopped, WindowWalk, until_stable

T0 = datetime(2025, 1, 1, tzinfo=UTC)
ITEM = {"request_id": "r1", "endpoint_id": "acme/app", "sent_at": "2025-01-01T00:00:01Z",
        "started_at": None, "ended_at": None, "status_code": None, "duration": None}  # fmt: skip
log = logging.getLogger("mirror.test")


def billing_refused(seen: list[httpx.Request]) -> httpx.MockTransport:
    """The list call refuses ``expand=billing`` with a 403 and answers without it."""

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        if "billing" in request.url.params.get_list("expand"):
            body = {"error": {"type": "authorization_error", "message": "no billing"}}
            return httpx.Response(403, content=orjson.dumps(body))
        page = {"items": [ITEM], "next_cursor": None, "has_more": False}
        return httpx.Response(200, content=orjson.dumps(page))

    return httpx.MockTransport(handler)


def lister(seen: list[httpx.Request], notes: Notes, *, billing: bool = True) -> Lister:
    client = FalClient(httpx.Client(transport=billing_refused(seen)), "k:s",
                       base_url="https://api.example.test/v1", retry=RetryPolicy(attempts=1))  # fmt: skip
    return Lister(client, payloads=True, billing=billing, stop=Stop(), notes=notes,
                  without_billing="going on without")  # fmt: skip


def test_billing_refused_is_asked_again_without_and_said_once() -> None:
    seen: list[httpx.Request] = []
    notes = Notes(log)
    pages = lister(seen, notes)
    page, billing, calls = pages.fetch("acme/app", T0, T0 + timedelta(hours=1))
    assert [r[0] for r in page.rows] == ["r1"] and billing is False and calls == 2
    again = pages.fetch("acme/app", T0, T0 + timedelta(hours=1))
    assert again[1:] == (False, 1), "once refused, the target is listed without billing"
    assert len(seen) == 3 and not pages.billing_for("acme/app")
    assert notes.texts == ["the API refused billing for acme/app (no billing); going on without"]


def test_a_403_that_is_not_about_billing_is_raised() -> None:
    seen: list[httpx.Request] = []

    def refuse(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(403, content=b'{"error": {"message": "not yours"}}')

    client = FalClient(httpx.Client(transport=httpx.MockTransport(refuse)), "k:s",
                       base_url="https://api.example.test/v1", retry=RetryPolicy(attempts=1))  # fmt: skip
    notes = Notes(log)
    pages = Lister(client, payloads=True, billing=True, stop=Stop(), notes=notes,
                   without_billing="")  # fmt: skip
    with pytest.raises(AuthError, match="not yours"):
        pages.fetch("acme/app", T0, T0 + timedelta(hours=1))
    assert len(seen) == 2, "asked again without billing first"
    assert not notes.texts, "refused without billing too: the refusal is not billing's"


def test_a_stopped_run_makes_no_call_and_its_sleep_ends_at_once() -> None:
    seen: list[httpx.Request] = []
    pages = lister(seen, Notes(log))
    pages.stop.set()
    with pytest.raises(Stopped):
        pages.fetch("acme/app", T0, T0 + timedelta(hours=1))
    assert not seen
    stop = Stop()
    threading.Timer(0.05, stop.set).start()
    with pytest.raises(Stopped):
        stop.sleep(30)


def test_notes_are_said_once_in_order() -> None:
    notes = Notes(log)
    for text in ("b", "a", "b"):
        notes.add(text)
    notes.merge(["a", "c"])
    assert notes.texts == ["b", "a", "c"]


@pytest.mark.parametrize(
    "outcomes, expected",
    [
        ([True], (0, True)),
        ([False, True], (1, True)),
        ([False, False, False], (2, False)),
        ([None, False, True], (2, True)),
        ([None, None, None], (2, False)),
    ],
)
def test_until_stable(outcomes, expected, caplog: pytest.LogCaptureFixture) -> None:
    it = iter(enumerate(outcomes))
    with caplog.at_level(logging.INFO, logger="mirror.test"):
        assert until_stable(lambda: next(it), 3, "acme/app w", log) == expected
    moved = [r for r in caplog.records if "rows moved while paging" in r.getMessage()]
    assert len(moved) == outcomes.count(False), "only a walk that saw rows move says so"


def three_pages(seen: list[httpx.Request]) -> httpx.MockTransport:
    """Three pages along the cursor; the third gives r1 again (rows moved under the pages)."""
    ids = {None: ["r1", "r2"], "c2": ["r3"], "c3": ["r1"]}
    nxt = {None: "c2", "c2": "c3", "c3": None}

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        cursor = request.url.params.get("cursor")
        items = [dict(ITEM, request_id=rid) for rid in ids[cursor]]
        page = {"items": items, "next_cursor": nxt[cursor], "has_more": nxt[cursor] is not None}
        return httpx.Response(200, content=orjson.dumps(page))

    return httpx.MockTransport(handler)


class Turns:
    """A ``turn`` that counts the turns taken and those still held."""

    def __init__(self) -> None:
        self.taken = self.held = 0

    @contextlib.contextmanager
    def __call__(self) -> Iterator[None]:
        self.taken += 1
        self.held += 1
        try:
            yield
        finally:
            self.held -= 1


def window_walk(seen: list[httpx.Request], turns: Turns) -> WindowWalk:
    client = FalClient(httpx.Client(transport=three_pages(seen)), "k:s",
                       base_url="https://api.example.test/v1", retry=RetryPolicy(attempts=1))  # fmt: skip
    pages = Lister(client, payloads=True, billing=False, stop=Stop(), notes=Notes(log),
                   without_billing="")  # fmt: skip
    return WindowWalk(pages, "acme/app", T0, T0 + timedelta(hours=1), turn=turns)


def test_a_window_walk_follows_the_cursor_and_sees_an_id_read_twice() -> None:
    seen: list[httpx.Request] = []
    turns = Turns()
    walk = window_walk(seen, turns)
    steps = [
        (s.number, [r.request_id for r in s.page.rows], s.repeated, turns.held)
        for s in walk.pages()
    ]
    assert steps == [(1, ["r1", "r2"], False, 1), (2, ["r3"], False, 1), (3, ["r1"], True, 1)], (
        "each page, in its turn, says whether an id of the walk came again"
    )
    assert [r.url.params.get("cursor") for r in seen] == [None, "c2", "c3"]
    assert (walk.read, walk.calls, walk.repeated, walk.billing) == (3, 3, True, {False})
    assert (turns.taken, turns.held) == (3, 0)


def test_a_window_walk_stopped_early_asks_no_more_and_ends_its_turn() -> None:
    seen: list[httpx.Request] = []
    turns = Turns()
    walk = window_walk(seen, turns)
    with contextlib.closing(walk.pages()) as pages:
        first = next(pages)
        assert turns.held == 1, "the consumer handles a page within its turn"
    assert [r.request_id for r in first.page.rows] == ["r1", "r2"]
    assert (len(seen), turns.taken, turns.held) == (1, 1, 0), (
        f"{len(seen)} calls, {turns.held} turns still held after the consumer stopped"
    )
