"""A request's cost beside the request, and the indexes spend questions read.

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-02

``request_costs``: every request with its billing event's figures, a LEFT JOIN (a request
fal has not billed, or whose event the key cannot read, has nulls there). The same SQL on
both backends: plain columns, no function whose spelling differs.

``ix_billing_events_cost`` (both backends): the most expensive requests are the first rows
of this index read backwards, however many events there are.

``ix_billing_events_day`` (SQLite only): billing events by UTC day (the text prefix of
their timestamp), then endpoint and amount, so that spend per day is summed in index order
with no sort (Datasette's canned query, which only runs on SQLite; on PostgreSQL the day of
a ``timestamptz`` is no immutable expression to index).
"""

from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None

VIEW = """CREATE VIEW request_costs AS
SELECT r.request_id, r.endpoint_id, r.history, r.status, r.sent_at, r.ended_at,
       r.duration, r.billable_units,
       e.timestamp AS billed_at, e.output_units, e.unit_price, e.percent_discount,
       e.cost_subtotal, e.cost_discount, e.cost_total, e.cost_estimate_nano_usd,
       e.auth_method, e.api_key_id, e.login_username
FROM requests r LEFT JOIN billing_events e ON e.request_id = r.request_id"""


def upgrade() -> None:
    op.create_index(
        "ix_billing_events_cost", "billing_events", ["cost_estimate_nano_usd", "request_id"]
    )
    if op.get_context().dialect.name == "sqlite":
        op.execute(
            "CREATE INDEX ix_billing_events_day ON billing_events "
            "(substr(timestamp, 1, 10), endpoint_id, cost_estimate_nano_usd)"
        )
    op.execute(VIEW)


def downgrade() -> None:
    op.execute("DROP VIEW request_costs")
    if op.get_context().dialect.name == "sqlite":
        op.execute("DROP INDEX ix_billing_events_day")
    op.drop_index("ix_billing_events_cost", table_name="billing_events")
