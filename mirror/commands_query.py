"""The offline commands: `mirror query`, `stats`, `sql`, `status` and `browse`.

Click only: each command parses its flags, opens the database read-only, calls one
function of ``mirror.query`` (or ``mirror.readonly``) and prints with ``mirror.output``.
None of them creates a database, and all of them read while a sync writes the same file.
`register` adds them to the `mirror` group.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import sys
import tempfile
from collections.abc import Callable, Iterable, Iterator, Sequence
from datetime import timedelta
from importlib import resources
from pathlib import Path
from typing import Any, NoReturn, TypeVar

import click

from mirror import cost_stats, health, media_db, media_query, metrics, output, query, termchart
from mirror.cliutil import (
    by_option,
    checked_groups,
    db_option,
    duration_callback,
    endpoints_option,
    format_option,
    metrics_file_option,
    print_notes,
    shown,
    sigterm_as_interrupt,
    split_values,
    usage_errors,
    when_option,
)
from mirror.cost_status import cost_status
from mirror.db import display_db, ensure_schema, is_postgresql, reader_engine, sqlite_path
from mirror.errors import ConfigError
from mirror.schema import HISTORIES, STATUSES
from mirror.timeparse import utcnow

F = TypeVar("F", bound=Callable[..., Any])


def filter_options(fn: F) -> F:
    """The filters shared by `query` and `stats`, in the order --help shows them."""
    opts = [
        endpoints_option("Only this endpoint (repeatable); an app id also matches its routes."),
        click.option("--history", "histories", multiple=True, type=click.Choice(HISTORIES),
                     help="Only this history (repeatable): serverless (calls to your own apps) "
                     "or model (your key's calls to fal's hosted models). Default: both."),
        click.option("-s", "--status", "statuses", multiple=True, type=click.Choice(STATUSES),
                     help="Only this status (repeatable)."),
        click.option("--status-code", "status_codes", multiple=True, type=int, metavar="CODE",
                     help="Only this HTTP status code (repeatable)."),
        when_option("--since", "From this time on (inclusive): 2026-11-01, 2026-11-01T18:00Z, "
                    "or an age such as 90m, 36h, 7d."),
        when_option("--until", "Before this time (exclusive); same forms as --since."),
        click.option("--time-field", type=click.Choice(query.TIME_FIELDS), default="ended_at",
                     show_default=True, help="Which time --since/--until (and hour/day) use."),
        click.option("--id", "request_ids", multiple=True, metavar="REQUEST_ID",
                     help="Only this request (repeatable)."),
        click.option("--min-duration", type=click.FloatRange(min=0), metavar="SECONDS",
                     help="Only requests that ran at least this long."),
        click.option("--max-duration", type=click.FloatRange(min=0), metavar="SECONDS",
                     help="Only requests that ran at most this long."),
        click.option("--search", metavar="WORDS",
                     help="Full-text search in the payloads: every word must occur."),
    ]  # fmt: skip
    for opt in reversed(opts):
        fn = opt(fn)
    return fn


def media_dir_option(fn: F) -> F:
    """Where the media archive is, for the offline commands that show it."""
    return click.option(
        "--media-dir", type=click.Path(path_type=Path), envvar="MIRROR_MEDIA_DIR",
        metavar="DIR",
        help="The media archive's folder (mirror media), if not <db>.media beside a SQLite "
        "mirror. Env: MIRROR_MEDIA_DIR.",
    )(fn)  # fmt: skip


def _filters(kw: dict[str, Any]) -> query.Filters:
    try:
        return query.Filters(
            endpoints=kw["endpoints"],
            histories=kw["histories"],
            statuses=kw["statuses"],
            status_codes=kw["status_codes"],
            request_ids=kw["request_ids"],
            since=kw["since"],
            until=kw["until"],
            time_field=kw["time_field"],
            min_duration=kw["min_duration"],
            max_duration=kw["max_duration"],
            search=kw["search"],
        )
    except ConfigError as e:
        raise click.UsageError(str(e)) from None


@contextlib.contextmanager
def _stdout() -> Iterator[Any]:
    """stdout, and a quiet exit when the reader goes away (`mirror query | head`)."""
    try:
        yield sys.stdout
        sys.stdout.flush()
    except BrokenPipeError:
        with contextlib.suppress(OSError):
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
        sys.exit(0)


def _print(columns: Sequence[str], rows: Iterable[Sequence[Any]], fmt: str, **kw: Any) -> None:
    with _stdout() as out:
        output.write(out, columns, rows, fmt, **kw)


# --------------------------------------------------------------------------- query


@click.command("query")
@db_option
@filter_options
@click.option("--sort", type=click.Choice(query.SORTS), default="ended_at", show_default=True,
              help="Sort by this column; rows without a value come last.")  # fmt: skip
@click.option(
    "--asc", is_flag=True, help="Ascending (oldest or fastest first); default descending."
)
@click.option("-n", "--limit", type=click.IntRange(min=0), default=50, show_default=True,
              help="At most this many rows; 0 for all.")  # fmt: skip
@click.option("--offset", type=click.IntRange(min=0), default=0, help="Skip this many rows first.")
@click.option("-c", "--columns", "columns", multiple=True, metavar="COL[,COL…]",
              help=f"Columns to show, from: {', '.join(query.COLUMNS)}. "
              f"Default: {','.join(query.DEFAULT_COLUMNS)}.")  # fmt: skip
@click.option("--payloads", is_flag=True,
              help="Add json_input and json_output (decoded, in json/jsonl).")  # fmt: skip
@click.option("--media", is_flag=True,
              help="Add media: each request's archived files (mirror media), their place in "
              "the store; in json/jsonl a list of {side, path, file, file_name, "
              "content_type}, in csv that list as JSON text, in a table the files.")  # fmt: skip
@media_dir_option
@format_option
def query_cmd(
    db: str,
    sort: str,
    asc: bool,
    limit: int,
    offset: int,
    columns: tuple[str, ...],
    payloads: bool,
    media: bool,
    media_dir: Path | None,
    fmt: str,
    **kw: Any,
) -> None:
    """List requests, newest first, filtered offline.

    \b
    Examples:
      mirror query -e acme/flux-lora -s error --since 12h
      mirror query --sort duration -n 10          # the slowest
      mirror query --search lighthouse -s error --payloads --format json
    """
    filters = _filters(kw)
    cols = split_values(columns) or list(query.DEFAULT_COLUMNS)
    unknown = [c for c in cols if c not in query.COLUMNS]
    if unknown:
        raise click.BadParameter(
            f"unknown column {unknown[0]!r}; choose from {', '.join(query.COLUMNS)}",
            param_hint="--columns",
        )
    if payloads:
        cols += [c for c in query.PAYLOAD_COLUMNS if c not in cols]
    store = _media_store(db, media_dir) if media else None
    # the files are found by request id, which is read even when not shown
    read = cols if store is None or "request_id" in cols else ["request_id", *cols]
    with query.open_reader(db) as conn:
        rows: Iterable[Sequence[Any]] = query.select_requests(
            conn, filters, columns=read, sort=sort, descending=not asc,
            limit=limit or None, offset=offset,
        )  # fmt: skip
        if store is not None:
            from mirror.media_query import with_files

            shown_from = len(read) - len(cols)
            rows = (
                (*row[shown_from:], _files_shown(files, fmt))
                for row, files in with_files(conn, rows, read.index("request_id"), store)
            )
            cols = [*cols, "media"]
        _print(cols, rows, fmt, json_columns=query.PAYLOAD_COLUMNS)


def _media_store(db: str, media_dir: Path | None) -> Any:
    """The media store of the mirror ``db`` (a `mirror.media_files.MediaDir`)."""
    from mirror.media_files import MediaDir
    from mirror.runs import media_dir_for

    with usage_errors():
        return MediaDir(media_dir_for(db, media_dir))


def _files_shown(files: list[dict[str, Any]], fmt: str) -> Any:
    """A request's archived files as ``fmt`` shows them: a list in JSON, its JSON text in
    CSV, the files' paths in a table."""
    if fmt in ("json", "jsonl"):
        return files
    if fmt == "csv":
        return json.dumps(files)
    return " ".join(f["file"] for f in files)


