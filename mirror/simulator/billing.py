"""What the simulated platform charged: prices over time, who made each call, billing events
and usage lines, all derived from the world's requests.

Nothing here is stored per request: a `Ledger` reads the `World` and its `BillingConfig`
and derives, for every request, whether and when it is billed and for how much, the same
way every time. No random draw is involved (which key made a call is a hash of its
request id), so adding billing to a world leaves its seeded history exactly as it was.

The rules, where fal documents none (docs/fal-api.md, cost):

- A request is billed when it succeeded (2xx), has ``billable_units``, and its billing
  lands (``SimRequest.billing_at`` is set); requests to the account's own serverless apps
  are billed by machine time elsewhere, so they have no event unless
  ``BillingConfig.bill_owned``. Failed requests never have one.
- The event appears ``BillingConfig.lag`` after the later of the request's end and its
  ``billing_at``; before that the API does not show it.
- Its price is the endpoint's price in force when the request ended (`PriceBook`); its
  discount the endpoint's ``BillingConfig.discounts`` percentage. Amounts are computed in
  integer nano-USD (``output_units × unit_price``, rounded half to even, minus the
  discount, rounded the same way), so ``cost_total`` and ``cost_estimate_nano_usd`` always
  agree and usage totals are exact sums of the events.
- Its ``timestamp`` is the request's ``ended_at`` (``BillingConfig.timestamp`` switches to
  ``sent_at`` or to the moment the event appeared), and ``start``/``end`` select on it.
"""

from __future__ import annotations

import hashlib
import threading
from bisect import bisect_left
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import ROUND_HALF_EVEN, Decimal
from typing import Any, Literal

from mirror.simulator.generate import billing_unit
from mirror.simulator.world import NEVER_US, World, from_us, to_us

__all__ = [
    "DEFAULT_CALLERS",
    "NANO",
    "BillingConfig",
    "BillingEvent",
    "Caller",
    "EventQuery",
    "Ledger",
    "Price",
    "PriceBook",
    "usage_lines",
]

#: nano-units per unit of currency
NANO = 1_000_000_000
#: the price of one unit by default, in nano-USD, by unit
_BASE_NANO = {
    "image": 25_000_000,
    "megapixel": 1_500_000,
    "minute": 1_100_000,
    "gpu_second": 1_110_000,
}
#: the default price rule's factor (percent) after 0, 1, 2... of a `PriceBook`'s changes
_STEPS = (100, 120, 90)
_CACHE_ENTRIES = 16
_ONE_US = timedelta(microseconds=1)


@dataclass(frozen=True, slots=True)
class Price:
    """One endpoint's price per unit: ``nano`` billionths of ``currency`` per ``unit``."""

    nano: int
    unit: str
    currency: str = "USD"

    @property
    def unit_price(self) -> float:
        """As the API shows it: a number of ``currency``."""
        return self.nano / NANO


