"""`mirror verify`: compare completed windows with the server again, and optionally mend them.

Click only: parse the flags, call ``mirror.runs.verify_mirror`` (which takes the writer lock
when repairing, opens the store and calls ``mirror.verify.verify``) and print its report.
`register` adds the command to the `mirror` group (``mirror.cli`` calls it).

Exit codes: 0 the mirror equals the server on every hour checked (or everything found was
repaired), 1 differences remain or the run failed, 2 usage, 75 another process holds the
writer lock (only ``--repair`` needs it), 130 interrupted.
"""

from __future__ import annotations

import dataclasses
import json
from datetime import datetime
from typing import Any

import click

from mirror import cliutil, commands_media


@click.command("verify")
@cliutil.db_option
@cliutil.endpoints_option(
    "Target to verify, an app or a model (repeatable). Default: every target in the database."
)
@cliutil.when_option("--since", "Verify completed history from here: 2026-11-01, "
                     "2026-11-01T12:00Z, or 90m/36h/7d ago. Default: all of it.")  # fmt: skip
@cliutil.when_option("--until", "Verify completed history before here (default: now).")
@click.option("--sample", type=click.IntRange(min=1), metavar="N",
              help="Check N random hours instead of all of them.")  # fmt: skip
@click.option("--seed", type=int,
              help="Seed of --sample, to check the same hours again (default: random, shown "
              "in the report).")  # fmt: skip
@click.option("--full", is_flag=True,
              help="Re-walk every hour; do not let /serverless/analytics counts skip any.")  # fmt: skip
@click.option("--repair", is_flag=True,
              help="Write missing and different rows into the mirror (takes the writer lock).")  # fmt: skip
@click.option("--delete-extra", is_flag=True,
              help="With --repair: also delete rows the server no longer knows.")  # fmt: skip
@click.option("--no-payloads", is_flag=True,
              help="Do not fetch or compare json_input/json_output (for mirrors synced so).")  # fmt: skip
@click.option("--no-billing", is_flag=True,
              help="Do not fetch or compare billable_units (for mirrors synced so).")  # fmt: skip
@click.option("--format", "fmt", type=click.Choice(["text", "json"]), default="text",
              show_default=True, help="text for people, json for programs.")  # fmt: skip
@cliutil.base_url_option
@click.option("--wait", is_flag=True,
              help="With --repair: if another sync holds the database, wait instead of exiting 75.")  # fmt: skip
@click.option("-q", "--quiet", is_flag=True,
              help="Print nothing when the mirror equals the server (or all was repaired).")  # fmt: skip
@click.option("--media", is_flag=True,
              help="Check the archived files instead (re-hash the media store: missing or "
              "corrupt files); with --repair, fetch them again where the URL still answers.")  # fmt: skip
@commands_media.media_options
@cliutil.verbose_option
@click.pass_context
def verify_cmd(
    ctx: click.Context,
    db: str,
    endpoints: tuple[str, ...],
    since: datetime | None,
    until: datetime | None,
    sample: int | None,
    seed: int | None,
    full: bool,
    repair: bool,
    delete_extra: bool,
    no_payloads: bool,
    no_billing: bool,
    fmt: str,
    base_url: str,
    wait: bool,
    quiet: bool,
    verbose: int,
    media: bool,
    **media_kw: Any,
) -> None:
    """Walk completed windows again and report requests missing, extra or different.

    \b
    Where the key may read /serverless/analytics, hours whose request counts agree
    with the mirror are skipped (a match is not proof: --full re-walks everything).
    --repair writes missing and different rows; extra rows are only reported unless
    --delete-extra is given too.

    \b
    Exit codes: 0 the mirror equals the server (or all was repaired), 1 differences
    remain or the run failed, 2 usage, 75 another sync holds the database (--repair).
    """
    from mirror.runs import verify_mirror  # the API client and the verifier: for verify alone
    from mirror.verify_report import report_json, report_text

    cliutil.setup_logging(verbose)
    if media:
        _verify_media(ctx, db, repair, base_url, fmt, quiet, media_kw)
        return
    if delete_extra and not repair:
        raise click.UsageError("--delete-extra needs --repair")
    if seed is not None and sample is None:
        raise click.UsageError("--seed only applies with --sample N")
    cliutil.check_since_until(since, until)
    with cliutil.sigterm_as_interrupt(), cliutil.usage_errors():
        report = verify_mirror(
            db, endpoints, repair=repair, base_url=base_url, wait=wait, since=since,
            until=until, sample=sample, seed=seed, delete_extra=delete_extra,
            use_analytics=not full, payloads=not no_payloads, billing=not no_billing,
        )  # fmt: skip
    cliutil.print_notes(report.notes)
    if quiet and report.ok:
        ctx.exit(0)
    if fmt == "json":
        click.echo(json.dumps(report_json(report), indent=2))
    else:
        click.echo(report_text(report))
    ctx.exit(0 if report.ok else 1)


def _verify_media(
    ctx: click.Context,
    db: str,
    repair: bool,
    base_url: str,
    fmt: str,
    quiet: bool,
    media_kw: dict[str, Any],
) -> None:
    from mirror.media_db import MediaFilters
    from mirror.runs import verify_media_mirror

    opts = commands_media.archive_options(media_kw, MediaFilters())
    with cliutil.sigterm_as_interrupt(), cliutil.usage_errors():
        report = verify_media_mirror(db, opts, repair=repair, base_url=base_url)
    cliutil.print_notes(report.notes)
    if quiet and report.ok:
        ctx.exit(0)
    if fmt == "json":
        click.echo(json.dumps(dataclasses.asdict(report), indent=2))
    else:
        click.echo(report.summary())
    ctx.exit(0 if report.ok else 1)


COMMANDS = (verify_cmd,)


def register(group: click.Group) -> None:
    """Add `verify` to ``group``; calling it again changes nothing."""
    for cmd in COMMANDS:
        if group.commands.get(cmd.name or "") is not cmd:
            group.add_command(cmd)
