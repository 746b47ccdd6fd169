"""`mirror cost`: what was spent, by day, endpoint or key, offline.

Click only: parse the flags, open the database read-only, call ``mirror.cost.spend``, print
with ``mirror.output``. `register` adds the command to the `mirror` group.
"""

from __future__ import annotations

import sys
from datetime import datetime

import click

from mirror import cost, output, query
from mirror.cliutil import (
    by_option,
    check_since_until,
    checked_groups,
    db_option,
    endpoints_option,
    format_option,
    print_notes,
    when_option,
)


@click.command("cost")
@db_option
@when_option("--since", "From this time on (inclusive): 2026-11-01, 2026-11-01T18:00Z, or an "
             "age such as 36h, 7d.")  # fmt: skip
@when_option("--until", "Before this time (exclusive); same forms as --since.")
@endpoints_option("Only this endpoint (repeatable); an app id also matches its routes.")
@by_option("Group by day, endpoint and/or key (who made the call; combinable: --by day,endpoint).")
@click.option("--no-estimate", is_flag=True,
              help="Only what fal billed: leave out the estimate for requests without a "
              "billing event.")  # fmt: skip
@format_option
def cost_cmd(
    db: str,
    since: datetime | None,
    until: datetime | None,
    endpoints: tuple[str, ...],
    by: tuple[str, ...],
    no_estimate: bool,
    fmt: str,
) -> None:
    """What was spent, exactly where fal billed it, estimated where it did not.

    \b
    billed_usd: the billing events fal recorded, summed exactly (events: how many).
    estimated_usd: successful requests with no billing event, at the price seen
    for their time (their billable units, else one unit each); estimated: how many.
    unpriced: model requests with no billing event and no price in USD.
    total_usd = billed_usd + estimated_usd. json/jsonl/csv add the same amounts as
    integers of nano-USD (*_nano_usd). Days are UTC; key is the API key id, or
    user:NAME for a team member's login.
    Example: mirror cost --by day,endpoint --since 30d
    """
    check_since_until(since, until)
    groups = checked_groups(by, cost.check_groups)
    filters = cost.CostFilters(since=since, until=until, endpoints=endpoints)
    with query.open_reader(db) as conn:
        rows = cost.spend(conn, filters, by=groups, estimate=not no_estimate)
    columns = [*groups, *(cost.TABLE_COLUMNS if fmt == "table" else cost.COLUMNS)]
    output.write(sys.stdout, columns, ([r[c] for c in columns] for r in rows), fmt)
    if fmt == "table":
        print_notes(cost.spend_notes(rows))


COMMANDS = (cost_cmd,)


def register(group: click.Group) -> None:
    """Add `cost` to ``group``; calling it again changes nothing."""
    for cmd in COMMANDS:
        if group.commands.get(cmd.name or "") is not cmd:
            group.add_command(cmd)