# --------------------------------------------------------------------------- stats


@click.command("stats")
@db_option
@filter_options
@by_option(
    "Group by endpoint, status, history (serverless: your apps; model: fal's hosted "
    "models), and hour or day (combinable: --by history,endpoint,day)."
)
@click.option("-c", "--columns", "columns", multiple=True, metavar="COL[,COL…]",
              help=f"Figures to show, in this order, after the groups: "
              f"{', '.join(query.STATS_FIELDS)}. Default: all of them, except in a table too "
              "narrow for all, which keeps the most telling that fit.")  # fmt: skip
@click.option("--wide", is_flag=True,
              help="A table with every figure, however narrow the terminal (shortened, or "
              "one block per row when even that cannot fit).")  # fmt: skip
@click.option("--chart", is_flag=True,
              help="Add a bar column of each group's requests (table format only; "
              "never drawn unless asked).")  # fmt: skip
@click.option("--media", is_flag=True,
              help="Add the media archive's figures (mirror media) of the requests counted: "
              "media_files and media_bytes archived, media_gone (deleted by fal before they "
              "were archived). With no --by or --by endpoint.")  # fmt: skip
@click.option("--cost", is_flag=True,
              help="Add spend (docs/cost.md): cost_usd, billed and estimated, and "
              "cost_per_request_usd (json, csv: also in nano-USD). With --by day, endpoint or "
              "key (who made the call: spend alone, requests do not carry their key).")  # fmt: skip
