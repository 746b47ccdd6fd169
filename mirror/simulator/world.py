"""The simulated platform's data: requests, what the API may see of them, and fast queries.

A `SimRequest` stores the *eventual* truth about one request (when it will end, what it will
cost, when the platform will have recorded it). What the API shows is derived from those
timestamps and the world's clock at the moment of the call, so one object answers
differently as time passes, exactly like the real service seen from outside: a request is
invisible before it is recorded, unfinished (nulls) until it ends, and unbilled until its
billing event lands. Nothing is mutated to make time pass, which keeps tests reproducible:
move the clock, ask again.

Every reading (docs/fal-api.md) that the real service leaves open is a switch in
`WorldConfig`, so the mirror can be tested against each of them.

Queries must stay fast for a million requests: each endpoint keeps its rows sorted by each
filterable timestamp (bisect to the window), and the sorted answer to a query is cached
until the world changes or the clock reaches the next instant at which any row of that
window would look different (it becomes visible, ends, or slides out of a relative
window). Paging a large window then costs a slice per page, yet is never stale.
"""

from __future__ import annotations

import threading
from array import array
from bisect import bisect_left
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from itertools import pairwise
from typing import Any, Literal

import orjson

__all__ = [
    "EPOCH",
    "SAME_AS_SENT",
    "ItemView",
    "ManualClock",
    "Query",
    "SimRequest",
    "World",
    "WorldConfig",
    "app_id_of",
    "from_us",
    "real_clock",
    "to_us",
]

FilterField = Literal["ended_at", "sent_at", "started_at"]
SortBy = Literal["ended_at", "duration"]
Status = Literal["success", "user_error", "error"]

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_ONE_US = timedelta(microseconds=1)
#: Stands for "no such instant" in the integer timestamp columns (billing never recorded).
NEVER_US = 2**62
DEFAULT_LOOKBACK = timedelta(hours=24)
REQUEST_ID_LOOKBACK = timedelta(days=90)
#: Sentinel default of `SimRequest.recorded_at`: replaced by `sent_at` on construction, so
#: the common case (recorded as soon as it is sent) needs no argument.
SAME_AS_SENT = datetime(1, 1, 1, tzinfo=UTC)
_CACHE_ENTRIES = 32


def to_us(dt: datetime) -> int:
    """Microseconds since the epoch; exact (no float), and refuses naive datetimes."""
    if dt.tzinfo is None or dt.utcoffset() is None:
        raise ValueError(f"naive datetime {dt!r}: the simulator needs timezone-aware times")
    return (dt - EPOCH) // _ONE_US


def from_us(us: int) -> datetime:
    """Inverse of `to_us`, always in UTC (the API serialises UTC with a `Z`)."""
    return EPOCH + timedelta(microseconds=us)


def real_clock() -> datetime:
    """The default clock: the real current time in UTC."""
    return datetime.now(UTC)


def app_id_of(endpoint_id: str) -> str:
    """`owner/name` of an endpoint id, dropping any route (`owner/name/turbo`)."""
    return "/".join(endpoint_id.split("/")[:2])


class ManualClock:
    """A clock tests move by hand, so time-dependent answers are reproducible.

    Pass it as `WorldConfig(clock=clock)`; it is thread-safe because the server reads it
    from handler threads while the test moves it.
    """

    def __init__(self, start: datetime) -> None:
        to_us(start)  # validates tz-awareness early
        self._now = start.astimezone(UTC)
        self._lock = threading.Lock()

    def __call__(self) -> datetime:
        with self._lock:
            return self._now

    def now(self) -> datetime:
        """Same as calling the clock; reads better in tests."""
        return self()

    def set(self, when: datetime) -> None:
        """Jump to `when` (backwards is allowed: caches check for it)."""
        to_us(when)
        with self._lock:
            self._now = when.astimezone(UTC)

    def advance(self, seconds: float = 0.0, **delta: float) -> datetime:
        """Move forward by `seconds` (plus any `timedelta` keywords) and return the new now."""
        with self._lock:
            self._now += timedelta(seconds=seconds, **delta)
            return self._now


