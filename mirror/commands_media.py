"""`mirror media`: archive the files the mirrored requests produced, or show the figures.

Click only: parse the flags, call ``mirror.runs.media_mirror`` (or, with ``--stats`` or
``--paths``, ``mirror.media_db.endpoint_figures`` or ``archived_paths`` through a read-only
connection) and print. The
options every media run shares (`media_options`) are also `mirror sync --media`'s and
`mirror verify --media`'s. `register` adds the command to the `mirror` group.

Exit codes: 0 the run finished (files refused, gone or failed are notes: they are
recorded, and failures are tried again by later runs), 1 failed (storage), 2 usage,
75 another run is archiving into the same folder, 130 interrupted.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar

import click

from mirror import cliutil, output
from mirror.media_db import FIGURE_COLUMNS, PATH_COLUMNS, MediaFilters
from mirror.media_fetch import DEFAULT_DEADLINE, DEFAULT_MAX_FILE
from mirror.media_net import HOSTS_ENV
from mirror.schema import STATUSES

F = TypeVar("F", bound=Callable[..., Any])


def media_options(fn: F) -> F:
    """Where the files go and how they are fetched: shared by media, sync --media and
    verify --media."""
    opts = [
        click.option("--media-dir", type=click.Path(path_type=Path), envvar="MIRROR_MEDIA_DIR",
                     metavar="DIR",
                     help="Where archived files live (default: <db>.media beside a SQLite "
                     "mirror; required for PostgreSQL). Env: MIRROR_MEDIA_DIR."),
        click.option("--media-host", "media_hosts", multiple=True, metavar="HOST",
                     help="Also download from this host (repeatable; *.domain for its "
                     f"subdomains). fal's (fal.media, *.fal.media) always. Env: {HOSTS_ENV}."),
        click.option("--max-file-size", callback=cliutil.size_callback, metavar="SIZE",
                     default=str(DEFAULT_MAX_FILE), show_default="512M",
                     help="Refuse a file larger than this (checked while it streams)."),
        click.option("--file-deadline", callback=cliutil.duration_callback, metavar="DURATION",
                     default=f"{DEFAULT_DEADLINE:.0f}s", show_default="15m",
                     help="Abandon a file not downloaded within this (retries included); "
                     "the next run tries again."),
        click.option("--media-concurrency", type=click.IntRange(1, 64), default=16,
                     show_default=True, help="Downloads at once."),
    ]  # fmt: skip
    for opt in reversed(opts):
        fn = opt(fn)
    return fn


def archive_options(kw: dict[str, Any], filters: MediaFilters, **extra: Any) -> Any:
    """The ``ArchiveOptions`` of `media_options`' flags, ``filters`` and ``extra``."""
    from mirror.media import ArchiveOptions

    deadline = kw["file_deadline"].total_seconds()
    if deadline <= 0:
        raise click.BadParameter("must be more than 0", param_hint="--file-deadline")
    if kw["max_file_size"] is not None and kw["max_file_size"] < 1:
        raise click.BadParameter("must be at least 1 byte", param_hint="--max-file-size")
    return ArchiveOptions(
        filters=filters, max_file=kw["max_file_size"], deadline=deadline,
        max_concurrency=kw["media_concurrency"], hosts=tuple(kw["media_hosts"]),
        media_dir=kw["media_dir"], **extra,
    )  # fmt: skip


@click.command("media")
@cliutil.db_option
@cliutil.endpoints_option("Only this endpoint's requests (repeatable); an app id also covers its routes.")  # fmt: skip
@cliutil.when_option("--since", "Only requests that ended from this time on: 2026-11-01, "
                     "2026-11-01T12:00Z, or 90m/36h/7d ago.")  # fmt: skip
@cliutil.when_option("--until", "Only requests that ended before this time.")
@click.option("-s", "--status", "statuses", multiple=True, type=click.Choice(STATUSES),
              help="Only requests of this status (repeatable).")  # fmt: skip
@click.option("--inputs", is_flag=True,
              help="Also archive the files the requests' inputs refer to.")  # fmt: skip