@format_option
def stats_cmd(
    db: str,
    by: tuple[str, ...],
    columns: tuple[str, ...],
    wide: bool,
    chart: bool,
    media: bool,
    cost: bool,
    fmt: str,
    **kw: Any,
) -> None:
    """Counts, error rates, duration percentiles and billable units.

    \b
    Percentiles (p50/p90/p95/p99, seconds) are continuous, PostgreSQL's
    percentile_cont: with the n sorted durations v[0..n-1] and h = p/100*(n-1),
    v[floor(h)] + (h - floor(h)) * (v[ceil(h)] - v[floor(h)]); the same figures
    on SQLite and PostgreSQL. Rates are of finished requests.
    Example: mirror stats --by endpoint,day --since 7d
    Requests per hour at a glance: mirror stats --by hour --since 2d --chart
    """
    filters = _filters(kw)
    if cost:
        groups = checked_groups(by, lambda g: cost_stats.check(g, filters))
        if "key" in groups:
            return _spend_by_key(db, filters, groups, fmt)
    else:
        groups = checked_groups(by, query.check_groups)
    figures = list(dict.fromkeys(c for c in split_values(columns) if c not in groups))
    unknown = [c for c in figures if c not in query.STATS_FIELDS]
    if unknown:
        raise click.BadParameter(
            f"unknown column {unknown[0]!r}; choose from {', '.join(query.STATS_FIELDS)}",
            param_hint="--columns",
        )
    if wide and figures:
        raise click.UsageError("--wide shows every column and --columns picks some: give one")
    if chart and fmt != "table":
        raise click.UsageError(
            f"--chart draws bars in the table: it does not mix with --format {fmt}"
        )
    if media and groups not in ([], ["endpoint"]):
        raise click.UsageError("--media counts files per endpoint: give --by endpoint, or no --by")
    with query.open_reader(db) as conn:
        result = query.stats(conn, filters, by=groups)
        if media:
            _add_media_figures(conn, filters, groups, result, human=fmt == "table")
        if cost:
            result = cost_stats.add_spend(conn, filters, groups, result)
    extra = list(media_query.STATS_COLUMNS) if media else []
    if cost:
        extra += [*cost_stats.COLUMNS, *(cost_stats.EXACT_COLUMNS if fmt != "table" else ())]
    cols = [*groups, *(figures or query.STATS_FIELDS), *extra]
    rows = [[r.get(c) for c in cols] for r in result]
    width = shutil.get_terminal_size().columns
    if fmt == "table" and not wide and not figures:
        ranked = [*query.STATS_RANKED[:1], *extra, *query.STATS_RANKED[1:]]
        cols, rows, hidden = output.narrow(cols, rows, ranked, width)
        if hidden:
            print_notes(
                [
                    f"{len(hidden)} columns left out to fit {width}: "
                    f"{', '.join(hidden)}; --wide shows them all, --columns picks"
                ]
            )
    if chart:
        drawn = termchart.bars([r["requests"] for r in result])
        cols.insert(len(groups) + 1, "chart")
        for row, bar in zip(rows, drawn, strict=True):
            row.insert(len(groups) + 1, bar)
    _print(cols, rows, fmt, width=width)


def _spend_by_key(db: str, filters: query.Filters, groups: list[str], fmt: str) -> None:
    """``stats --cost --by key``: spend per caller, with no request figures."""
    with query.open_reader(db) as conn:
        result = cost_stats.add_spend(conn, filters, groups, [])
    cols = [*groups, *cost_stats.COLUMNS, *(cost_stats.EXACT_COLUMNS if fmt != "table" else ())]
    _print(cols, ([r[c] for c in cols] for r in result), fmt)