@dataclass(slots=True)
class SimRequest:
    """The eventual truth about one request; what the API shows is derived from it.

    `ended_at`, `status_code`, `duration` and `billable_units` are the values the request
    *will* have; `recorded_at` is when the platform makes it visible at all (later than
    `sent_at` models ingestion lag and backfills); `billing_at` is when its billing event
    lands (None: never). Change a request that is already in a `World` only through
    `World.update`, which keeps the world's indexes and caches consistent.
    """

    request_id: str
    endpoint_id: str
    runner_id: str | None
    sent_at: datetime
    started_at: datetime
    ended_at: datetime
    status_code: int
    duration: float
    billable_units: float | None = None
    billing_at: datetime | None = None
    json_input: Any = None
    json_output: Any = None
    recorded_at: datetime = SAME_AS_SENT

    def __post_init__(self) -> None:
        if self.recorded_at is SAME_AS_SENT:
            self.recorded_at = self.sent_at


@dataclass(frozen=True, slots=True)
class WorldConfig:
    """Switches for every undocumented behaviour (docs/fal-api.md: the readings mirror must be correct under).

    A mirror must be correct under each plausible reading, so tests run it against each:
    `filter_field` (which timestamp `start`/`end` select on; with `ended_at`, unfinished
    rows never match because their `ended_at` is null), `sort_direction` and `nulls`
    (where null sort keys go), `unfinished_visible` (whether in-flight requests are listed
    with nulls or hidden until they end), `owner` (the key's account: other owners' endpoints
    answer 403), `billing_refused` (app ids for which `expand=billing` answers 403, the other
    reading of open question 5), `models_refuse_owned` (the status with which the models
    operations refuse an endpoint of the key's own account, such as an app id given where a
    hosted model belongs: 400, 403 (as for another account's endpoint) or 404; None, the
    default, lists the key's calls to it like any other), and `clock` (tests pass a
    `ManualClock`).
    """

    filter_field: FilterField = "ended_at"
    sort_direction: Literal["desc", "asc"] = "desc"
    nulls: Literal["last", "first"] = "last"
    unfinished_visible: bool = True
    owner: str = "acme"
    billing_refused: frozenset[str] = frozenset()
    models_refuse_owned: int | None = None
    clock: Callable[[], datetime] = field(default=real_clock)

    def __post_init__(self) -> None:
        if self.filter_field not in ("ended_at", "sent_at", "started_at"):
            raise ValueError(
                f"filter_field must be ended_at, sent_at or started_at, not {self.filter_field!r}"
            )
        if self.sort_direction not in ("desc", "asc"):
            raise ValueError(f"sort_direction must be desc or asc, not {self.sort_direction!r}")
        if self.nulls not in ("last", "first"):
            raise ValueError(f"nulls must be last or first, not {self.nulls!r}")
        if self.models_refuse_owned not in (None, 400, 403, 404):
            raise ValueError(
                "models_refuse_owned must be None, 400, 403 or 404, "
                f"not {self.models_refuse_owned!r}"
            )


@dataclass(frozen=True, slots=True)
class Query:
    """One list call's filters, as the server parsed them.

    `start`/`end` of None mean the documented defaults *relative to the moment of the
    call* (now minus 24 h, or 90 days with `request_id`; now), which is why they are kept
    as None rather than resolved: a cached answer for a sliding window stays correct.
    `endpoint_ids` are as requested: a bare app id also covers its routes.
    """

    endpoint_ids: tuple[str, ...]
    start: datetime | None = None
    end: datetime | None = None
    status: Status | None = None
    sort_by: SortBy = "ended_at"
    request_id: str | None = None

    @property
    def lookback(self) -> timedelta:
        """How far back the default `start` reaches (90 days when looking up one id)."""
        return REQUEST_ID_LOOKBACK if self.request_id is not None else DEFAULT_LOOKBACK


