"""The `mirror` command: the group, its commands of sync, copy, db, demo and fake-api, and
`main`. Click only: parse, call one library function, print.

The query commands live in ``mirror.commands_query``, `report` in ``mirror.commands_report``,
`verify` in ``mirror.commands_verify``, `media` in ``mirror.commands_media``; what all
commands share (the error handling of the group, options, signals, exit codes) in
``mirror.cliutil``; sync's live progress line in ``mirror.progress``.
"""

from __future__ import annotations

import atexit
import contextlib
import gc
import os
import signal
import sys
from datetime import datetime, timedelta
from pathlib import Path

import click

from mirror import (
    __version__,
    arenas,
    commands_cost,
    commands_media,
    commands_query,
    commands_report,
    commands_verify,
    interrupts,
)
from mirror.cliutil import (
    MirrorGroup,
    base_url_option,
    check_since_until,
    db_option,
    duration_callback,
    endpoints_callback,
    endpoints_option,
    metrics_file_option,
    print_notes,
    setup_logging,
    sigterm_as_interrupt,
    usage_errors,
    verbose_option,
    when_option,
)
from mirror.db import display_db
from mirror.timeparse import utcnow


@click.group(cls=MirrorGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="mirror")
def cli() -> None:
    """Keep a local, queryable mirror of your fal.ai request history."""
    os.umask(0o077)  # every file mirror creates is private to the user


# --------------------------------------------------------------------------- sync


@cli.command()
@db_option
@endpoints_option("Endpoint id of your own app to sync (repeatable); an app id also covers its "
                  "routes. Default: every target already in the database.")  # fmt: skip
@click.option("-m", "--model", "models", multiple=True, metavar="ID", callback=endpoints_callback,
              help="Hosted model whose calls by this key to sync (repeatable), e.g. "
              "fal-ai/flux/dev: the model-API history. Stored as a target like --endpoint.")  # fmt: skip
@click.option("--all-models", is_flag=True,
              help="Also add every model the key was billed for since --since (or the last "
              "24h): needs a key with ADMIN scope (/models/usage); without it, a note.")  # fmt: skip
@when_option("--since", "Start of history to cover: 2026-11-01, 2026-11-01T12:00Z, or 90m/36h/7d "
             "ago. Default the first time: 24h. Stored with each target: every later run "
             "covers it until done; a later --since never shrinks it.")  # fmt: skip
@click.option("--narrow", is_flag=True,
              help="With --since: move the targets' stored start forward to it, on purpose "
              "(rows before it stay; that stretch is no longer walked or shown as a gap).")  # fmt: skip
@when_option("--until", "End of history to cover (default: now).")
@click.option("--lookback", callback=duration_callback, default="2h", show_default=True, metavar="DURATION",
              help="Re-walk this much before the last completed point, to catch late changes.")  # fmt: skip
@click.option("--full-lookback", is_flag=True,
              help="Walk the whole lookback on every run, as before analytics narrowed it to "
              "the minutes whose counts differ and the rows that may still change.")  # fmt: skip
@click.option("--no-payloads", is_flag=True, help="Do not fetch json_input/json_output.")
@click.option("--no-billing", is_flag=True, help="Do not fetch billable_units.")
@click.option("--no-cost", is_flag=True,
              help="Do not mirror billing events, prices and fal's usage totals (billing "
              "events and usage need a key with ADMIN scope; without it the run says so once).")  # fmt: skip
@base_url_option
@click.option("--max-concurrency", type=click.IntRange(1, 64), default=16, show_default=True,
              help="At most this many pages fetched at once: starts at 4 and grows while "
                   "answers are healthy; fewer on 429s (the call rate then follows the API's "
                   "limit), slow answers, or while the database writer is behind.")  # fmt: skip
@click.option("--recheck/--no-recheck", default=True, show_default=True,
              help="Re-check older history on a schedule: the last day hourly, the last week daily "
              "(analytics first, then only hours whose counts differ).")  # fmt: skip
@click.option(
    "--wait",
    is_flag=True,
    help="If another sync holds the database, wait for it instead of exiting 75.",
)
@click.option("--media", is_flag=True,
              help="Then archive the files the synced requests' outputs refer to, as `mirror "
              "media` does with its defaults (MIRROR_MEDIA_DIR, MIRROR_MEDIA_HOSTS apply).")  # fmt: skip
@metrics_file_option
@click.option("-q", "--quiet", is_flag=True, help="Print nothing on success.")
@verbose_option
def sync(
    db: str,
    endpoints: tuple[str, ...],
    models: tuple[str, ...],
    all_models: bool,
    since: datetime | None,
    narrow: bool,
    until: datetime | None,
    lookback: timedelta,
    full_lookback: bool,
    no_payloads: bool,
    no_billing: bool,
    no_cost: bool,
    base_url: str,
    max_concurrency: int,
    recheck: bool,
    wait: bool,
    media: bool,
    metrics_file: Path | None,
    quiet: bool,
    verbose: int,
) -> None:
    """Fetch new and changed requests into the mirror.

    \b
    Exit codes: 0 ok, 1 failed (API, key, data, storage), 2 usage,
    75 another sync is running (try later).
    """
    from mirror.progress import LiveLine  # the API client, the syncer, tqdm: for sync alone
    from mirror.runs import sync_mirror
    from mirror.sync import SyncOptions

    setup_logging(verbose)
    check_since_until(since, until)
    if since and since >= utcnow():
        raise click.UsageError("--since is in the future")
    if narrow and not since:
        raise click.UsageError("--narrow moves the stored start to --since: give --since too")
    opts = SyncOptions(
        targets=endpoints, since=since, narrow=narrow, until=until, lookback=lookback,
        payloads=not no_payloads, billing=not no_billing, max_concurrency=max_concurrency,
        recheck=recheck, steady=not full_lookback, cost=not no_cost,
    )  # fmt: skip
    archive = None
    if media:
        from mirror.media import ArchiveOptions
        from mirror.media_db import MediaFilters

        media_dir = os.environ.get("MIRROR_MEDIA_DIR")
        archive = ArchiveOptions(filters=MediaFilters(endpoints=endpoints + models),
                                 media_dir=Path(media_dir) if media_dir else None)  # fmt: skip
    # the live line only on a terminal (never under cron), and -v's log lines above it
    line = LiveLine(sys.stderr) if sys.stderr.isatty() and not quiet else None
    with sigterm_as_interrupt(), usage_errors():
        with line or contextlib.nullcontext():
            report = sync_mirror(
                db,
                opts,
                models=models,
                all_models=all_models,
                base_url=base_url,
                wait=wait,
                progress=line,
                metrics_file=metrics_file,
            )
        print_notes(report.notes)
        if not quiet:
            click.echo(report.summary())
        if archive is not None:
            from mirror.runs import media_mirror

            media_report = media_mirror(db, archive, base_url=base_url)
            print_notes(media_report.notes)
            if not quiet:
                click.echo(media_report.summary())


