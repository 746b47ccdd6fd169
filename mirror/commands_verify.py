"""`mirror verify`: compare completed windows with the server again, and optionally mend them.

Click only: parse the flags, take the writer lock when repairing, open the store, call
``mirror.verify.verify`` and print its report. `register` adds the command to the `mirror`
group (``mirror.cli`` calls it).

Exit codes: 0 the mirror equals the server on every hour checked (or everything found was
repaired), 1 differences remain or the run failed, 2 usage, 75 another process holds the
writer lock (only ``--repair`` needs it), 130 interrupted.
"""

from __future__ import annotations

import contextlib
import json
import os
from datetime import datetime

import click

from mirror.cli import (
    _setup_logging,
    _sigterm_as_interrupt,
    _when,
    db_option,
    retry_policy_from_env,
    shown,
    verbose_option,
)
from mirror.db import display_db


@click.command("verify")
@db_option
@click.option("-e", "--endpoint", "endpoints", multiple=True, metavar="ID",
              help="Target to verify (repeatable). Default: every target in the database.")  # fmt: skip
@click.option("--since", callback=_when, metavar="WHEN",
              help="Verify completed history from here: 2026-11-01, 2026-11-01T12:00Z, or "
              "90m/36h/7d ago. Default: all of it.")  # fmt: skip
@click.option("--until", callback=_when, metavar="WHEN",
              help="Verify completed history before here (default: now).")  # fmt: skip
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
@click.option("--base-url", envvar="MIRROR_BASE_URL", default="https://api.fal.ai/v1",
              show_default=True, help="API base URL. Env: MIRROR_BASE_URL.")  # fmt: skip
@click.option("--wait", is_flag=True,
              help="With --repair: if another sync holds the database, wait instead of exiting 75.")  # fmt: skip
@click.option("-q", "--quiet", is_flag=True,
              help="Print nothing when the mirror equals the server (or all was repaired).")  # fmt: skip
@verbose_option
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
    from mirror import lock
    from mirror.api import FalClient, check_base_url, make_http_client
    from mirror.auth import load_key
    from mirror.db import sqlite_path
    from mirror.pacing import Pacer
    from mirror.store import Store
    from mirror.verify import verify

    _setup_logging(verbose)
    if delete_extra and not repair:
        raise click.UsageError("--delete-extra needs --repair")
    if seed is not None and sample is None:
        raise click.UsageError("--seed only applies with --sample N")
    if since and until and until <= since:
        raise click.UsageError(
            f"--until ({until:%Y-%m-%dT%H:%M:%SZ}) must be after --since ({since:%Y-%m-%dT%H:%M:%SZ})"
        )
    for e in endpoints:
        if not e.strip() or len(e) > 256 or any(c.isspace() for c in e):
            raise click.BadParameter(f"{e!r} is not an endpoint id", param_hint="--endpoint")
    base_url = check_base_url(base_url)
    path = sqlite_path(db)
    if path is not None and not path.exists():
        raise click.UsageError(f"{db} does not exist: verify compares an existing mirror")
    key = load_key(os.environ)
    retry = retry_policy_from_env()

    holder = (
        lock.hold(path, wait=10**9 if wait else 0.0)
        if repair and path is not None
        else contextlib.nullcontext()
    )
    with _sigterm_as_interrupt(), holder:
        # without --repair nothing is written: a SQLite mirror is opened as the readers open it
        store = Store.open(db) if repair or path is None else Store.open_reader(db)
        try:
            known = store.targets()
            unknown = [e for e in endpoints if e not in known]
            if unknown:
                raise click.UsageError(
                    f"{', '.join(unknown)} {'is' if len(unknown) == 1 else 'are'} not a sync "
                    f"target of {display_db(db)} (targets: {', '.join(known) or 'none'})"
                )
            targets = list(dict.fromkeys(endpoints)) or known
            if not targets:
                raise click.UsageError(f"{display_db(db)} has no sync targets: nothing to verify")
            with make_http_client() as http:
                client = FalClient(http, key, base_url=base_url, retry=retry, pacer=Pacer(4))
                report = verify(
                    store,
                    client,
                    targets=targets,
                    since=since,
                    until=until,
                    sample=sample,
                    seed=seed,
                    repair=repair,
                    delete_extra=delete_extra,
                    use_analytics=not full,
                    payloads=not no_payloads,
                    billing=not no_billing,
                )
        finally:
            store.close()
    for note in report.notes:
        click.echo(f"mirror: note: {shown(note)}", err=True)
    if quiet and report.ok:
        ctx.exit(0)
    if fmt == "json":
        click.echo(json.dumps(report.to_json(), indent=2))
    else:
        click.echo(report.summary())
    ctx.exit(0 if report.ok else 1)


COMMANDS = (verify_cmd,)


def register(group: click.Group) -> None:
    """Add `verify` to ``group``; calling it again changes nothing."""
    for cmd in COMMANDS:
        if group.commands.get(cmd.name or "") is not cmd:
            group.add_command(cmd)