@dataclass(frozen=True, slots=True)
class ItemView:
    """Which shape of item to serve: the serverless item (with `runner_id`, optionally
    `billable_units`) or the models item, and whether payloads are expanded."""

    serverless: bool = True
    payloads: bool = False
    billing: bool = False


#: The view `World.server_view` uses: everything a serverless item can carry.
FULL_VIEW = ItemView(serverless=True, payloads=True, billing=True)


@dataclass(slots=True)
class _CacheEntry:
    version: int
    computed_at: int
    valid_until: int
    order: list[int]


_TIME_FIELDS = ("sent_at", "started_at", "ended_at", "billing_at", "recorded_at")


def _in_utc(req: SimRequest) -> SimRequest:
    """The request with every timestamp in UTC (served with a `Z`), copied only if needed."""
    changes = {}
    for name in _TIME_FIELDS:
        value = getattr(req, name)
        if value is not None and value.tzinfo is not UTC:
            to_us(value)  # refuses naive datetimes with a clear message
            changes[name] = value.astimezone(UTC)
    return replace(req, **changes) if changes else req


def _status_matches(status: Status, code: int) -> bool:
    if status == "success":
        return 200 <= code <= 299
    if status == "user_error":
        return 400 <= code <= 499
    return 500 <= code <= 599