def _add_media_figures(
    conn: Any, filters: query.Filters, groups: list[str], result: list[dict[str, Any]], *,
    human: bool,
) -> None:  # fmt: skip
    """``media_query.STATS_COLUMNS`` into each stats row (bytes for people in a table)."""
    from mirror.media import human_bytes

    figures = media_query.stats_figures(conn, filters, by_endpoint=bool(groups))
    zero = dict.fromkeys(media_query.STATS_COLUMNS, 0)
    for r in result:
        r.update(figures.get(r["endpoint"] if groups else None, zero))
        if human:
            r["media_bytes"] = human_bytes(r["media_bytes"])


# --------------------------------------------------------------------------- sql


@click.command("sql")
@click.argument("sql")
@db_option
@click.option("-p", "--param", "params", type=(str, str), multiple=True, metavar="NAME VALUE",
              help="Bind :NAME to VALUE (repeatable), instead of pasting values into SQL.")  # fmt: skip
@click.option("--timeout", type=click.FloatRange(min=0, min_open=True), default=10.0,
              show_default=True, metavar="SECONDS",
              help="Stop the statement after this long.")  # fmt: skip
@format_option
def sql_cmd(
    sql: str, db: str, params: tuple[tuple[str, str], ...], timeout: float, fmt: str
) -> None:
    """Run one read-only SQL statement against the mirror.

    \b
    SQLite: the file is opened read-only and every write, schema change, ATTACH,
    setting PRAGMA and VACUUM INTO is refused by SQLite itself (one line, exit 1).
    --timeout is wall-clock time; one value may be at most 64 MiB, and SQLite's
    memory at most 512 MiB. Ctrl-C or SIGTERM stops the statement (exit 130).
    PostgreSQL: the statement runs in a READ ONLY transaction that is rolled back,
    under statement_timeout; only one statement, and only one that returns rows.
    Tables: requests, billing_events, prices, sync_targets, sync_windows, sync_runs,
    summary_hourly, duration_histogram, duration_buckets; views: request_log,
    request_costs (each request with its billing event), hourly_summary, daily_summary,
    daily_usage; search: requests_fts (SQLite).
    Example: mirror sql "SELECT status, count(*) FROM requests GROUP BY 1"
    """
    from mirror.readonly import PgReadOnlyDatabase, ReadOnlyDatabase

    path = sqlite_path(db)
    if path is None:
        if not is_postgresql(db):
            raise click.UsageError("mirror sql takes a SQLite file or a postgresql:// URL as --db")
        with PgReadOnlyDatabase(db, timeout=timeout) as pdb:
            cols, rows = pdb.execute(sql, dict(params))
            _print(cols, rows, fmt)
        return
    with ReadOnlyDatabase(path, timeout=timeout) as rdb, sigterm_as_interrupt(rdb.interrupt):
        # Ctrl-C and SIGTERM stop the statement and exit 130 like every command; Python's
        # own KeyboardInterrupt could not reach a statement SQLite is running
        cols, rows = rdb.execute(sql, dict(params))
        _print(cols, rows, fmt)


# --------------------------------------------------------------------------- status


@click.command("status")
@db_option
@format_option
@click.option("--check", is_flag=True,
              help="Check health instead: exit 1 with one line per problem (stale, behind, "
              "gaps, failing runs, stuck rows), 0 when healthy. For cron, systemd, Nagios, CI.")  # fmt: skip
@click.option("--max-age", callback=duration_callback, metavar="DURATION",
              help="With --check: the last successful sync may be at most this old "
              "(default: 3x the usual interval between runs, from the run log; 24h while "
              "it has fewer than two runs).")  # fmt: skip
@click.option("--max-failures", type=click.IntRange(min=1), metavar="N",
              help=f"With --check: this many finished runs in a row that did not succeed "
              f"are a problem (default {health.DEFAULT_MAX_FAILURES}).")  # fmt: skip
@click.option("--max-unfinished-age", callback=duration_callback, metavar="DURATION",
              help="With --check: requests still unfinished this long after they were sent "
              "are a problem (default 6h).")  # fmt: skip
@metrics_file_option
@click.option("-q", "--quiet", is_flag=True,
              help="Print nothing when healthy (--check) or besides the metrics (--metrics-file).")  # fmt: skip
