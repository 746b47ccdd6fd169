"""The schema as Python sees it: column types, dialect SQL functions and the tables.

Conventions, for every table:

- One row of ``requests`` is one fal request, keyed by its ``request_id``; its columns carry
  the API's field names and values (``mirror.records.Row``). ``status`` is derived from
  ``ended_at`` and ``status_code``; ``first_seen_at`` / ``last_changed_at`` say when this
  mirror first stored the row and when a sync last changed any of its values.
- Timestamps are UTC ISO-8601 text of exactly one shape, ``2026-11-28T10:00:08.123456Z``, so
  text order is time order (see ``mirror.timeparse``). JSON payloads are stored as JSON text.
- ``billing_events`` holds what fal charged per request and ``prices`` every price seen,
  with when (see ``mirror.cost`` for the answers built on them).
- Sync state lives in the same database, so a row and the claim that its window is complete
  are committed in one transaction: ``sync_windows`` holds, per target, the completed
  ``[start, end)`` intervals (coalesced), ``sync_runs`` logs every run.

The schema itself is created and changed only by the Alembic revisions in ``migrations/``
(shipped as ``mirror.migrations``, run by ``mirror.db``); the ``Table`` objects below describe
it for queries and are checked against the migrated schema by the tests.

SQLite is the default, PostgreSQL the engine teams outgrow it into. Here are the differences
a query sees (column types, the hour/day of a timestamp); the rest of mirror sees one
convention on both: timestamps are canonical UTC text, payloads are JSON text.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql
from sqlalchemy.engine import Dialect
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.compiler import SQLCompiler

from mirror.timeparse import from_text, to_text

# --------------------------------------------------------------------------- types


class Instant(sa.types.TypeDecorator[str]):
    """A UTC instant: canonical text (``2026-11-28T10:00:08.123456Z``) on SQLite, where text
    order is time order; ``timestamptz`` on PostgreSQL. Python always sees the text."""

    impl = sa.Text
    cache_ok = True

    def load_dialect_impl(self, dialect: Dialect) -> sa.types.TypeEngine[Any]:
        if dialect.name == "postgresql":
            return dialect.type_descriptor(postgresql.TIMESTAMP(timezone=True))
        return dialect.type_descriptor(sa.Text())

    def process_bind_param(self, value: Any, dialect: Dialect) -> Any:
        if dialect.name == "postgresql" and isinstance(value, str):
            return from_text(value)
        return value

    def process_result_value(self, value: Any, dialect: Dialect) -> Any:
        if dialect.name == "postgresql" and isinstance(value, datetime):
            return to_text(value)
        return value


class JsonText(sa.types.TypeDecorator[str]):
    """A JSON document: its text on SQLite, ``jsonb`` on PostgreSQL. Python sees JSON text
    (PostgreSQL's rendering of it: ``jsonb`` keeps the value, not the spacing or key order)."""

    impl = sa.Text
    cache_ok = True

    def load_dialect_impl(self, dialect: Dialect) -> sa.types.TypeEngine[Any]:
        if dialect.name == "postgresql":
            return dialect.type_descriptor(postgresql.JSONB())
        return dialect.type_descriptor(sa.Text())

    def bind_processor(self, dialect: Dialect) -> Any:
        # the text is JSON already: handed to the driver as it is (see mirror.db.make_engine)
        return None

    def result_processor(self, dialect: Dialect, coltype: Any) -> Any:
        return None


#: ids compared by byte order on both backends: SQLite's BINARY, PostgreSQL's "C" collation
#: whatever the database's own (app-id ranges such as ``owner/app/`` .. ``owner/app0`` rely on
#: it; a language collation would ignore the punctuation)
Key = sa.Text().with_variant(postgresql.TEXT(collation="C"), "postgresql")


class hour_of(sa.sql.functions.GenericFunction[str]):
    """The hour of a timestamp as text, ``YYYY-MM-DDTHH`` (UTC)."""

    type = sa.Text()
    inherit_cache = True


class day_of(sa.sql.functions.GenericFunction[str]):
    """The day of a timestamp as text, ``YYYY-MM-DD`` (UTC)."""

    type = sa.Text()
    inherit_cache = True


@compiles(hour_of)
def _hour_sqlite(element: hour_of, compiler: SQLCompiler, **kw: Any) -> str:
    return f"substr({compiler.process(element.clauses, **kw)}, 1, 13)"


@compiles(day_of)
def _day_sqlite(element: day_of, compiler: SQLCompiler, **kw: Any) -> str:
    return f"substr({compiler.process(element.clauses, **kw)}, 1, 10)"


@compiles(hour_of, "postgresql")
def _hour_pg(element: hour_of, compiler: SQLCompiler, **kw: Any) -> str:
    arg = compiler.process(element.clauses, **kw)
    return f"to_char(({arg}) AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24')"


@compiles(day_of, "postgresql")
def _day_pg(element: day_of, compiler: SQLCompiler, **kw: Any) -> str:
    arg = compiler.process(element.clauses, **kw)
    return f"to_char(({arg}) AT TIME ZONE 'UTC', 'YYYY-MM-DD')"


# --------------------------------------------------------------------------- tables

metadata = sa.MetaData()

#: one row per fal request; see the module docstring for conventions
requests = sa.Table(
    "requests",
    metadata,
    sa.Column("request_id", Key, primary_key=True),
    sa.Column("endpoint_id", Key, nullable=False),
    sa.Column("runner_id", sa.Text),
    sa.Column("sent_at", Instant, nullable=False),
    sa.Column("started_at", Instant),
    sa.Column("ended_at", Instant),
    sa.Column("status_code", sa.Integer),
    sa.Column("duration", sa.Float),
    sa.Column("billable_units", sa.Float),
    sa.Column("json_input", JsonText),
    sa.Column("json_output", JsonText),
    sa.Column("status", sa.Text, nullable=False),
    sa.Column("first_seen_at", Instant, nullable=False),
    sa.Column("last_changed_at", Instant, nullable=False),
    #: which of fal's two request histories the row is from (``HISTORIES``)
    sa.Column("history", sa.Text, nullable=False, server_default="serverless"),
)

#: one row per billed request (fal's billing event), keyed by its ``request_id``, which may
#: not be in ``requests`` (yet). Amounts in USD as fal gives them; ``cost_estimate_nano_usd``
#: is the same charge as ``cost_total`` in whole nano-USD, the one to add up (exactly).
#: ``auth_method`` is fal's label of who made the call, ``api_key_id`` / ``login_username``
#: the key or team member, where fal says; bookkeeping as in ``requests``.
billing_events = sa.Table(
    "billing_events",
    metadata,
    sa.Column("request_id", Key, primary_key=True),
    sa.Column("endpoint_id", Key, nullable=False),
    sa.Column("timestamp", Instant, nullable=False),
    sa.Column("output_units", sa.Float),
    sa.Column("unit_price", sa.Float),
    sa.Column("percent_discount", sa.Float),
    sa.Column("cost_subtotal", sa.Float, nullable=False),
    sa.Column("cost_discount", sa.Float, nullable=False),
    sa.Column("cost_total", sa.Float, nullable=False),
    sa.Column("cost_estimate_nano_usd", sa.BigInteger, nullable=False),
    sa.Column("auth_method", sa.Text),
    sa.Column("api_key_id", sa.Text),
    sa.Column("login_username", sa.Text),
    sa.Column("first_seen_at", Instant, nullable=False),
    sa.Column("last_changed_at", Instant, nullable=False),
)

#: one row per price an endpoint was seen to have: from ``seen_at`` until the next row of
#: the endpoint, ``unit_price`` of ``currency`` per ``unit``; ``checked_at``: when the
#: price was last seen unchanged. A row is added only when the price changes.
prices = sa.Table(
    "prices",
    metadata,
    sa.Column("endpoint_id", Key, primary_key=True),
    sa.Column("seen_at", Instant, primary_key=True),
    sa.Column("unit", sa.Text, nullable=False),
    sa.Column("unit_price", sa.Float, nullable=False),
    sa.Column("currency", sa.Text, nullable=False),
    sa.Column("checked_at", Instant, nullable=False),
)

#: successful requests that have no billing event (migration 0015), per hour of
#: ``ended_at``, endpoint and history: how many, and their units in exact integer
#: millionths (``billable_units``, one where a row has none). Kept by triggers on
#: ``requests`` and ``billing_events`` (see ``mirror.unbilled``), read by ``mirror cost``.
unbilled_hourly = sa.Table(
    "unbilled_hourly",
    metadata,
    sa.Column("endpoint_id", Key, primary_key=True),
    sa.Column("hour", Instant, primary_key=True),
    sa.Column("history", sa.Text, primary_key=True),
    sa.Column("requests", sa.BigInteger, nullable=False),
    sa.Column("units_micro", sa.BigInteger, nullable=False),
)

#: one row per sync target: an endpoint id exactly as the user gave it
sync_targets = sa.Table(
    "sync_targets",
    metadata,
    sa.Column("target", sa.Text, primary_key=True),
    sa.Column("added_at", Instant, nullable=False),
    #: the earliest start asked for; every sync plans from here until it is covered
    sa.Column("requested_from", Instant),
    #: which history the target is (``HISTORIES``), and so which operation lists it
    #: (migration 0013)
    sa.Column("history", sa.Text, nullable=False, server_default="serverless"),
)

#: one row per coalesced completed interval [window_start, window_end) of a target
sync_windows = sa.Table(
    "sync_windows",
    metadata,
    sa.Column("target", sa.Text, primary_key=True),
    sa.Column("window_start", Instant, primary_key=True),
    sa.Column("window_end", Instant, nullable=False),
    sa.Column("completed_at", Instant, nullable=False),
)

#: one row per `mirror sync` run
sync_runs = sa.Table(
    "sync_runs",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("started_at", Instant, nullable=False),
    sa.Column("ended_at", Instant),
    sa.Column("outcome", sa.Text, nullable=False),
    sa.Column("targets", sa.Text, nullable=False),
    sa.Column("pages", sa.Integer, nullable=False, server_default="0"),
    sa.Column("api_calls", sa.Integer, nullable=False, server_default="0"),
    sa.Column("rows_inserted", sa.Integer, nullable=False, server_default="0"),
    sa.Column("rows_updated", sa.Integer, nullable=False, server_default="0"),
    sa.Column("error", sa.Text),
    #: this machine's clock minus the API's, in seconds, as the run measured it
    sa.Column("clock_skew", sa.Float),
)

#: when a target's older history was last re-checked, per tier ("day", "week")
sync_rechecks = sa.Table(
    "sync_rechecks",
    metadata,
    sa.Column("target", sa.Text, primary_key=True),
    sa.Column("tier", sa.Text, primary_key=True),
    sa.Column("checked_at", Instant, nullable=False),
)

#: stretches of a target's history whose pages must hold at most ``page_limit`` requests to
#: stay under the body cap, as a walk learned them (migration 0012, ``mirror.oversize``)
sync_page_limits = sa.Table(
    "sync_page_limits",
    metadata,
    sa.Column("target", sa.Text, primary_key=True),
    sa.Column("window_start", Instant, primary_key=True),
    sa.Column("window_end", Instant, primary_key=True),
    sa.Column("page_limit", sa.Integer, nullable=False),
    sa.Column("learned_at", Instant, nullable=False),
)

#: one row per request stored without its payloads because a page of that one request was
#: over the body cap with them (migration 0012, ``mirror.oversize``); ``page_bytes`` is the
#: size that page declared, when it did, ``cap_bytes`` the cap it was over
oversized_requests = sa.Table(
    "oversized_requests",
    metadata,
    sa.Column("request_id", Key, primary_key=True),
    sa.Column("endpoint_id", Key, nullable=False),
    sa.Column("sent_at", Instant, nullable=False),
    sa.Column("page_bytes", sa.BigInteger),
    sa.Column("cap_bytes", sa.BigInteger, nullable=False),
    sa.Column("first_seen_at", Instant, nullable=False),
    sa.Column("last_seen_at", Instant, nullable=False),
)

#: the completed intervals [window_start, window_end) of billing events, by their
#: ``timestamp`` (migration 0014, ``mirror.cost_sync``), coalesced as ``sync_windows``
cost_windows = sa.Table(
    "cost_windows",
    metadata,
    sa.Column("window_start", Instant, primary_key=True),
    sa.Column("window_end", Instant, nullable=False),
    sa.Column("completed_at", Instant, nullable=False),
)

#: one row (``id`` 1): whether `mirror sync` mirrors cost (``state`` ok, refused, failed),
#: why not (``reason``), when it last tried and last succeeded, and when prices and usage
#: totals were last checked (migration 0014, ``mirror.cost_sync``)
cost_state = sa.Table(
    "cost_state",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("state", sa.Text, nullable=False),
    sa.Column("reason", sa.Text),
    sa.Column("checked_at", Instant, nullable=False),
    sa.Column("ok_at", Instant),
    sa.Column("prices_checked_at", Instant),
    sa.Column("usage_checked_at", Instant),
)

#: fal's usage total per UTC day and endpoint as the last check fetched it, beside what the
#: mirror's billing events summed to then, in nano-USD (migration 0014, ``mirror.cost_sync``)
usage_checks = sa.Table(
    "usage_checks",
    metadata,
    sa.Column("day", sa.Text, primary_key=True),
    sa.Column("endpoint_id", Key, primary_key=True),
    sa.Column("usage_nano_usd", sa.BigInteger, nullable=False),
    sa.Column("mirror_nano_usd", sa.BigInteger, nullable=False),
    sa.Column("checked_at", Instant, nullable=False),
)

#: one row per file a request's payload refers to (migration 0008, ``mirror.media_refs``):
#: where it is, what the payload declares, and what became of it (``state``: pending,
#: archived, gone, failed, refused)
media_refs = sa.Table(
    "media_refs",
    metadata,
    sa.Column("request_id", Key, primary_key=True),
    sa.Column("side", sa.Text, primary_key=True),
    sa.Column("path", sa.Text, primary_key=True),
    sa.Column("url", sa.Text, nullable=False),
    sa.Column("content_type", sa.Text),
    sa.Column("file_name", sa.Text),
    sa.Column("declared_size", sa.BigInteger),
    sa.Column("state", sa.Text, nullable=False),
    sa.Column("sha256", sa.Text),
    sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
    sa.Column("error", sa.Text),
    sa.Column("seen_at", Instant, nullable=False),
    sa.Column("tried_at", Instant),
    #: when the file was found gone (the tombstone)
    sa.Column("gone_at", Instant),
)

#: one row per archived file, by the SHA-256 of its bytes (its name in the media store)
media_files = sa.Table(
    "media_files",
    metadata,
    sa.Column("sha256", sa.Text, primary_key=True),
    sa.Column("size", sa.BigInteger, nullable=False),
    sa.Column("content_type", sa.Text),
    sa.Column("fetched_at", Instant, nullable=False),
)

#: how far the payloads have been searched for files: up to this ``last_changed_at``
media_scan = sa.Table(
    "media_scan",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("changed_until", Instant),
)

#: the hourly summary kept by triggers (migration 0002); one row per hour of ``ended_at``,
#: endpoint and status. Sums are integers (microseconds, millionths of a unit) so that they
#: stay exact under the subtractions of updates and deletes. Read only on SQLite (on
#: PostgreSQL ``hour`` is a timestamptz), so it is declared apart from ``metadata``.
summary_hourly = sa.Table(
    "summary_hourly",
    sa.MetaData(),
    sa.Column("hour", sa.Text, primary_key=True),
    sa.Column("endpoint_id", sa.Text, primary_key=True),
    sa.Column("status", sa.Text, primary_key=True),
    sa.Column("requests", sa.Integer, nullable=False),
    sa.Column("durations", sa.Integer, nullable=False),
    sa.Column("duration_us", sa.Integer, nullable=False),
    sa.Column("billed", sa.Integer, nullable=False),
    sa.Column("billable_micro", sa.Integer, nullable=False),
)

#: the fixed log scale of ``duration_histogram`` (migration 0011): bucket 0 holds durations
#: below 1 µs (value 0); bucket k >= 1 holds [lower, next lower), and its ``value`` is within
#: 2% of every duration in it (``mirror.rollups`` reads it)
duration_buckets = sa.Table(
    "duration_buckets",
    metadata,
    sa.Column("lower", sa.Float, primary_key=True),
    sa.Column("bucket", sa.Integer, nullable=False, unique=True),
    sa.Column("value", sa.Float, nullable=False),
)

#: per hour of ``ended_at``, bucket, endpoint and status, how many requests with a duration
#: fell in the bucket; kept by triggers like ``summary_hourly`` (migration 0011)
duration_histogram = sa.Table(
    "duration_histogram",
    metadata,
    sa.Column("hour", Instant, primary_key=True),
    sa.Column("bucket", sa.Integer, primary_key=True),
    sa.Column("endpoint_id", Key, primary_key=True),
    sa.Column("status", sa.Text, primary_key=True),
    sa.Column("requests", sa.Integer, nullable=False),
)

#: the columns the upsert writes, in table order: a ``mirror.records.Row``'s fields, then
#: the two bookkeeping stamps
ROW_COLUMNS = tuple(requests.c.keys())[: requests.c.keys().index("last_changed_at") + 1]
#: every column of a stored request, in column order (``mirror copy`` carries them all)
STORED_COLUMNS = tuple(requests.c.keys())
#: the values of ``requests.status`` (``mirror.records.derive_status``)
STATUSES = ("success", "user_error", "error", "unfinished")
#: ``requests.history``: the calls to the user's own serverless apps, or the calls the
#: key made to fal's hosted models
HISTORIES = ("serverless", "model")
#: a billing event's fields, in column order; its upsert takes tuples in this order
BILLING_EVENT_FIELDS = (
    "request_id",
    "endpoint_id",
    "timestamp",
    "output_units",
    "unit_price",
    "percent_discount",
    "cost_subtotal",
    "cost_discount",
    "cost_total",
    "cost_estimate_nano_usd",
    "auth_method",
    "api_key_id",
    "login_username",
)


def target_clause(target: str) -> sa.ColumnElement[bool]:
    """Rows a target covers: the id itself, and for an app id its routes (``owner/app/…``).

    A range, not LIKE: ids contain ``_`` (a LIKE wildcard), and a range uses the index.
    """
    r = requests.c.endpoint_id
    return sa.or_(r == target, sa.and_(r >= target + "/", r < target + "0"))
