"""Targets of two histories: which targets a run takes and how (``mirror.histories``), the
list call each history makes (``FalClient.list_requests``, ``Lister``), the history rows
are stored with (``Store.upsert``) and targets remembered with (``sync_targets.history``),
and ``query.Filters.histories``."""

from __future__ import annotations

import logging
from datetime import UTC, datetime

import httpx
import pytest
import sqlalchemy as sa

from mirror import query
from mirror.api import FalClient, RetryPolicy
from mirror.errors import ApiError, AuthError, ConfigError, NotAModel, UsageError
from mirror.histories import Resolved, refusal, resolve
from mirror.records import Row, derive_status
from mirror.schema import requests
from mirror.store import Store
from mirror.walk import Lister, Notes, Stop

NOW = "2026-11-28T10:00:00.000000Z"
ITEM = {
    "request_id": "00000000-0000-4000-8000-000000000001",
    "endpoint_id": "fal-ai/flux/dev",
    "sent_at": "2026-11-28T09:00:00Z",
    "started_at": "2026-11-28T09:00:01Z",
    "ended_at": "2026-11-28T09:00:03Z",
    "status_code": 200,
    "duration": 2.0,
}


def test_resolve_takes_what_is_named_or_else_every_stored_target() -> None:
    stored = {"acme/app": "serverless", "fal-ai/flux/dev": "model"}
    assert resolve(stored, [], []) == Resolved(
        ["acme/app", "fal-ai/flux/dev"], {"fal-ai/flux/dev": "model"}
    ), "a bare run takes every stored target with its history"
    assert resolve(stored, ["acme/new"], ["fal-ai/flux/schnell"]) == Resolved(
        ["acme/new", "fal-ai/flux/schnell"], {"fal-ai/flux/schnell": "model"}
    ), "named targets only, each with the history of its flag"


@pytest.mark.parametrize(
    ("stored", "endpoints", "models", "says"),
    [
        ({}, ["fal-ai/flux/dev"], ["fal-ai/flux/dev"], "both as --endpoint and as --model"),
        ({"fal-ai/flux/dev": "model"}, ["fal-ai/flux/dev"], [], "of the model history"),
        ({"acme/app": "serverless"}, [], ["acme/app"], "of the serverless history"),
    ],
)
def test_resolve_refuses_an_id_of_two_histories(stored, endpoints, models, says) -> None:
    with pytest.raises(UsageError) as e:
        resolve(stored, endpoints, models)
    assert says in str(e.value), f"the refusal does not say why: {e.value}"


def _client(seen: list[httpx.Request]) -> FalClient:
    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        item = {**ITEM, "endpoint_id": request.url.params["endpoint_id"]}
        return httpx.Response(200, json={"items": [item], "next_cursor": None, "has_more": False})

    http = httpx.Client(transport=httpx.MockTransport(handler))
    return FalClient(http, "k:s", base_url="https://api.example.test/v1", retry=RetryPolicy())


def test_a_model_target_is_listed_by_the_model_operation_without_billing() -> None:
    seen: list[httpx.Request] = []
    lister = Lister(
        _client(seen),
        payloads=True,
        billing=True,
        stop=Stop(),
        notes=Notes(logging.getLogger("test")),
        without_billing="",
        histories={"fal-ai/flux/dev": "model"},
    )
    start, end = datetime(2026, 11, 28, 9, tzinfo=UTC), datetime(2026, 11, 28, 10, tzinfo=UTC)
    page, billing, calls = lister.fetch("fal-ai/flux/dev", start, end)
    assert (billing, calls, [r.request_id for r in page.rows]) == (False, 1, [ITEM["request_id"]])
    (req,) = seen
    assert req.url.path == "/v1/models/requests/by-endpoint", req.url
    assert req.url.params.get_list("expand") == ["payloads"], "billing asked of a model list"
    assert page.rows[0].runner_id is None and page.rows[0].billable_units is None
    seen.clear()
    lister.fetch("acme/app", start, end)
    assert seen[0].url.path == "/v1/serverless/requests/by-endpoint", seen[0].url
    assert seen[0].url.params.get_list("expand") == ["payloads", "billing"]