def status_cmd(
    db: str,
    fmt: str,
    check: bool,
    max_age: timedelta | None,
    max_failures: int | None,
    max_unfinished_age: timedelta | None,
    metrics_file: Path | None,
    quiet: bool,
) -> None:
    """What the mirror holds per sync target, how complete it is, and the last run.

    \b
    history: serverless (an app of yours, --endpoint) or model (a hosted model, --model);
    requested_from: where the history each target was asked to cover starts
    (the earliest --since); covered_from/covered_to: the span the completed windows
    reach; gaps: every stretch of the requested range that no sync has completed yet
    (a backfill that stopped short of its start shows here until a sync finishes it);
    clock_skew: this machine's clock minus the API's, in seconds, as the last sync saw it.
    oversized (a line per target under the table): requests stored without their
    payloads because a page of that one request is over the body cap with them.

    \b
    A last line sums up the media archive (mirror media), if there is one; in
    json, jsonl and csv each target has its own archive's figures (media: files,
    bytes, pending, gone, failed, refused, last_gone_at).

    \b
    A line says whether cost (billing events, prices) is mirrored, or why not; in
    json, jsonl and csv each row's cost: state (ok, refused, failed, skipped by
    --no-cost, never), reason, checked_at, ok_at, covered_to, events,
    prices_checked_at, usage_checked_at, usage_differences. A sync with --no-cost
    is no cost problem for --check; cost that stopped is said on its line.

    \b
    Exit codes: 0 ok (with --check: healthy), 1 unhealthy (--check) or failed,
    2 usage. Example, from cron: mirror status --check -q || alert
    """
    tuned = [f for f, v in (("--max-age", max_age), ("--max-failures", max_failures),
                            ("--max-unfinished-age", max_unfinished_age)) if v is not None]  # fmt: skip
    if tuned and not check:
        raise click.UsageError(f"{tuned[0]} is a threshold of --check: give --check too")
    if check and fmt != "table":
        raise click.UsageError("--check prints one line per problem: leave out --format")
    if check or metrics_file is not None:
        if metrics_file is not None:
            metrics.check_path(metrics_file)
        snap = health.snapshot(
            db, now=utcnow(), unfinished_age=max_unfinished_age or health.DEFAULT_UNFINISHED_AGE
        )
        if metrics_file is not None:
            metrics.write_metrics(metrics_file, snap)
        if check:
            _exit_checked(snap, max_age, max_failures, quiet)
        if quiet:
            return
        result = [t.as_dict() for t in snap.targets]
        with query.open_reader(db) as conn:
            media = _status_media(conn, result, fmt)
            cost = _status_cost(conn, result, fmt)
    else:
        with query.open_reader(db) as conn:
            result = [t.as_dict() for t in query.sync_status(conn)]
            media = _status_media(conn, result, fmt)
            cost = _status_cost(conn, result, fmt)
    if not result:
        click.echo(
            f"{display_db(db)}: no sync targets yet (mirror sync --db {display_db(db)} --endpoint ID)",
            err=True,
        )
    _print_status(result, media, fmt)
    if cost is not None:
        click.echo(shown(cost))


def _status_cost(conn: Any, result: list[dict[str, Any]], fmt: str) -> str | None:
    """Whether cost is mirrored (``mirror.cost_status``): in a table, a line of its own
    (returned); in the other formats, the same figures in each target's row as ``cost``."""
    found = cost_status(conn)
    if fmt == "table":
        return found.text()
    for r in result:
        r["cost"] = json.dumps(found.as_dict()) if fmt == "csv" else found.as_dict()
    return None


def _exit_checked(
    snap: health.Health, max_age: timedelta | None, max_failures: int | None, quiet: bool
) -> NoReturn:
    """``status --check``: one line per problem (or, unless ``quiet``, the healthy line),
    then exit 1 or 0."""
    found = health.problems(
        snap, health.Thresholds(
            max_age=max_age, max_failures=max_failures or health.DEFAULT_MAX_FAILURES,
            unfinished_age=snap.unfinished_age,
        ),
    )  # fmt: skip
    with _stdout():
        for line in found:
            click.echo(shown(line))
        if not found and not quiet:
            click.echo(health.healthy_line(snap))
    click.get_current_context().exit(1 if found else 0)