class World:
    """All requests of the simulated platform, queryable as the API would answer.

    Thread-safe behind one lock: the HTTP server reads from handler threads while tests
    mutate through `add`, `finish_all`, `fill_billing`, `backdate` and `update`.
    """

    def __init__(
        self, config: WorldConfig | None = None, requests: Iterable[SimRequest] = ()
    ) -> None:
        self._config = config or WorldConfig()
        self._lock = threading.RLock()
        self._reqs: list[SimRequest] = []
        self._rid: list[str] = []
        self._index_of: dict[str, int] = {}
        self._sent = array("q")
        self._started = array("q")
        self._ended = array("q")
        self._recorded = array("q")
        self._billing = array("q")
        self._status = array("i")
        self._duration = array("d")
        self._rows_of: dict[str, list[int]] = {}
        # (endpoint, field) -> (sorted keys, row indexes in that order)
        self._sorted: dict[tuple[str, str], tuple[array[int], array[int]]] = {}
        self._stale: set[tuple[str, str]] = set()
        # (endpoint, field, unfinished hidden) -> (the index's keys it was built for, prefix
        # maxima of the instant each row starts to count, in that index's order)
        self._settled: dict[tuple[str, str, bool], tuple[array[int], array[int]]] = {}
        self._version = 0
        self._cache: OrderedDict[tuple[Any, ...], _CacheEntry] = OrderedDict()
        self.add_many(requests)

    # -- configuration and time ---------------------------------------------------------

    @property
    def config(self) -> WorldConfig:
        """The switches; assign a new `WorldConfig` (e.g. via `dataclasses.replace`) to flip one."""
        return self._config

    @config.setter
    def config(self, value: WorldConfig) -> None:
        with self._lock:
            self._config = value
            self._cache.clear()

    def now(self) -> datetime:
        """The world's current time, from the configured clock, in UTC."""
        now = self._config.clock()
        to_us(now)
        return now.astimezone(UTC)

    @property
    def version(self) -> int:
        """A number that changes whenever a request is added or changed: what is derived
        from the requests (billing events) is rebuilt when it moves."""
        return self._version

    def __len__(self) -> int:
        return len(self._reqs)

    def __iter__(self) -> Iterator[SimRequest]:
        with self._lock:
            return iter(list(self._reqs))

    def get(self, request_id: str) -> SimRequest | None:
        """The stored request with that id, whatever its visibility."""
        with self._lock:
            i = self._index_of.get(request_id)
            return None if i is None else self._reqs[i]

    def endpoint_ids(self) -> frozenset[str]:
        """Every endpoint id any stored request was recorded under."""
        with self._lock:
            return frozenset(self._rows_of)

    def owns(self, endpoint_id: str) -> bool:
        """Whether the key's account owns this endpoint (its first path segment)."""
        return endpoint_id.split("/", 1)[0] == self._config.owner

    def match_endpoints(self, endpoint_ids: Iterable[str]) -> tuple[str, ...]:
        """The stored endpoint ids a request for `endpoint_ids` covers, sorted.

        A bare app id `owner/name` covers itself and every `owner/name/<route>`; a
        route-level id covers exactly itself (docs/fal-api.md, listing requests).
        """
        with self._lock:
            known = self._rows_of.keys()
            out: set[str] = set()
            for wanted in endpoint_ids:
                if wanted in known:
                    out.add(wanted)
                if wanted.count("/") == 1:
                    prefix = wanted + "/"
                    out.update(k for k in known if k.startswith(prefix))
            return tuple(sorted(out))

    # -- mutation ---------------------------------------------------------------------------

    def add(self, req: SimRequest) -> None:
        """Add one request; it shows up (or not) according to its timestamps."""
        self.add_many((req,))

    def add_many(self, reqs: Iterable[SimRequest]) -> None:
        """Add requests in bulk (cheaper than `add` in a loop: one index rebuild)."""
        normalized = (_in_utc(req) for req in reqs)
        self._extend((req, self._columns(req)) for req in normalized)

    def _extend(self, pairs: Iterable[tuple[SimRequest, tuple[int, int, int, int, int]]]) -> None:
        """Append requests with their integer timestamp columns already computed.

        The generator calls this directly with columns it already has, which saves the
        datetime arithmetic of a million `to_us` calls.
        """
        with self._lock:
            touched: set[str] = set()
            reqs, rid, index_of, rows_of = self._reqs, self._rid, self._index_of, self._rows_of
            try:
                for req, (sent, started, ended, recorded, billing) in pairs:
                    if req.request_id in index_of:
                        raise ValueError(f"duplicate request_id {req.request_id}")
                    i = len(reqs)
                    reqs.append(req)
                    rid.append(req.request_id)
                    index_of[req.request_id] = i
                    self._sent.append(sent)
                    self._started.append(started)
                    self._ended.append(ended)
                    self._recorded.append(recorded)
                    self._billing.append(billing)
                    self._status.append(req.status_code)
                    self._duration.append(req.duration)
                    rows_of.setdefault(req.endpoint_id, []).append(i)
                    touched.add(req.endpoint_id)
            finally:
                # even when one request is refused, the ones before it are in: keep consistent
                for endpoint_id in touched:
                    self._mark_stale(endpoint_id)
                if touched:
                    self._changed()

    def update(self, request_id: str, **changes: Any) -> SimRequest:
        """Change fields of a stored request (tests: late billing, a re-run, ...).

        Goes through the world so indexes and cached answers follow; the request's
        `endpoint_id` and `request_id` cannot change.
        """
        with self._lock:
            i = self._index_of[request_id]
            if {"request_id", "endpoint_id"} & changes.keys():
                raise ValueError("request_id and endpoint_id of a stored request cannot change")
            new = _in_utc(replace(self._reqs[i], **changes))
            self._store(i, new)
            self._changed()
            return new

    def finish_all(self, at: datetime | None = None) -> int:
        """End every request still running at `at` (default now), right then.

        Sets `ended_at` to that instant and `duration` to match, so a test can reach a
        quiet state where a full sync must equal `server_view()`. Returns how many ended.
        """
        with self._lock:
            at = (at or self.now()).astimezone(UTC)
            at_us = to_us(at)
            count = 0
            for i, req in enumerate(self._reqs):
                if self._sent[i] <= at_us < self._ended[i]:
                    started = min(req.started_at, at)
                    duration = (at_us - to_us(started)) / 1e6
                    self._store(i, replace(req, started_at=started, ended_at=at, duration=duration))
                    count += 1
            if count:
                self._changed()
            return count

    def fill_billing(self) -> int:
        """Land every billing event still pending: at now, or when the request ends.

        After `finish_all` + `fill_billing` the world is quiet: every billable request shows
        its units, so a complete mirror must equal `server_view()`. Returns how many moved.
        """
        with self._lock:
            now = self.now()
            now_us = to_us(now)
            count = 0
            for i, req in enumerate(self._reqs):
                if req.billable_units is not None and self._billing[i] > now_us:
                    at = max(now, req.ended_at)
                    if req.billing_at != at:
                        self._store(i, replace(req, billing_at=at))
                        count += 1
            if count:
                self._changed()
            return count

    def backdate(
        self,
        n: int,
        hours_ago: float,
        *,
        endpoint_id: str = "acme/flux-lora",
        spread_minutes: float = 10.0,
        seed: int = 0,
    ) -> list[SimRequest]:
        """Add `n` late arrivals: sent and ended about `hours_ago` hours ago, recorded now.

        This is the platform's backfill after an ingestion incident (docs/fal-api.md, late records):
        rows appear inside windows a mirror already synced, so only a re-scan finds them.
        """
        from mirror.simulator.generate import make_requests  # generate.py imports this module

        with self._lock:
            now = self.now()
            around = now - timedelta(hours=hours_ago)
            reqs = make_requests(
                n,
                endpoint_id=endpoint_id,
                around=around,
                spread=timedelta(minutes=spread_minutes),
                seed=f"backdate:{seed}:{len(self._reqs)}",
                recorded_at=now,
                not_after=now,
            )
            self.add_many(reqs)
            return reqs

    def _columns(self, req: SimRequest) -> tuple[int, int, int, int, int]:
        sent, started, ended = to_us(req.sent_at), to_us(req.started_at), to_us(req.ended_at)
        if not sent <= started <= ended:
            raise ValueError(
                f"request {req.request_id}: need sent_at <= started_at <= ended_at, "
                f"got {req.sent_at} / {req.started_at} / {req.ended_at}"
            )
        billing = NEVER_US if req.billing_at is None else to_us(req.billing_at)
        return sent, started, ended, to_us(req.recorded_at), billing

    def _store(self, i: int, req: SimRequest) -> None:
        cols = self._columns(req)
        self._reqs[i] = req
        self._sent[i], self._started[i], self._ended[i], self._recorded[i], self._billing[i] = cols
        self._status[i] = req.status_code
        self._duration[i] = req.duration
        self._mark_stale(req.endpoint_id)

    def _mark_stale(self, endpoint_id: str) -> None:
        self._stale.update((endpoint_id, name) for name in ("ended_at", "sent_at", "started_at"))

    def _changed(self) -> None:
        self._version += 1
        self._cache.clear()

    # -- indexes ----------------------------------------------------------------------------

    def _column(self, name: str) -> array[int]:
        return {"sent_at": self._sent, "started_at": self._started, "ended_at": self._ended}[name]

    def _index(self, endpoint_id: str, field_name: str) -> tuple[array[int], array[int]]:
        """Rows of one endpoint sorted by one timestamp, rebuilt lazily after mutations.

        The rebuild sorts the previous order plus the new rows; Timsort sees the long sorted
        run, so a small change to a big endpoint costs about one pass, not a full sort.
        """
        key = (endpoint_id, field_name)
        got = self._sorted.get(key)
        if got is None or key in self._stale:
            col = self._column(field_name)
            rows = list(got[1]) if got is not None else []
            rows.extend(self._rows_of.get(endpoint_id, [])[len(rows) :])
            rows.sort(key=col.__getitem__)
            got = (array("q", [col[i] for i in rows]), array("q", rows))
            self._sorted[key] = got
            self._stale.discard(key)
        return got

    # -- queries ----------------------------------------------------------------------------

    def query(self, q: Query, *, now: datetime | None = None) -> list[SimRequest]:
        """Every request the list operation would return for `q`, in the API's order."""
        with self._lock:
            now_us = to_us(now) if now is not None else to_us(self.now())
            return [self._reqs[i] for i in self._order(q, now_us)]

    def page(
        self,
        q: Query,
        *,
        offset: int,
        limit: int,
        view: ItemView,
        now: datetime | None = None,
    ) -> tuple[list[dict[str, Any]], bool]:
        """One page of items (as dicts with datetime values) and whether more follow."""
        with self._lock:
            now_us = to_us(now) if now is not None else to_us(self.now())
            order = self._order(q, now_us)
            rows = order[offset : offset + limit]
            items = [self._item(i, now_us, view) for i in rows]
            return items, offset + limit < len(order)

    def count(self, q: Query, *, now: datetime | None = None) -> int:
        """How many requests `q` selects (all pages together)."""
        with self._lock:
            now_us = to_us(now) if now is not None else to_us(self.now())
            return len(self._order(q, now_us))

    def item(
        self, req: SimRequest, *, view: ItemView = FULL_VIEW, now: datetime | None = None
    ) -> dict[str, Any]:
        """The item dict the API serves for `req` at `now` (datetime values, not text)."""
        with self._lock:
            now_us = to_us(now) if now is not None else to_us(self.now())
            return self._item(self._index_of[req.request_id], now_us, view)

    def server_view(self, now: datetime | None = None) -> dict[str, dict[str, Any]]:
        """Every visible request as the API would serve it, keyed by request id.

        Serverless shape with payloads and billing, decoded from JSON exactly as a client
        sees it (timestamps as RFC 3339 text), so a test can compare a mirror against it.
        Applies visibility (recorded, sent, and `unfinished_visible`) but no window.
        """
        with self._lock:
            now_us = to_us(now) if now is not None else to_us(self.now())
            visible_unfinished = self._config.unfinished_visible
            items = []
            for i in range(len(self._reqs)):
                if self._recorded[i] > now_us or self._sent[i] > now_us:
                    continue
                if self._ended[i] > now_us and not visible_unfinished:
                    continue
                items.append(self._item(i, now_us, FULL_VIEW))
        decoded: list[dict[str, Any]] = orjson.loads(orjson.dumps(items, option=orjson.OPT_UTC_Z))
        return {item["request_id"]: item for item in decoded}

    def visible_rows(
        self,
        endpoint_ids: Sequence[str],
        start: datetime,
        end: datetime,
        *,
        now: datetime | None = None,
    ) -> list[tuple[str, int, SimRequest | None]]:
        """(endpoint_id, filter-field µs, request-or-None-if-unfinished) of visible rows.

        The analytics operation counts the same requests the list operation returns, by
        the same timestamp; this is that selection without sorting or paging.
        """
        with self._lock:
            now_us = to_us(now) if now is not None else to_us(self.now())
            cfg = self._config
            ff = cfg.filter_field
            start_us, end_us = to_us(start), to_us(end)
            out: list[tuple[str, int, SimRequest | None]] = []
            for ep in self.match_endpoints(endpoint_ids):
                keys, rows = self._index(ep, ff)
                lo, hi = bisect_left(keys, start_us), bisect_left(keys, end_us)
                for k in range(lo, hi):
                    i = rows[k]
                    if self._recorded[i] > now_us or self._sent[i] > now_us:
                        continue
                    if self._ended[i] > now_us:
                        if ff == "ended_at" or not cfg.unfinished_visible:
                            continue
                        out.append((ep, keys[k], None))
                    else:
                        out.append((ep, keys[k], self._reqs[i]))
            return out

    def visible_counts(
        self,
        endpoint_ids: Sequence[str],
        start: datetime,
        end: datetime,
        buckets: Sequence[datetime],
        *,
        now: datetime | None = None,
    ) -> dict[str, list[int]]:
        """Per endpoint, how many of ``visible_rows(endpoint_ids, start, end)`` fall in each
        bucket: bucket k runs from ``buckets[k]`` to ``buckets[k + 1]`` (the last to ``end``),
        within [``start``, ``end``). Endpoints with none are left out.

        The count-only analytics answer (mirror's planning call) without a Python step per
        row: a bucket whose rows, and all rows before them in the index, have become visible
        (and ended, where unfinished rows are hidden) by ``now`` is counted by bisection; the
        buckets from the first row still to appear or end onwards (usually the last few) are
        walked row by row.
        """
        with self._lock:
            now_us = to_us(now) if now is not None else to_us(self.now())
            cfg = self._config
            ff = cfg.filter_field
            hide = ff == "ended_at" or not cfg.unfinished_visible
            start_us, end_us = to_us(start), to_us(end)
            bounds_us = [min(max(to_us(b), start_us), end_us) for b in buckets] + [end_us]
            out: dict[str, list[int]] = {}
            for ep in self.match_endpoints(endpoint_ids):
                keys, rows = self._index(ep, ff)
                settled = self._settled_prefix(ep, ff, hide, keys, rows)
                at = [bisect_left(keys, b) for b in bounds_us]
                counts = []
                for lo, hi in pairwise(at):
                    if hi <= lo:
                        counts.append(0)
                    elif settled[hi - 1] <= now_us:
                        counts.append(hi - lo)
                    else:
                        counts.append(
                            sum(1 for i in rows[lo:hi] if self._counts_from(i, hide) <= now_us)
                        )
                if any(counts):
                    out[ep] = counts
            return out

    def _settled_prefix(
        self, ep: str, field_name: str, hide: bool, keys: array[int], rows: array[int]
    ) -> array[int]:
        """For the index (``keys``, ``rows``): entry k is the latest instant at which any of
        its first k + 1 rows starts to count (appears; and ends, if unfinished ones are hidden).
        Rebuilt with the index (a mutation rebuilds that, with new arrays)."""
        key = (ep, field_name, hide)
        got = self._settled.get(key)
        if got is not None and got[0] is keys:
            return got[1]
        prefix = array("q")
        latest = -(2**63)
        for i in rows:
            latest = max(latest, self._counts_from(i, hide))
            prefix.append(latest)
        self._settled[key] = (keys, prefix)
        return prefix

    def _counts_from(self, i: int, hide: bool) -> int:
        """The instant row ``i`` starts to count in ``visible_rows``: it has appeared (been
        recorded and sent), and has ended too when unfinished rows are hidden (``hide``)."""
        appears = max(self._recorded[i], self._sent[i])
        return max(appears, self._ended[i]) if hide else appears

    def _item(self, i: int, now_us: int, view: ItemView) -> dict[str, Any]:
        req = self._reqs[i]
        finished = self._ended[i] <= now_us
        item: dict[str, Any] = {"request_id": req.request_id, "endpoint_id": req.endpoint_id}
        if view.serverless:
            item["runner_id"] = req.runner_id
        item["started_at"] = req.started_at
        item["sent_at"] = req.sent_at
        if finished:
            item["ended_at"] = req.ended_at
            item["status_code"] = req.status_code
            item["duration"] = req.duration
        else:
            item["ended_at"] = item["status_code"] = item["duration"] = None
        if view.payloads:
            item["json_input"] = req.json_input
            item["json_output"] = req.json_output if finished else None
        if view.serverless and view.billing:
            billed = finished and self._billing[i] <= now_us
            item["billable_units"] = req.billable_units if billed else None
        return item

    def _order(self, q: Query, now_us: int) -> list[int]:
        """Row indexes `q` selects at `now_us`, in the API's order (cached, never stale)."""
        if q.request_id is not None:
            return self._lookup(q, now_us)
        cfg = self._config
        endpoints = self.match_endpoints(q.endpoint_ids)
        key = (
            endpoints,
            None if q.start is None else to_us(q.start),
            None if q.end is None else to_us(q.end),
            q.status,
            q.sort_by,
            cfg.filter_field,
            cfg.sort_direction,
            cfg.nulls,
            cfg.unfinished_visible,
        )
        entry = self._cache.get(key)
        if (
            entry is not None
            and entry.version == self._version
            and entry.computed_at <= now_us < entry.valid_until
        ):
            self._cache.move_to_end(key)
            return entry.order
        order, valid_until = self._compute(q, endpoints, now_us)
        self._cache[key] = _CacheEntry(self._version, now_us, valid_until, order)
        self._cache.move_to_end(key)
        while len(self._cache) > _CACHE_ENTRIES:
            self._cache.popitem(last=False)
        return order

    def _compute(self, q: Query, endpoints: tuple[str, ...], now_us: int) -> tuple[list[int], int]:
        """Select and sort; also return the first instant at which the answer may change.

        That instant is the earliest pending event among the window's rows (one becomes
        visible or ends) and, for a window bound relative to now, the first row that the
        moving bound will take in or drop out.
        """
        cfg = self._config
        ff = cfg.filter_field
        lookback_us = q.lookback // _ONE_US
        start_us = to_us(q.start) if q.start is not None else now_us - lookback_us
        end_us = to_us(q.end) if q.end is not None else now_us
        next_event = NEVER_US
        candidates: list[int] = []
        for ep in endpoints:
            keys, rows = self._index(ep, ff)
            lo, hi = bisect_left(keys, start_us), bisect_left(keys, end_us)
            if q.start is None and lo < len(keys):
                next_event = min(next_event, keys[lo] + lookback_us + 1)
            if q.end is None and hi < len(keys):
                next_event = min(next_event, keys[hi] + 1)
            candidates.extend(rows[lo:hi])

        recorded, sent, ended, codes = self._recorded, self._sent, self._ended, self._status
        status = q.status
        hide_unfinished = ff == "ended_at" or status is not None or not cfg.unfinished_visible
        finished: list[int] = []
        unfinished: list[int] = []
        for i in candidates:
            appears = max(recorded[i], sent[i])
            if appears > now_us:
                next_event = min(next_event, appears)
                continue
            e = ended[i]
            if e > now_us:
                next_event = min(next_event, e)
                if not hide_unfinished:
                    unfinished.append(i)
            elif status is None or _status_matches(status, codes[i]):
                finished.append(i)

        rid = self._rid
        desc = cfg.sort_direction == "desc"
        sort_col: Sequence[float] = self._ended if q.sort_by == "ended_at" else self._duration
        finished.sort(key=lambda i: (sort_col[i], rid[i]), reverse=desc)
        unfinished.sort(key=rid.__getitem__, reverse=desc)
        order = unfinished + finished if cfg.nulls == "first" else finished + unfinished
        return order, next_event

    def _lookup(self, q: Query, now_us: int) -> list[int]:
        """The `request_id` filter: at most one row, so no index and no cache."""
        i = self._index_of.get(q.request_id or "")
        if i is None or self._reqs[i].endpoint_id not in self.match_endpoints(q.endpoint_ids):
            return []
        cfg = self._config
        start_us = to_us(q.start) if q.start is not None else now_us - q.lookback // _ONE_US
        end_us = to_us(q.end) if q.end is not None else now_us
        if max(self._recorded[i], self._sent[i]) > now_us:
            return []
        finished = self._ended[i] <= now_us
        if not finished and (
            cfg.filter_field == "ended_at" or q.status is not None or not cfg.unfinished_visible
        ):
            return []
        if not start_us <= self._column(cfg.filter_field)[i] < end_us:
            return []
        if q.status is not None and not _status_matches(q.status, self._status[i]):
            return []
        return [i]


def __getattr__(name: str) -> Any:
    """`generate_world` and `demo_world` live in generate.py; reachable from here too."""
    if name in ("generate_world", "demo_world"):
        from mirror.simulator import generate

        return getattr(generate, name)
    raise AttributeError(name)