# --------------------------------------------------------------------------- db


@cli.group()
def db() -> None:
    """Manage the database schema."""


@db.command("upgrade")
@db_option
def db_upgrade(db: str) -> None:
    """Apply pending migrations (every command does this on its own too)."""
    from mirror.db import make_engine, schema_state, upgrade

    engine = make_engine(db)
    try:
        applied = upgrade(engine, db)
        rev, _ = schema_state(engine)
    finally:
        engine.dispose()
    click.echo(
        f"{display_db(db)}: {'upgraded to' if applied else 'already at'} schema revision {rev}"
    )


# --------------------------------------------------------------------------- copy


@cli.command("copy")
@click.option("--from", "source", required=True, metavar="PATH_OR_URL",
              help="The mirror to copy: a SQLite file or a database URL (only read).")  # fmt: skip
@click.option("--to", "dest", required=True, metavar="PATH_OR_URL",
              help="Where to: a new SQLite file or an empty PostgreSQL database (migrated first).")  # fmt: skip
@click.option("-q", "--quiet", is_flag=True, help="Print nothing on success.")
def copy_cmd(source: str, dest: str, quiet: bool) -> None:
    """Copy a whole mirror (requests and sync state) into another, empty database.

    \b
    Syncs then carry on from where the source left off: nothing is downloaded again.
    Works both ways between SQLite and PostgreSQL, e.g.
      mirror copy --from mirror.db --to postgresql://USER@HOST/DBNAME
    The destination must be empty; the source is never written.

    \b
    Exit codes: 0 ok, 1 failed (storage), 2 refused (missing source, bad URL,
    non-empty destination), 75 a sync is writing the SQLite source (try later).
    """
    from mirror.copy import copy_mirror

    with sigterm_as_interrupt():
        report = copy_mirror(source, dest)
    if not quiet:
        click.echo(report.summary())


# --------------------------------------------------------------------------- simulator


@cli.command("fake-api")
@click.option("--port", type=click.IntRange(0, 65535), default=8765, show_default=True)
@click.option("--seed", type=int, default=1, show_default=True)
def fake_api(port: int, seed: int) -> None:
    """Serve the built-in simulated fal API on 127.0.0.1, to try mirror without a key."""
    from mirror.demo import TARGETS
    from mirror.simulator import DEFAULT_KEY, SimulatedAPI, demo_world

    api = SimulatedAPI(demo_world(utcnow(), seed=seed), port=port)
    api.start()
    endpoints = " ".join(f"--endpoint {e}" for e in TARGETS)
    click.echo(f"simulated fal API at {api.base_url} (Ctrl-C to stop). Try:")
    click.echo(f"  export MIRROR_BASE_URL={api.base_url} FAL_KEY={DEFAULT_KEY}")
    click.echo(f"  mirror sync --db sim.db --since 3d {endpoints}")
    api.serve_forever()


@cli.command()
@click.option("--db", default="demo.db", show_default=True, help="Where to write the demo mirror.")
def demo(db: str) -> None:
    """Sync a few days of simulated history into demo.db: no key, no network."""
    from mirror.demo import run_demo

    run_demo(Path(db), echo=click.echo)


commands_query.register(cli)
commands_report.register(cli)
commands_verify.register(cli)
commands_media.register(cli)
commands_cost.register(cli)


def main() -> None:
    cli.as_process = True
    arenas.cap()  # before any thread starts: a backfill's memory stays flat (mirror.arenas)
    # The interpreter's last collections at exit walk every object the libraries made at
    # import (SQLAlchemy's above all): ~0.25 s of CPU, more than a cron run that finds little
    # to do spends on its own work. Frozen, they are left to the end of the process; only
    # cycles that become garbage during the interpreter's teardown lose their finalizers,
    # which Python does not promise to run at exit. Registered first, it runs last.
    atexit.register(gc.freeze)
    # `mirror query ... | head` should stop quietly, like any Unix tool
    signal.signal(signal.SIGPIPE, signal.SIG_DFL)
    # Ctrl-C means stop, whatever this process inherited: a shell starts background jobs
    # (`cmd &`, nohup) with SIGINT ignored, and Python then never raises KeyboardInterrupt
    signal.signal(signal.SIGINT, signal.default_int_handler)
    # cron and systemd stop jobs with SIGTERM: Ctrl-C's meaning (exit 130, one line) for the
    # whole command, not only while it syncs (where sigterm_as_interrupt defers it further)
    signal.signal(signal.SIGTERM, lambda _signum, _frame: interrupts.interrupt())
    cli(prog_name="mirror")