def _print_status(result: list[dict[str, Any]], media: dict[str, Any], fmt: str) -> None:
    """The status rows (``TargetStatus.as_dict``) in ``fmt``, then the media archive's line."""
    cols = ["target", "history", "rows", "unfinished", "oldest_ended_at", "newest_ended_at",
            "requested_from", "covered_from", "covered_to", "gaps", "last_run",
            "last_run_started_at", "last_run_ended_at", "last_run_error",
            "clock_skew", "oversized"]  # fmt: skip
    too_big = [(r["target"], r["oversized"]) for r in result if r["oversized"]]
    if fmt == "table":  # to the minute, and the run's end left to json: it has to fit
        cols.remove("last_run_ended_at")
        cols.remove("oversized")  # a line of its own, under the table
        for r in result:
            for c in cols:
                if c.endswith(("_at", "_from", "_to")) and r[c]:
                    r[c] = _minute(r[c])
            r["gaps"] = _gaps_text(r["gaps"])
            r["clock_skew"] = _skew_text(r["clock_skew"])
    else:
        cols += ["media", "cost"]
        if fmt == "csv":
            for r in result:
                r["gaps"] = json.dumps(r["gaps"])
                r["oversized"] = json.dumps([b["request_id"] for b in r["oversized"]])
                r["media"] = json.dumps(r["media"])
    _print(cols, ([r[c] for c in cols] for r in result), fmt)
    if fmt == "table":
        for target, found in too_big:
            click.echo(shown(_oversized_text(target, found)))
        if any(media.values()):
            click.echo(_media_text(media))


#: oversized requests named in the table's line per target (all of them: -f json)
OVERSIZED_SHOWN = 5


def _oversized_text(target: str, found: list[dict[str, Any]]) -> str:
    """A target's requests stored without payloads (too big for a page) in one line."""
    from mirror.media import human_bytes

    n = len(found)
    ids = ", ".join(b["request_id"] for b in found[:OVERSIZED_SHOWN])
    more = f" and {n - OVERSIZED_SHOWN} more (-f json lists all)" if n > OVERSIZED_SHOWN else ""
    cap = human_bytes(found[0]["cap_bytes"])
    return (
        f"{target}: {n} request{'s' if n != 1 else ''} stored without payloads, too big for "
        f"a page with them (over the {cap} cap): {ids}{more}"
    )


def _status_media(conn: Any, result: list[dict[str, Any]], fmt: str) -> dict[str, Any]:
    """The media archive for `status`: in a table, the whole archive's figures (its last
    line); in the other formats, each target's, put into its row as ``media``."""
    if fmt == "table":
        return media_db.totals(conn)
    per_target = media_query.target_figures(conn, [r["target"] for r in result])
    for r in result:
        r["media"] = per_target[r["target"]]
    return {}


def _media_text(m: dict[str, Any]) -> str:
    """The media archive in one line (``mirror.media_db.totals``)."""
    from mirror.media import human_bytes

    gone = f" (last {_minute(m['last_gone_at'])})" if m["last_gone_at"] else ""
    return (
        f"media: {m['files']} files archived ({human_bytes(m['bytes'])}); references: "
        f"{m['pending']} pending, {m['gone']} gone{gone}, {m['failed']} failed, "
        f"{m['refused']} refused"
    )


def _minute(ts: str) -> str:
    return ts[:16] + "Z"


def _skew_text(skew: float | None) -> str:
    """Blank unless the clock is off by more than a few seconds: then how far, and which way."""
    from mirror.serverclock import NOTABLE_SKEW, describe

    if skew is None or abs(skew) <= NOTABLE_SKEW:
        return ""
    return describe(skew) + " the API"


def _gaps_text(gaps: list[list[str]]) -> str:
    if not gaps:
        return "none"
    first = f"{_minute(gaps[0][0])}…{_minute(gaps[0][1])}"
    return first if len(gaps) == 1 else f"{len(gaps)}: {first}, …"


# --------------------------------------------------------------------------- browse


def datasette_metadata(database_name: str) -> dict[str, Any]:
    """The shipped metadata, with its database entry renamed to the one Datasette serves."""
    import yaml

    text = resources.files("mirror").joinpath("datasette.yml").read_text(encoding="utf-8")
    meta = yaml.safe_load(text)
    meta["databases"] = {database_name: meta["databases"]["mirror"]}
    return dict(meta)


@click.command("browse")
@db_option
@click.option("--port", type=click.IntRange(0, 65535), default=8001, show_default=True,
              help="Port on 127.0.0.1 (0: any free port).")  # fmt: skip