@click.option("--max-bytes", callback=cliutil.size_callback, metavar="SIZE",
              help="Download at most this much this run (500M, 2G...); the rest waits for the next.")  # fmt: skip
@click.option("--max-files", type=click.IntRange(min=0), metavar="N",
              help="Fetch at most N files this run.")  # fmt: skip
@click.option("--dry-run", is_flag=True,
              help="Say how many files and bytes a run would fetch; fetch and write nothing.")  # fmt: skip
@click.option("--paths", is_flag=True,
              help="Print the archived files of the requests selected (request, where in "
              "its payload, the file in the store); archive nothing.")  # fmt: skip
@click.option("--stats", is_flag=True,
              help="Print files and bytes archived per endpoint, and how many are gone, "
              "pending, failed or refused; archive nothing.")  # fmt: skip
@media_options
@cliutil.format_option
@cliutil.base_url_option
@click.option("-q", "--quiet", is_flag=True, help="Print nothing on success.")
@cliutil.verbose_option
def media_cmd(
    db: str,
    endpoints: tuple[str, ...],
    since: datetime | None,
    until: datetime | None,
    statuses: tuple[str, ...],
    inputs: bool,
    max_bytes: int | None,
    max_files: int | None,
    dry_run: bool,
    paths: bool,
    stats: bool,
    fmt: str,
    base_url: str,
    quiet: bool,
    verbose: int,
    **kw: Any,
) -> None:
    """Archive the files (images, video, audio) the mirrored requests produced.

    \b
    Finds every file a request's output refers to (fal's File objects, and bare
    URLs on fal's media hosts), downloads each one not yet archived into a store
    named by SHA-256 (the same file once), and records it in media_refs and
    media_files. Run it again to resume: what is archived is never fetched again.
    404/410 or an expired signed URL marks a file gone (a tombstone, not an error).

    \b
    Exit codes: 0 done, 1 failed (storage), 2 usage,
    75 another run is archiving into the same folder.
    """
    from mirror.runs import media_mirror

    cliutil.setup_logging(verbose)
    cliutil.check_since_until(since, until)
    filters = MediaFilters(endpoints=endpoints, statuses=statuses, since=since, until=until,
                           sides=("output", "input") if inputs else ("output",))  # fmt: skip
    if stats or paths:
        _print_figures(db, fmt, filters if paths else None, kw["media_dir"])
        return
    opts = archive_options(kw, filters, dry_run=dry_run, max_files=max_files, max_bytes=max_bytes)
    with cliutil.sigterm_as_interrupt(), cliutil.usage_errors():
        report = media_mirror(db, opts, base_url=base_url)
    cliutil.print_notes(report.notes)
    if not quiet:
        click.echo(report.summary())


def _print_figures(
    db: str, fmt: str, paths_of: MediaFilters | None, media_dir: Path | None
) -> None:
    """Per-endpoint figures, or (``paths_of``) the archived files of those requests."""
    from mirror import media_db
    from mirror.db import ensure_schema, reader_engine
    from mirror.media_files import MediaDir
    from mirror.runs import media_dir_for

    with cliutil.usage_errors():
        store = MediaDir(media_dir_for(db, media_dir)) if paths_of is not None else None
    engine = reader_engine(db)
    try:
        ensure_schema(db, engine)
        with engine.connect() as conn:
            if paths_of is None:
                rows = media_db.endpoint_figures(conn)
            else:
                rows = media_db.archived_paths(conn, paths_of)
    finally:
        engine.dispose()
    if store is None:
        cols: tuple[str, ...] = FIGURE_COLUMNS
    else:
        cols = (*PATH_COLUMNS[:3], "file", *PATH_COLUMNS[4:])
        for r in rows:
            r["file"] = str(store.path_of(r["sha256"]))
    output.write(sys.stdout, cols, ([r[c] for c in cols] for r in rows), fmt)


COMMANDS = (media_cmd,)


def register(group: click.Group) -> None:
    """Add `media` to ``group``; calling it again changes nothing."""
    for cmd in COMMANDS:
        if group.commands.get(cmd.name or "") is not cmd:
            group.add_command(cmd)