class PriceBook:
    """Each endpoint's price over time.

    ``schedules`` gives endpoints explicit prices: ``[(since, Price), ...]``, each in force
    from its ``since`` until the next one (the first also before its ``since``). Any other
    endpoint follows the default rule: a base price for its unit
    (`mirror.simulator.generate.billing_unit`), times 100 %, then 120 %, then 90 %... at each
    instant of ``changes`` (the same instants for every such endpoint), so that a price
    seen today is not the one past requests were charged.
    """

    def __init__(
        self,
        schedules: Mapping[str, Sequence[tuple[datetime, Price]]] | None = None,
        *,
        changes: Iterable[datetime] = (),
    ) -> None:
        # endpoint -> (the instants its prices start, in order; those prices)
        self._schedules: dict[str, tuple[list[int], list[Price]]] = {}
        for endpoint, steps in (schedules or {}).items():
            ordered = sorted(((to_us(since), price) for since, price in steps), key=lambda s: s[0])
            if ordered:
                self._schedules[endpoint] = ([at for at, _ in ordered], [p for _, p in ordered])
        self._changes = sorted(to_us(when) for when in changes)

    def price_at(self, endpoint_id: str, when: datetime) -> Price:
        """The price in force for ``endpoint_id`` at ``when``."""
        return self.price_at_us(endpoint_id, to_us(when))

    def price_at_us(self, endpoint_id: str, when_us: int) -> Price:
        schedule = self._schedules.get(endpoint_id)
        if schedule is not None:
            sinces, prices = schedule
            return prices[max(0, bisect_left(sinces, when_us + 1) - 1)]
        unit = billing_unit(endpoint_id)
        base = _BASE_NANO.get(unit, NANO // 1000)
        step = bisect_left(self._changes, when_us + 1)
        return Price(base * _STEPS[step % len(_STEPS)] // 100, unit)


@dataclass(frozen=True, slots=True)
class Caller:
    """Who made a call, as billing shows it: the ``auth_method`` label and the
    ``auth_method_structured`` object (``detail``, and the key id or the team member)."""

    label: str
    detail: str
    api_key_id: str | None = None
    login_username: str | None = None

    def structured(self) -> dict[str, str]:
        out = {"detail": self.detail}
        if self.api_key_id is not None:
            out["api_key_id"] = self.api_key_id
        if self.login_username is not None:
            out["login_username"] = self.login_username
        return out


#: two API keys (the first the simulator's own key id) and a team member's login token
DEFAULT_CALLERS = (
    Caller("Production key", "Production key", api_key_id="sim-key-id"),
    Caller("CI key", "CI key", api_key_id="sim-ci-key-id"),
    Caller("User token", "alice", login_username="alice"),
)

Timestamp = Literal["ended_at", "sent_at", "billed_at"]


@dataclass(frozen=True)
class BillingConfig:
    """Switches for what fal leaves open about billing (docs/fal-api.md, cost).

    ``prices``: every endpoint's price over time. ``callers``: who makes the calls (each
    request's caller is picked by a hash of its id). ``discounts``: percent off, by
    endpoint id. ``lag``: how long after a request's billing lands its event appears.
    ``timestamp``: which instant an event's ``timestamp`` is, and ``start``/``end`` select
    on. ``bill_owned``: whether calls to the account's own apps have events too.
    """

    prices: PriceBook = field(default_factory=PriceBook)
    callers: tuple[Caller, ...] = DEFAULT_CALLERS
    discounts: Mapping[str, int] = field(default_factory=dict)
    lag: timedelta = timedelta(minutes=2)
    timestamp: Timestamp = "ended_at"
    bill_owned: bool = False

    def __post_init__(self) -> None:
        if self.timestamp not in ("ended_at", "sent_at", "billed_at"):
            raise ValueError(
                f"timestamp must be ended_at, sent_at or billed_at, not {self.timestamp!r}"
            )
        if not self.callers:
            raise ValueError("billing needs at least one caller")
        if self.lag < timedelta(0):
            raise ValueError("lag must not be negative")
        for endpoint_id, percent in self.discounts.items():
            if not 0 <= percent <= 100:
                raise ValueError(f"discount of {endpoint_id} must be 0-100 percent")


@dataclass(frozen=True, slots=True)
class BillingEvent:
    """One billed request, as the ledger derives it (instants in µs since the epoch)."""

    request_id: str
    endpoint_id: str
    timestamp_us: int
    appears_us: int
    output_units: float
    price: Price
    percent_discount: int | None
    subtotal_nano: int
    discount_nano: int
    caller: Caller

    @property
    def total_nano(self) -> int:
        return self.subtotal_nano - self.discount_nano

    def item(self, *, auth_method: bool = False, structured: bool = False) -> dict[str, Any]:
        """The event as ``/models/billing-events`` serves it (``timestamp`` a datetime)."""
        out: dict[str, Any] = {
            "request_id": self.request_id,
            "endpoint_id": self.endpoint_id,
            "timestamp": from_us(self.timestamp_us),
            "output_units": self.output_units,
            "unit_price": self.price.unit_price,
            "percent_discount": self.percent_discount,
            "cost_subtotal": self.subtotal_nano / NANO,
            "cost_discount": self.discount_nano / NANO,
            "cost_total": self.total_nano / NANO,
            "cost_estimate_nano_usd": self.total_nano,
        }
        if auth_method:
            out["auth_method"] = self.caller.label
        if structured:
            out["auth_method_structured"] = self.caller.structured()
        return out


@dataclass(frozen=True, slots=True)
class EventQuery:
    """One billing-events (or usage) call's filters, bounds resolved; empty means any."""

    start: datetime
    end: datetime
    endpoint_ids: tuple[str, ...] = ()
    request_ids: tuple[str, ...] = ()
    api_key_ids: tuple[str, ...] = ()
    login_usernames: tuple[str, ...] = ()


def _nano(amount: Decimal) -> int:
    return int(amount.to_integral_value(rounding=ROUND_HALF_EVEN))


def _hash(text: str) -> int:
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "big")


class Ledger:
    """The billing side of a `World`: its events and usage at any instant.

    The events are derived from the requests once per world version (and config), sorted
    by ``timestamp``; each call then selects by bisection and by when each event appears.
    Thread-safe: the server calls it from its handler threads.
    """

    def __init__(self, world: World, config: BillingConfig | None = None) -> None:
        self.world = world
        self._config = config or BillingConfig()
        self._lock = threading.Lock()
        self._built: tuple[int, BillingConfig] | None = None
        self._events: list[BillingEvent] = []
        self._keys: list[int] = []
        # query -> (what it was built from, computed at, valid until, answer)
        self._cache: dict[EventQuery, tuple[Any, int, int, list[BillingEvent]]] = {}

    @property
    def config(self) -> BillingConfig:
        return self._config

    @config.setter
    def config(self, value: BillingConfig) -> None:
        with self._lock:
            self._config = value
            self._built = None

    def billed(self, endpoint_id: str) -> bool:
        """Whether calls to this endpoint are billed per request (and priced)."""
        return self._config.bill_owned or not self.world.owns(endpoint_id)

    def price_at(self, endpoint_id: str, when: datetime) -> Price | None:
        """The endpoint's price at ``when``; None for one that is not billed per request."""
        if not self.billed(endpoint_id):
            return None
        return self._config.prices.price_at(endpoint_id, when)

    def caller_of(self, request_id: str) -> Caller:
        callers = self._config.callers
        return callers[_hash(request_id) % len(callers)]

    def all_events(self) -> list[BillingEvent]:
        """Every event the world's requests will ever have, oldest ``timestamp`` first
        (whether it has appeared yet or not)."""
        return self._snapshot()[1]

    def _snapshot(self) -> tuple[Any, list[BillingEvent], list[int]]:
        """(what they were derived from, the events, their timestamps), derived again if
        the world or the config changed since."""
        with self._lock:
            version = self.world.version
            if self._built != (version, self._config):
                self._events = self._derive()
                self._keys = [e.timestamp_us for e in self._events]
                self._built = (version, self._config)
                self._cache.clear()
            return self._built, self._events, self._keys

    def _derive(self) -> list[BillingEvent]:
        cfg = self._config
        lag_us = cfg.lag // _ONE_US
        out = []
        for req in self.world:
            if (
                req.billable_units is None
                or req.billing_at is None
                or not 200 <= req.status_code <= 299
                or not self.billed(req.endpoint_id)
            ):
                continue
            ended = to_us(req.ended_at)
            appears = max(ended, to_us(req.billing_at)) + lag_us
            stamp = {"ended_at": ended, "sent_at": to_us(req.sent_at), "billed_at": appears}
            price = cfg.prices.price_at_us(req.endpoint_id, ended)
            subtotal = _nano(Decimal(repr(req.billable_units)) * price.nano)
            percent = cfg.discounts.get(req.endpoint_id)
            discount = _nano(Decimal(subtotal) * percent / 100) if percent else 0
            out.append(
                BillingEvent(
                    request_id=req.request_id,
                    endpoint_id=req.endpoint_id,
                    timestamp_us=stamp[cfg.timestamp],
                    appears_us=appears,
                    output_units=req.billable_units,
                    price=price,
                    percent_discount=percent,
                    subtotal_nano=subtotal,
                    discount_nano=discount,
                    caller=self.caller_of(req.request_id),
                )
            )
        out.sort(key=lambda e: (e.timestamp_us, e.request_id))
        return out

    def select(self, q: EventQuery, now: datetime) -> list[BillingEvent]:
        """The events ``q`` selects at ``now``, newest ``timestamp`` first (ties: request id,
        descending): only those that have appeared by ``now``.

        An answer is kept until the world changes or the next event of its range appears,
        so that paging a large range costs a slice per page.
        """
        built, events, keys = self._snapshot()
        now_us = to_us(now)
        with self._lock:
            cached = self._cache.get(q)
            if cached is not None and cached[0] == built and cached[1] <= now_us < cached[2]:
                return cached[3]
        lo, hi = bisect_left(keys, to_us(q.start)), bisect_left(keys, to_us(q.end))
        endpoints, ids = set(q.endpoint_ids), set(q.request_ids)
        key_ids, users = set(q.api_key_ids), set(q.login_usernames)
        out = []
        next_change = NEVER_US
        for k in range(hi - 1, lo - 1, -1):
            e = events[k]
            if endpoints and e.endpoint_id not in endpoints:
                continue
            if ids and e.request_id not in ids:
                continue
            if (key_ids or users) and not (
                e.caller.api_key_id in key_ids or e.caller.login_username in users
            ):
                continue
            if e.appears_us > now_us:
                next_change = min(next_change, e.appears_us)
                continue
            out.append(e)
        with self._lock:
            self._cache[q] = (built, now_us, next_change, out)
            while len(self._cache) > _CACHE_ENTRIES:
                self._cache.pop(next(iter(self._cache)))
        return out


def usage_lines(
    events: Iterable[BillingEvent], *, auth_method: bool = False, structured: bool = False
) -> list[dict[str, Any]]:
    """``/models/usage`` result lines for a group of events: one per endpoint, unit,
    price, discount (and caller, when asked to show it), amounts summed exactly in nano
    units, then shown as numbers of the currency. Sorted by endpoint, unit, price."""
    groups: dict[tuple[Any, ...], list[BillingEvent]] = {}
    for e in events:
        caller = e.caller if (auth_method or structured) else None
        key = (e.endpoint_id, e.price.unit, e.price.nano, e.price.currency,
               e.percent_discount, caller)  # fmt: skip
        groups.setdefault(key, []).append(e)
    out = []
    for key in sorted(groups, key=lambda k: (k[0], k[1], k[2], k[3], k[4] or 0, str(k[5]))):
        endpoint_id, unit, nano, currency, percent, caller = key
        group = groups[key]
        subtotal = sum(e.subtotal_nano for e in group)
        discount = sum(e.discount_nano for e in group)
        line: dict[str, Any] = {
            "endpoint_id": endpoint_id,
            "unit": unit,
            "quantity": round(sum(e.output_units for e in group), 6),
            "unit_price": nano / NANO,
            "percent_discount": percent,
            "cost_subtotal": subtotal / NANO,
            "cost_discount": discount / NANO,
            "cost_total": (subtotal - discount) / NANO,
            "cost": (subtotal - discount) / NANO,
            "currency": currency,
        }
        if auth_method and caller is not None:
            line["auth_method"] = caller.label
        if structured and caller is not None:
            line["auth_method_structured"] = caller.structured()
        out.append(line)
    return out