@click.option("--print-metadata", is_flag=True,
              help="Print the Datasette metadata (JSON) instead of serving.")  # fmt: skip
@media_dir_option
def browse_cmd(db: str, port: int, print_metadata: bool, media_dir: Path | None) -> None:
    """Browse the mirror in Datasette, on 127.0.0.1 only (needs: pip install datasette).

    Titles and column descriptions, newest-first sorting, facets on endpoint,
    status and day summed from the rollups, search, and canned queries for
    everyday questions: every page stays fast on millions of requests. With a
    media archive (mirror media), each request's archived images show as
    thumbnails in the requests table and on its page, linked to the files.
    """
    path = sqlite_path(db)
    if path is None:
        raise click.UsageError(
            "Datasette serves SQLite files only, and --db is a server database: copy the "
            "mirror into a SQLite file with `mirror copy` and browse that, or point a "
            "PostgreSQL dashboard tool (Metabase, Grafana, Superset) at the server"
        )
    datasette_cli = _datasette_cli()
    meta = datasette_metadata(path.stem)
    media = _media_plugin(path, media_dir)
    if media is not None:
        meta.setdefault("plugins", {}).update(media)
    if print_metadata:
        click.echo(json.dumps(meta, indent=2))
        return
    _serve(datasette_cli, db, path, meta, port)


def _datasette_cli() -> Any:
    """Datasette's own click command, with mirror's plugin (rollup facets, bounded searches)
    registered in this process; ConfigError when Datasette is not installed."""
    try:
        import datasette  # noqa: F401
        from datasette.cli import cli as datasette_cli
        from datasette.plugins import pm
    except ImportError:
        raise ConfigError(
            "Datasette is not installed: pip install 'fal-mirror[datasette]' (or pip install datasette)"
        ) from None
    from mirror import datasette_plugin

    if not pm.is_registered(datasette_plugin):
        pm.register(datasette_plugin, name="mirror")
    return datasette_cli


def _serve(datasette_cli: Any, db: str, path: Path, meta: dict[str, Any], port: int) -> None:
    """Serve the SQLite mirror ``path`` with Datasette on 127.0.0.1 until Ctrl-C."""
    # the same checks as every reader: the file exists, is a mirror, has the views
    engine = reader_engine(db)
    try:
        ensure_schema(db, engine)
    finally:
        engine.dispose()
    with tempfile.TemporaryDirectory(prefix="mirror-browse-") as tmp:
        meta_path = Path(tmp) / "metadata.json"
        meta_path.write_text(json.dumps(meta), encoding="utf-8")
        args = ["serve", str(path), "--metadata", str(meta_path), "--host", "127.0.0.1",
                "--port", str(port), "--setting", "sql_time_limit_ms", "5000",
                "--setting", "facet_time_limit_ms", "1000"]  # fmt: skip
        where = f"http://127.0.0.1:{port}/" if port else "a free port on 127.0.0.1"
        click.echo(f"serving {path} with Datasette on {where} (Ctrl-C to stop)", err=True)
        datasette_cli.main(args, prog_name="datasette", standalone_mode=True)


def _media_plugin(path: Path, media_dir: Path | None) -> dict[str, Any] | None:
    """The metadata's plugin settings that show the media archive of the mirror ``path``
    (``mirror.datasette_media``, registered here), or None when it has none to show."""
    from mirror.media_files import default_media_dir

    root = media_dir or default_media_dir(path)
    if not root.is_dir():
        if media_dir is not None:
            raise click.BadParameter(f"{media_dir} is not a folder", param_hint="--media-dir")
        return None
    try:
        import datasette_media  # noqa: F401
    except ImportError:
        print_notes(
            ["the media archive's thumbnails and files need datasette-media: "
             "pip install 'fal-mirror[datasette]' (or pip install datasette-media)"]
        )  # fmt: skip
        return None
    from datasette.plugins import pm

    from mirror import datasette_media as plugin

    if not pm.is_registered(plugin):
        pm.register(plugin, name=plugin.PLUGIN)
    return plugin.plugin_settings(root.resolve())


COMMANDS = (query_cmd, stats_cmd, sql_cmd, status_cmd, browse_cmd)


def register(group: click.Group) -> None:
    """Add the offline commands to ``group``; calling it again changes nothing."""
    for cmd in COMMANDS:
        if group.commands.get(cmd.name or "") is not cmd:
            group.add_command(cmd)
