"""Time-bucketed counts for `GET /v1/serverless/analytics` (docs/fal-api.md, request counts).

The counts describe the same requests the list operation returns, bucketed by the same
timestamp (`WorldConfig.filter_field`), so a mirror can compare its own per-bucket counts
with them to spot windows it is missing rows in. What the spec leaves open is decided
here and written down: buckets are dense (every period of the range, even empty ones),
but a bucket's `results` hold only endpoint ids that have requests in it (GROUP BY
semantics; ids stay route-level as recorded); percentiles interpolate linearly between
closest ranks and are omitted when a group has no finished request.
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, tzinfo
from typing import Any, Literal, TypeVar

from mirror.simulator.params import invalid
from mirror.simulator.world import SimRequest, World, to_us

T = TypeVar("T")

__all__ = [
    "METRICS",
    "TIMEFRAMES",
    "AnalyticsRange",
    "asked_range",
    "auto_timeframe",
    "bucket_starts",
    "compute",
    "resolve_range",
]

Timeframe = Literal["minute", "hour", "day", "week", "month"]
TIMEFRAMES: tuple[Timeframe, ...] = ("minute", "hour", "day", "week", "month")
_COUNTS = (
    "request_count",
    "success_count",
    "user_error_count",
    "error_count",
    "startup_error_count",
    "connection_error_count",
    "timeout_error_count",
    "runtime_error_count",
    "cold_boot_count",
)
_PERCENTILES = {
    "p25_duration": ("duration", 25),
    "p50_duration": ("duration", 50),
    "p75_duration": ("duration", 75),
    "p90_duration": ("duration", 90),
    "p95_duration": ("duration", 95),
    "p99_duration": ("duration", 99),
    "p50_prepare_duration": ("prepare", 50),
    "p75_prepare_duration": ("prepare", 75),
    "p90_prepare_duration": ("prepare", 90),
    "p95_prepare_duration": ("prepare", 95),
    "p99_prepare_duration": ("prepare", 99),
    "p50_cold_boot_duration": ("cold", 50),
    "p75_cold_boot_duration": ("cold", 75),
    "p90_cold_boot_duration": ("cold", 90),
}
#: Every metric `expand` may name, in the order the spec lists them.
METRICS: tuple[str, ...] = (*_COUNTS, *_PERCENTILES, "total_billable_duration")
_MAX_BUCKETS = 50_000
_COLD_BOOT_S = 1.0


def auto_timeframe(start: datetime, end: datetime) -> Timeframe:
    """The documented auto-detection: minute (<2h), hour (<2d), day (<64d), week (<183d),
    month otherwise."""
    span = end - start
    if span < timedelta(hours=2):
        return "minute"
    if span < timedelta(days=2):
        return "hour"
    if span < timedelta(days=64):
        return "day"
    if span < timedelta(days=183):
        return "week"
    return "month"


def _floor(when: datetime, timeframe: Timeframe, tz: tzinfo) -> datetime:
    """Start (in UTC) of the period containing `when`, periods laid out in `tz`."""
    local = when.astimezone(tz)
    if timeframe == "minute":
        local = local.replace(second=0, microsecond=0)
    elif timeframe == "hour":
        local = local.replace(minute=0, second=0, microsecond=0)
    else:
        day = datetime(local.year, local.month, local.day, tzinfo=tz)
        if timeframe == "week":  # ISO weeks start on Monday
            day -= timedelta(days=local.weekday())
            day = datetime(day.year, day.month, day.day, tzinfo=tz)
        elif timeframe == "month":
            day = datetime(local.year, local.month, 1, tzinfo=tz)
        local = day
    return local.astimezone(UTC)


def _next(start: datetime, timeframe: Timeframe, tz: tzinfo) -> datetime:
    """Start of the period after the one starting at `start` (UTC in, UTC out).

    Minutes and hours step in absolute time (a DST change does not make an hour bucket
    longer); days, weeks and months step on the local calendar (a DST day has 23 or 25 h).
    """
    if timeframe == "minute":
        return start + timedelta(minutes=1)
    if timeframe == "hour":
        return start + timedelta(hours=1)
    local = start.astimezone(tz)
    if timeframe == "month":
        year, month = (local.year + 1, 1) if local.month == 12 else (local.year, local.month + 1)
        return datetime(year, month, 1, tzinfo=tz).astimezone(UTC)
    step = 7 if timeframe == "week" else 1
    nxt = local.date() + timedelta(days=step)
    return datetime(nxt.year, nxt.month, nxt.day, tzinfo=tz).astimezone(UTC)


def bucket_starts(
    start: datetime, end: datetime, timeframe: Timeframe, tz: tzinfo
) -> list[datetime]:
    """Starts (UTC) of every period overlapping `[start, end)`, oldest first."""
    out: list[datetime] = []
    cur = _floor(start, timeframe, tz)
    while cur < end:
        out.append(cur)
        if len(out) > _MAX_BUCKETS:
            raise ValueError(
                f"the range holds more than {_MAX_BUCKETS} {timeframe} buckets; "
                "use a shorter range or a coarser timeframe"
            )
        cur = _next(cur, timeframe, tz)
    return out


@dataclass(frozen=True, slots=True)
class AnalyticsRange:
    """The effective range and buckets of one analytics call."""

    start: datetime
    end: datetime
    timeframe: Timeframe
    buckets: list[datetime]


def resolve_range(
    start: datetime,
    end: datetime,
    timeframe: Timeframe | None,
    tz: tzinfo,
    *,
    bound_to_timeframe: bool,
) -> AnalyticsRange:
    """Apply auto-detection and `bound_to_timeframe` to a requested range.

    Bound (the default): start moves back to the start of its period and end forward to
    the next period boundary unless it already is one, which keeps `end` exclusive as
    documented. Unbound: the exact range is counted; buckets still follow the calendar,
    so the first and last may be partial.
    """
    tf = timeframe or auto_timeframe(start, end)
    if bound_to_timeframe:
        start = _floor(start, tf, tz)
        floor_end = _floor(end, tf, tz)
        end = floor_end if floor_end == end else _next(floor_end, tf, tz)
    return AnalyticsRange(start, end, tf, bucket_starts(start, end, tf, tz))


def asked_range(
    start: datetime, end: datetime, timeframe: str | None, tz: tzinfo, bound: str
) -> AnalyticsRange:
    """`resolve_range` of a call's parameters (``timeframe`` one of `TIMEFRAMES` or None,
    ``bound`` the text of ``bound_to_timeframe``); a range it cannot resolve is a 400."""
    try:
        return resolve_range(
            start,
            end,
            timeframe,  # type: ignore[arg-type]
            tz,
            bound_to_timeframe=bound == "true",
        )
    except (ValueError, OverflowError) as err:
        raise invalid(str(err)) from None


def _percentile(values: Sequence[float], p: float) -> float:
    """Linear interpolation between closest ranks (numpy's default) of sorted values."""
    k = (len(values) - 1) * p / 100
    lo = int(k)
    hi = min(lo + 1, len(values) - 1)
    return round(values[lo] + (values[hi] - values[lo]) * (k - lo), 6)


def _metrics(
    endpoint_id: str, rows: Iterable[SimRequest | None], metrics: Sequence[str]
) -> dict[str, Any]:
    """One result record: the requested metrics over one group of rows (None = unfinished)."""
    counts = dict.fromkeys(_COUNTS, 0)
    durations: list[float] = []
    prepares: list[float] = []
    colds: list[float] = []
    for req in rows:
        counts["request_count"] += 1
        if req is None:
            continue
        code = req.status_code
        if 200 <= code <= 299:
            counts["success_count"] += 1
        elif 400 <= code <= 499:
            counts["user_error_count"] += 1
        elif 500 <= code <= 599:
            counts["error_count"] += 1
            if req.runner_id is None:
                counts["startup_error_count"] += 1
            elif code == 504:
                counts["timeout_error_count"] += 1
            elif code in (502, 503):
                counts["connection_error_count"] += 1
            else:
                counts["runtime_error_count"] += 1
        durations.append(req.duration)
        prepare = (req.started_at - req.sent_at).total_seconds()
        prepares.append(prepare)
        if prepare > _COLD_BOOT_S:
            counts["cold_boot_count"] += 1
            colds.append(prepare)
    series = {"duration": sorted(durations), "prepare": sorted(prepares), "cold": sorted(colds)}
    record: dict[str, Any] = {"endpoint_id": endpoint_id}
    for name in metrics:
        if name in counts:
            record[name] = counts[name]
        elif name == "total_billable_duration":
            record[name] = round(sum(durations), 6)
        else:
            which, p = _PERCENTILES[name]
            values = series[which]
            if values:
                record[name] = _percentile(values, p)
    return record


def compute(
    world: World,
    endpoint_ids: Sequence[str],
    rng: AnalyticsRange,
    tz: tzinfo,
    metrics: Sequence[str],
    *,
    now: datetime,
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """All time-series buckets (oldest first) and the summary, for the requested metrics."""
    if set(metrics) <= {"request_count"}:
        # mirror's planning call, counts only: the same records from World.visible_counts
        # instead of the rows themselves
        counts = world.visible_counts(endpoint_ids, rng.start, rng.end, rng.buckets, now=now)

        def count(ep: str, n: int) -> dict[str, Any]:
            return {"endpoint_id": ep} | dict.fromkeys(metrics, n)

        per_bucket = [
            {ep: n[k] for ep, n in counts.items() if n[k]} for k in range(len(rng.buckets))
        ]
        return _answer(rng, tz, per_bucket, {ep: sum(n) for ep, n in counts.items()}, count)
    starts = [to_us(b) for b in rng.buckets]
    groups: list[dict[str, list[SimRequest | None]]] = [{} for _ in starts]
    totals: dict[str, list[SimRequest | None]] = {}
    for endpoint_id, at_us, req in world.visible_rows(endpoint_ids, rng.start, rng.end, now=now):
        k = bisect_right(starts, at_us) - 1
        if k < 0:
            continue
        groups[k].setdefault(endpoint_id, []).append(req)
        totals.setdefault(endpoint_id, []).append(req)
    return _answer(rng, tz, groups, totals, lambda ep, rows: _metrics(ep, rows, metrics))


def _answer(
    rng: AnalyticsRange,
    tz: tzinfo,
    groups: Sequence[Mapping[str, T]],
    totals: Mapping[str, T],
    record: Callable[[str, T], dict[str, Any]],
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The buckets (one per range bucket, its endpoints' records in id order) and the
    summary, from each bucket's groups and the totals, by endpoint id."""
    series = [
        {
            "bucket": bucket.astimezone(tz).isoformat(),
            "results": [record(ep, g) for ep, g in sorted(group.items())],
        }
        for bucket, group in zip(rng.buckets, groups, strict=True)
    ]
    return series, [record(ep, t) for ep, t in sorted(totals.items())]
