"""`mirror report`: one self-contained HTML file with charts of the mirror.

Click only: parses the flags, calls ``mirror.report.write_report`` and prints one line.
`register` adds it to the `mirror` group.
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

import click

from mirror import report
from mirror.cliutil import check_since_until, db_option, endpoints_option, when_option


@click.command("report")
@db_option
@click.option("-o", "--output", type=click.Path(path_type=Path), default="mirror-report.html",
              show_default=True, metavar="PATH", help="Where to write the HTML file.")  # fmt: skip
@endpoints_option("Only this endpoint (repeatable); an app id also covers its routes.", "--model")
@when_option("--since", "From this time on (ended_at; widened to the whole hour). Default: 7d.")
@when_option("--until", "Before this time (widened to the whole hour). Default: now.")
@click.option("--by", type=click.Choice(report.BUCKETS),
              help="Points per hour or per day (default: hour for ranges up to 14 days).")  # fmt: skip
@click.option("--browse-url", default=report.DEFAULT_BROWSE_URL, show_default=True, metavar="URL",
              help="Where `mirror browse` serves, for the links to requests ('' for none).")  # fmt: skip
@click.option("-q", "--quiet", is_flag=True, help="Print nothing on success.")
def report_cmd(
    db: str,
    output: Path,
    endpoints: tuple[str, ...],
    since: datetime | None,
    until: datetime | None,
    by: str | None,
    browse_url: str,
    quiet: bool,
) -> None:
    """Write an HTML report with charts: open it from disk, no network needed.

    \b
    Requests and errors over time, p50/p95/p99 durations, in total and per
    endpoint; billable units per day; the slowest and the failed requests
    (linked to `mirror browse`); the mirror's health. The figures are those of
    `mirror stats` for the same range. Needs: pip install 'fal-mirror[report]'.
    Example: mirror report --since 3d -o week.html && xdg-open week.html
    """
    check_since_until(since, until)
    opts = report.ReportOptions(
        endpoints=endpoints, since=since, until=until, by=by, browse_url=browse_url or None
    )
    done = report.write_report(db, output, opts)
    if done.requests == 0:
        click.echo(
            f"mirror: note: no request ended between {done.since} and {done.until}: "
            "the report says there is nothing to show",
            err=True,
        )
    if not quiet:
        click.echo(
            f"wrote {done.path}: {done.requests:,} requests, {done.endpoints} endpoints, "
            f"{done.since} – {done.until} per {done.by}, {done.bytes / 2**20:.1f} MiB"
        )


def register(group: click.Group) -> None:
    """Add `report` to ``group``; calling it again changes nothing."""
    if group.commands.get(report_cmd.name or "") is not report_cmd:
        group.add_command(report_cmd)