def _row(rid: str, endpoint: str) -> Row:
    ended = "2026-11-28T09:00:03.000000Z"
    return Row(rid, endpoint, None, "2026-11-28T09:00:00.000000Z", None, ended, 200, 2.0,
               None, None, None, derive_status(ended, 200))  # fmt: skip


def test_rows_and_targets_are_stored_with_their_history(db_url: str) -> None:
    store = Store.open(db_url)
    try:
        with store.engine.begin() as conn:
            store.upsert(conn, [_row("m1", "fal-ai/flux/dev")], payloads=True, billing=False,
                         now=NOW, history="model")  # fmt: skip
            store.upsert(conn, [_row("s1", "acme/app")], payloads=True, billing=True, now=NOW)
            # seen again by the other history's upsert: a row keeps the history it has
            res = store.upsert(conn, [_row("m1", "fal-ai/flux/dev")], payloads=True,
                               billing=True, now=NOW)  # fmt: skip
            assert tuple(res) == (0, 0), "an unchanged row was written again"
            store.request_range(conn, ["acme/app", "fal-ai/flux/dev"], NOW, since=None,
                                default_from=NOW, histories={"fal-ai/flux/dev": "model"})  # fmt: skip
        with store.engine.connect() as conn:
            got = conn.execute(
                sa.select(requests.c.request_id, requests.c.history).order_by("request_id")
            ).all()
        assert [tuple(r) for r in got] == [("m1", "model"), ("s1", "serverless")]
        assert store.target_histories() == {"acme/app": "serverless", "fal-ai/flux/dev": "model"}
        with pytest.raises(ValueError, match="unknown history"), store.engine.begin() as conn:
            store.upsert(conn, [_row("x", "a/b")], payloads=True, billing=True, now=NOW,
                         history="other")  # fmt: skip
        with store.engine.connect() as conn:
            f = query.Filters(histories=("model",))
            ids = conn.execute(
                sa.select(requests.c.request_id).where(*query.where_clauses(f, store.dialect))
            ).all()
        assert [r[0] for r in ids] == ["m1"], "--history model answers the model's rows only"
    finally:
        store.close()


def test_an_unknown_history_is_a_usage_error() -> None:
    with pytest.raises(ConfigError, match="unknown history 'other'"):
        query.Filters(histories=("other",))


def test_a_refusal_of_model_ids_says_what_is_wrong_and_of_apps_keeps_the_keys_hint() -> None:
    url = "/v1/models/requests/by-endpoint"
    denied = AuthError(403, "authorization_error", "Access denied", url)
    models = refusal(denied, dropped=["acme/a"], models=["acme/a", "acme/b"])
    assert (type(models), models.status, models.kind) == (NotAModel, 403, "not a model")
    assert str(models) == (
        f"HTTP 403 authorization_error: Access denied; not kept as a sync target: acme/a ({url})"
    ), str(models)
    assert models.hint == (
        "acme/a, acme/b are not a model this key can list: --model takes one of fal's hosted "
        "models (fal-ai/flux/dev); for an app of your own account use --endpoint"
    ), models.hint
    app = refusal(denied, dropped=["other/app"], models=[])
    assert type(app) is AuthError and "owns this endpoint" in app.hint, (type(app), app.hint)
    assert str(app).endswith("Access denied; not kept as a sync target: other/app (/v1/models/"
                             "requests/by-endpoint)"), str(app)  # fmt: skip
    bad = ApiError(400, "validation_error", "Not a model endpoint: acme/a", url)
    assert refusal(bad, dropped=[], models=[]) is bad, "an error naming nothing dropped changed"
    first = ApiError(500, "internal_error", "boom", url)  # another target failed first
    other = refusal(first, dropped=[], models=["acme/a"])
    assert type(other) is ApiError and other.status == 500, (type(other), str(other))
