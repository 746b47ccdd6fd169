"""`mirror report`: what the report shows, assembled from the query layer; `write_report`.

Every figure comes from ``mirror.query``'s public functions, so the report's numbers are
`mirror stats`'s numbers for the same filters, and as fast: ``query.stats`` answers from
the hourly summary (``summary_hourly``) and the covering index wherever the filters line up
with whole hours, which is why the range is widened to whole hours here (`plan_range`).

- requests per hour or day, by status, and p50/p95/p99 of the durations: in total
  (``stats --by hour``) and per endpoint (``stats --by endpoint,hour``), for the endpoints
  with the most requests (at most `MAX_VIEWS`). These are the only two passes over the
  durations; every endpoint is named in the filters (`every_endpoint`) so that both read
  the covering index;
- the summary, per endpoint and in total, and the billable units per day: the same rows
  summed (`summed`; units exactly, in millionths, ``query.micro_units``), so they equal
  ``stats``, ``stats --by endpoint`` and ``stats --by endpoint,day`` (but for the
  percentiles over the whole range, which cannot be summed and are left out). Spend needs
  the price of a unit, which is not mirrored yet: the report says so;
- the slowest and the latest failing requests (``query.select_requests``), asked only of
  the hours that can hold them (`_slowest`, `_latest_failed`), with links to their rows in
  `mirror browse` (Datasette) for a SQLite mirror;
- the mirror's own health (``mirror.health``): coverage, gaps, unfinished rows, last runs,
  and the problems `mirror status --check` would report.

`report_data` returns plain JSON-able data; ``mirror.report_html`` draws it. Nothing here
prints or knows click.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from mirror import health, query, report_html
from mirror.db import display_db, sqlite_path
from mirror.errors import ConfigError, OutputError
from mirror.outfile import check_writable
from mirror.schema import STATUSES
from mirror.timeparse import to_text, utcnow

BUCKETS = ("hour", "day")
#: the range when --since is not given
DEFAULT_SPAN = timedelta(days=7)
#: ranges up to this long are drawn per hour unless --by says otherwise; longer ones per day
HOURLY_UP_TO = timedelta(days=14)
#: the most points a series may have (an hour for 83 days): past it the page gets slow
MAX_POINTS = 2000
#: the endpoints drawn one by one, the busiest first
MAX_VIEWS = 25
#: rows in the slowest and the failing tables
TOP = 20
#: where `mirror browse` serves by default
DEFAULT_BROWSE_URL = "http://127.0.0.1:8001"
#: the columns of the request tables, in order
REQUEST_COLUMNS = ("request_id", "endpoint_id", "status", "status_code", "duration", "ended_at")
#: the fields of a stats row the charts and tables use
TIMELINE_FIELDS = ("success", "user_error", "error", "p50", "p95", "p99")
RUNS_SHOWN = 10


@dataclass(frozen=True)
class ReportOptions:
    """What the report is about: ``since``/``until`` on ``ended_at`` (default: the last
    `DEFAULT_SPAN`), endpoints (app ids cover their routes), and the bucket (``hour`` or
    ``day``; None: by the range's length)."""

    endpoints: tuple[str, ...] = ()
    since: datetime | None = None
    until: datetime | None = None
    by: str | None = None
    #: `mirror browse`'s address; None: no links
    browse_url: str | None = DEFAULT_BROWSE_URL


@dataclass(frozen=True)
class ReportSummary:
    """What `write_report` wrote, for the command's one line."""

    path: Path
    bytes: int
    requests: int
    endpoints: int
    since: str
    until: str
    by: str


def plan_range(opts: ReportOptions, now: datetime) -> tuple[datetime, datetime, str]:
    """The range widened to whole hours (since down, until up) and the bucket, checked."""
    until = opts.until or now
    since = opts.since or until - DEFAULT_SPAN
    since = since.replace(minute=0, second=0, microsecond=0)
    floored = until.replace(minute=0, second=0, microsecond=0)
    until = floored if floored == until else floored + timedelta(hours=1)
    if until <= since:
        raise ConfigError("--until must be after --since")
    span = until - since
    by = opts.by or ("hour" if span <= HOURLY_UP_TO else "day")
    if by not in BUCKETS:
        raise ConfigError(f"cannot group the report by {by!r}; use hour or day")
    points = span / timedelta(hours=1 if by == "hour" else 24)
    if points > MAX_POINTS:
        raise ConfigError(
            f"--by {by} over {span.days} days would draw {int(points):,} points per series "
            f"(at most {MAX_POINTS:,}): use --by day or a shorter range"
        )
    return since, until, by


def check_browse_url(url: str | None) -> str | None:
    if not url:
        return None
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ConfigError(f"--browse-url {url!r} is not an http(s) URL")
    return url.rstrip("/")


def tilde_encode(text: str) -> str:
    """Datasette's encoding of a name in a URL path: letters, digits, ``_`` and ``-`` stay,
    a space is ``+``, every other byte is ``~XX`` (its hex)."""
    out = []
    for b in text.encode("utf-8"):
        c = chr(b)
        if c.isascii() and (c.isalnum() or c in "_-"):
            out.append(c)
        elif c == " ":
            out.append("+")
        else:
            out.append(f"~{b:02X}")
    return "".join(out)


def browse_link(browse_url: str, database: str, request_id: str) -> str:
    """The request's row in `mirror browse`: ``BASE/DATABASE/requests/ID``, tilde-encoded."""
    return f"{browse_url}/{tilde_encode(database)}/requests/{tilde_encode(request_id)}"


def plot_x(key: str, by: str) -> str:
    """A stats time key as the chart's x: ``2026-11-28T10:00:00Z`` -> ``2026-11-28 10:00``
    (the axis is UTC); a day stays ``2026-11-28``."""
    return key[:16].replace("T", " ") if by == "hour" else key


def check_endpoints(conn: Connection, endpoints: Iterable[str]) -> None:
    """Refuse an endpoint the mirror holds no request of (ConfigError), naming it."""
    for e in endpoints:
        found = query.select_requests(
            conn, query.Filters(endpoints=(e,)), columns=("request_id",), limit=1
        )
        if next(found, None) is None:
            raise ConfigError(
                f"the mirror holds no request of endpoint {e!r} "
                "(mirror stats --by endpoint lists the ones it holds)"
            )


_EVERY_ENDPOINT = sa.text(
    """
    WITH RECURSIVE ids(id) AS (
        SELECT min(endpoint_id) FROM requests
        UNION ALL
        SELECT (SELECT min(endpoint_id) FROM requests WHERE endpoint_id > ids.id)
        FROM ids WHERE ids.id IS NOT NULL
    )
    SELECT id FROM ids WHERE id IS NOT NULL
    """
)


def every_endpoint(conn: Connection) -> tuple[str, ...]:
    """Every endpoint id the mirror holds, found by a loose index scan (a seek per id).

    A report of every endpoint names them all in its filters: given endpoints and a time
    range, the planner reads the covering index ``(endpoint_id, ended_at, …)`` one range per
    endpoint; given only the time range, it takes the ``ended_at`` index and fetches every
    row from the table, several times slower on a big mirror (bench/report_bench.py).
    """
    return tuple(row[0] for row in conn.execute(_EVERY_ENDPOINT))


def _timeline(rows: Sequence[dict[str, Any]], by: str, name: str) -> dict[str, Any]:
    kept = [r for r in rows if r[by] is not None]  # unfinished requests have no bucket
    view: dict[str, Any] = {"name": name, "x": [plot_x(r[by], by) for r in kept]}
    for f in TIMELINE_FIELDS:
        view[f] = [r[f] for r in kept]
    return view


def _units_per_day(rows: Sequence[dict[str, Any]], by: str) -> list[dict[str, Any]]:
    """Per endpoint, its billable units per day, from the endpoint/bucket rows, exactly."""
    per: dict[str, dict[str, int]] = {}
    for r in rows:
        if r[by] is None:
            continue
        day = r[by][:10]
        days = per.setdefault(r["endpoint"], {})
        days[day] = days.get(day, 0) + query.micro_units(r["billable_units"])
    return [
        {"name": ep, "x": sorted(days), "y": [days[d] / 1_000_000 for d in sorted(days)]}
        for ep, days in sorted(per.items())
    ]


def summed(rows: Sequence[dict[str, Any]], keys: Sequence[str]) -> list[dict[str, Any]]:
    """Stats rows of finer groups summed into the groups of ``keys`` (``()``: one row):
    the counts, the longest duration and the billable units (exactly, in millionths), with
    the rates as ``query.stats_row`` works them out; percentiles cannot be summed and are
    left out (None)."""
    acc: dict[tuple[Any, ...], tuple[dict[str, int], list[float], list[int]]] = {}
    for r in rows:
        key = tuple(r[k] for k in keys)
        counts, longest, micro = acc.setdefault(key, (dict.fromkeys(STATUSES, 0), [], [0]))
        for status in STATUSES:
            counts[status] += r[status]
        if r["max"] is not None:
            longest.append(r["max"])
        micro[0] += query.micro_units(r["billable_units"])
    if not acc and not keys:
        acc[()] = (dict.fromkeys(STATUSES, 0), [], [0])
    none = [None] * len(query.PERCENTILES)
    return [
        query.stats_row(keys, key, counts, none, max(longest, default=None), micro[0])
        for key, (counts, longest, micro) in sorted(acc.items())
    ]


def bucket_range(key: str, by: str, since: datetime, until: datetime) -> tuple[datetime, datetime]:
    """The stretch of ``[since, until)`` a stats time key (an hour or a day) covers."""
    if by == "hour":
        start = datetime.fromisoformat(key.replace("Z", "+00:00"))
        return max(start, since), min(start + timedelta(hours=1), until)
    start = datetime.fromisoformat(key).replace(tzinfo=UTC)
    return max(start, since), min(start + timedelta(days=1), until)


def report_data(conn: Connection, db: str, opts: ReportOptions, *, now: datetime) -> dict[str, Any]:
    """Everything the report shows, as plain data (see the module's docstring)."""
    since, until, by = plan_range(opts, now)
    browse_url = check_browse_url(opts.browse_url)
    check_endpoints(conn, opts.endpoints)
    endpoints = opts.endpoints or every_endpoint(conn)
    filters = query.Filters(endpoints=endpoints, since=since, until=until)
    ep_rows = query.stats(conn, filters, by=["endpoint", by])
    total_rows = query.stats(conn, filters, by=[by]) if ep_rows else []
    totals = summed(ep_rows, ())[0]
    per_endpoint = summed(ep_rows, ("endpoint",))
    busiest = sorted(per_endpoint, key=lambda r: (-r["requests"], r["endpoint"]))[:MAX_VIEWS]
    views = [_timeline(total_rows, by, "all endpoints")] if total_rows else []
    for ep in sorted(r["endpoint"] for r in busiest):
        views.append(_timeline([r for r in ep_rows if r["endpoint"] == ep], by, ep))
    path = sqlite_path(db)
    database = path.stem if path is not None else None

    def listed(f: query.Filters, sort: str) -> list[dict[str, Any]]:
        out = []
        for row in query.select_requests(conn, f, columns=REQUEST_COLUMNS, sort=sort, limit=TOP):
            item = dict(zip(REQUEST_COLUMNS, row, strict=True))
            if browse_url and database is not None:
                item["link"] = browse_link(browse_url, database, item["request_id"])
            out.append(item)
        return out

    slowest = _slowest(listed, filters, ep_rows, by)
    failing = _latest_failed(listed, filters, total_rows, by)
    snap = health.read_health(conn, db, now=now)
    return {
        "database": display_db(db),
        "generated_at": to_text(now)[:19] + "Z",
        "since": to_text(since)[:16] + "Z",
        "until": to_text(until)[:16] + "Z",
        "by": by,
        "endpoints": list(opts.endpoints),
        "totals": totals,
        "per_endpoint": per_endpoint,
        "views": views,
        "views_left_out": max(0, len(per_endpoint) - MAX_VIEWS),
        "units": _units_per_day(ep_rows, by),
        "request_columns": list(REQUEST_COLUMNS),
        "slowest": slowest,
        "failing": failing,
        "browse_url": browse_url if database is not None else None,
        "health": _health_data(snap),
    }


def _slowest(
    listed: Callable[[query.Filters, str], list[dict[str, Any]]],
    filters: query.Filters,
    ep_rows: Sequence[dict[str, Any]],
    by: str,
) -> list[dict[str, Any]]:
    """The `TOP` slowest requests of ``filters``, asked only of the groups that can hold them.

    Sorting a range by duration reads every row of it from the table; but the groups
    (endpoint and hour or day) say their longest duration and their p99. With ``T`` the
    `TOP`-th largest longest, at least `TOP` requests last ``T`` or more, all in the groups
    whose longest reaches ``T``: a few small ranges of the covering index, each read with
    ``--min-duration T``. With fewer groups than that, each group's own `TOP` slowest are
    asked of its durations from its p99 up (or of the whole group, when fewer reach it).
    """
    assert filters.since is not None and filters.until is not None
    groups = [r for r in ep_rows if r["max"] is not None]
    longest = sorted((r["max"] for r in groups), reverse=True)
    t = longest[TOP - 1] if len(longest) >= TOP else None
    if t is not None:
        groups = [r for r in groups if r["max"] >= t]
        if len(groups) > 4 * TOP:  # many equal longest durations: one pass is cheaper
            return listed(dataclasses.replace(filters, min_duration=t), "duration")
    found: dict[str, dict[str, Any]] = {}
    for g in groups:
        lo, hi = bucket_range(g[by], by, filters.since, filters.until)
        group = dataclasses.replace(filters, endpoints=(g["endpoint"],), since=lo, until=hi)
        floor = t if t is not None else g["p99"]
        rows = listed(dataclasses.replace(group, min_duration=floor), "duration")
        if t is None and len(rows) < TOP:
            rows = listed(group, "duration")
        for item in rows:
            found[item["request_id"]] = item
    # the listing's own order: duration, then request_id, both descending
    ordered = sorted(found.values(), key=lambda i: (i["duration"], i["request_id"]), reverse=True)
    return ordered[:TOP]


def _latest_failed(
    listed: Callable[[query.Filters, str], list[dict[str, Any]]],
    filters: query.Filters,
    total_rows: Sequence[dict[str, Any]],
    by: str,
) -> list[dict[str, Any]]:
    """The `TOP` latest failed requests (``error``, ``user_error``) of ``filters``, asked
    only of the latest hours (or days) that together hold `TOP` of them."""
    failing = dataclasses.replace(filters, statuses=("error", "user_error"))
    n = 0
    assert filters.since is not None and filters.until is not None
    for r in sorted(total_rows, key=lambda r: r[by], reverse=True):
        n += r["error"] + r["user_error"]
        if n >= TOP:
            lo, _ = bucket_range(r[by], by, filters.since, filters.until)
            return listed(dataclasses.replace(failing, since=lo), "ended_at")
    return listed(failing, "ended_at")


def _health_data(snap: health.Health) -> dict[str, Any]:
    targets = []
    for t in snap.targets:
        item = t.as_dict()
        lag = snap.lag(t)
        item["lag"] = health.describe_age(lag) if lag is not None else None
        item["stuck"] = snap.stuck.get(t.target, (0, None))[0]
        targets.append(item)
    runs = [
        {
            "id": r.id, "started_at": r.started_at, "ended_at": r.ended_at,
            "seconds": r.seconds, "outcome": r.outcome, "targets": ",".join(r.targets),
            "rows_inserted": r.rows_inserted, "rows_updated": r.rows_updated,
            "api_calls": r.api_calls, "error": r.error,
        }
        for r in snap.runs[:RUNS_SHOWN]
    ]  # fmt: skip
    return {"targets": targets, "runs": runs, "problems": health.problems(snap)}


def check_output(path: Path) -> None:
    """Refuse, before any work, an output path that cannot be written (ConfigError)."""
    check_writable(path, "--output", "report.html")


def write_atomically(path: Path, text: str) -> int:
    """``text`` to ``path`` through a temporary file renamed over it; returns the bytes."""
    data = text.encode("utf-8")
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise OutputError(f"--output {path}: {e.strerror or e}") from None
    return len(data)


def write_report(
    db: str, output: Path, opts: ReportOptions, *, now: datetime | None = None
) -> ReportSummary:
    """Write the report of the mirror ``db`` to ``output`` (one self-contained HTML file)."""
    check_output(output)
    report_html.check_available()
    now = now or utcnow()
    with query.open_reader(db) as conn:
        data = report_data(conn, db, opts, now=now)
    size = write_atomically(output, report_html.render(data))
    return ReportSummary(
        path=output,
        bytes=size,
        requests=int(data["totals"]["requests"]),
        endpoints=len(data["per_endpoint"]),
        since=data["since"],
        until=data["until"],
        by=data["by"],
    )
