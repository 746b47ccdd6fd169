"""Successful requests without a billing event, per hour, endpoint and history.

Revision ID: 0015
Revises: 0014
Create Date: 2026-12-03

``mirror cost`` estimates what fal has not billed: every successful request that has no
billing event. Finding them meant a probe of ``billing_events`` per successful request
(1M requests: ~4 s). ``unbilled_hourly`` keeps them apart as they are written: per hour (of
``ended_at``), endpoint and history, how many there are (``requests``) and their units in
exact integer millionths (``units_micro``: ``billable_units``, or one unit where the row has
none, as ``summary_hourly`` keeps billable units), so that sums stay exact under the
subtractions below.

A request is in it while it is a success, has ended, and no billing event has its
``request_id``. Triggers keep that true for every writer, in the transaction of the write:

- on ``requests``: an insert adds the row if it qualifies; an update takes the old row out
  and puts the new one in (each if it qualifies); a delete takes it out;
- on ``billing_events``: an insert takes its request out (an event arriving after its
  request); a delete puts it back; an event of a request not stored yet changes nothing,
  and the request, when it arrives, finds its event and never enters.

On SQLite a sync's own inserts are added once per batch (``mirror.unbilled.BATCH_NEW``,
while ``sync_batch`` has its row, as revision 0005 does for the summary). On PostgreSQL a
request and its event may be written by two transactions at once, neither seeing the
other's row: the triggers take a transaction advisory lock first, shared by writers of
requests and exclusive for writers of billing events, and each statement of the trigger
function then reads what the other committed. Writers of requests still run side by side.

The upgrade fills the table from the rows already stored; the downgrade drops it.
"""

from alembic import op

revision = "0015"
down_revision = "0014"
branch_labels = None
depends_on = None

#: the advisory lock key the PostgreSQL triggers take ("mirror" + 0x0015)
LOCK_KEY = 0x6D6972726F720015

_COLS = "hour, endpoint_id, history, requests, units_micro"
_KEY = "endpoint_id, hour, history"
_ADD = """ON CONFLICT (endpoint_id, hour, history) DO UPDATE SET
            requests = unbilled_hourly.requests + excluded.requests,
            units_micro = unbilled_hourly.units_micro + excluded.units_micro"""

# --------------------------------------------------------------------------- SQLite

_S_HOUR = "substr({r}.ended_at, 1, 13) || ':00:00.000000Z'"
_S_MICRO = "CAST(round(COALESCE({r}.billable_units, 1.0) * 1000000) AS INTEGER)"
_QUALIFIES = "{r}.status = 'success' AND {r}.ended_at IS NOT NULL"
_NO_EVENT = "NOT EXISTS (SELECT 1 FROM billing_events e WHERE e.request_id = {r}.request_id)"
_NO_BATCH = "NOT EXISTS (SELECT 1 FROM sync_batch)"


def _s_add(r: str, where: str) -> str:
    """Add the requests ``r`` of a FROM/WHERE tail (or the row ``r`` itself) to the rollup."""
    return f"""INSERT INTO unbilled_hourly ({_COLS})
        SELECT {_S_HOUR.format(r=r)}, {r}.endpoint_id, {r}.history, 1, {_S_MICRO.format(r=r)}
        {where}
        {_ADD};"""


def _s_sub_row(r: str) -> str:
    """Take the row ``r`` (NEW or OLD of ``requests``) out."""
    key = (
        f"endpoint_id = {r}.endpoint_id AND hour = {_S_HOUR.format(r=r)} AND history = {r}.history"
    )
    return f"""UPDATE unbilled_hourly SET requests = requests - 1,
            units_micro = units_micro - {_S_MICRO.format(r=r)} WHERE {key};
        DELETE FROM unbilled_hourly WHERE {key} AND requests = 0;"""


def _s_sub_request(request_id: str) -> str:
    """Take the stored request ``request_id`` out, if it is in."""
    found = f"FROM requests r WHERE r.request_id = {request_id} AND {_QUALIFIES.format(r='r')}"
    key = f"({_KEY}) = (SELECT r.endpoint_id, {_S_HOUR.format(r='r')}, r.history {found})"
    return f"""UPDATE unbilled_hourly SET requests = requests - 1,
            units_micro = units_micro - (SELECT {_S_MICRO.format(r="r")} {found})
        WHERE {key};
        DELETE FROM unbilled_hourly WHERE requests = 0 AND {key};"""


def _s_add_request(request_id: str) -> str:
    """Put the stored request ``request_id`` back, if it qualifies."""
    return _s_add(
        "r", f"FROM requests r WHERE r.request_id = {request_id} AND {_QUALIFIES.format(r='r')}"
    )


_REQUEST_COLUMNS = "request_id, endpoint_id, ended_at, status, billable_units, history"

SQLITE_UP = [
    f"""CREATE TABLE unbilled_hourly (
        endpoint_id TEXT NOT NULL,
        hour TEXT NOT NULL,
        history TEXT NOT NULL,
        requests INTEGER NOT NULL,
        units_micro INTEGER NOT NULL,
        PRIMARY KEY ({_KEY})
    )""",
    f"""INSERT INTO unbilled_hourly ({_COLS})
    SELECT {_S_HOUR.format(r="r")} AS h, r.endpoint_id, r.history, count(*),
           sum({_S_MICRO.format(r="r")})
    FROM requests r WHERE {_QUALIFIES.format(r="r")} AND {_NO_EVENT.format(r="r")}
    GROUP BY r.endpoint_id, h, r.history""",
    f"""CREATE TRIGGER unbilled_requests_ai AFTER INSERT ON requests
    WHEN {_QUALIFIES.format(r="NEW")} AND {_NO_BATCH} AND {_NO_EVENT.format(r="NEW")} BEGIN
        {_s_add("NEW", "WHERE 1")}
    END""",
    f"""CREATE TRIGGER unbilled_requests_ad AFTER DELETE ON requests
    WHEN {_QUALIFIES.format(r="OLD")} AND {_NO_EVENT.format(r="OLD")} BEGIN
        {_s_sub_row("OLD")}
    END""",
    f"""CREATE TRIGGER unbilled_requests_au_old AFTER UPDATE OF {_REQUEST_COLUMNS} ON requests
    WHEN {_QUALIFIES.format(r="OLD")} AND {_NO_EVENT.format(r="OLD")} BEGIN
        {_s_sub_row("OLD")}
    END""",
    f"""CREATE TRIGGER unbilled_requests_au_new AFTER UPDATE OF {_REQUEST_COLUMNS} ON requests
    WHEN {_QUALIFIES.format(r="NEW")} AND {_NO_EVENT.format(r="NEW")} BEGIN
        {_s_add("NEW", "WHERE 1")}
    END""",
    f"""CREATE TRIGGER unbilled_events_ai AFTER INSERT ON billing_events BEGIN
        {_s_sub_request("NEW.request_id")}
    END""",
    f"""CREATE TRIGGER unbilled_events_ad AFTER DELETE ON billing_events BEGIN
        {_s_add_request("OLD.request_id")}
    END""",
    f"""CREATE TRIGGER unbilled_events_au AFTER UPDATE OF request_id ON billing_events
    WHEN OLD.request_id IS NOT NEW.request_id BEGIN
        {_s_add_request("OLD.request_id")}
        {_s_sub_request("NEW.request_id")}
    END""",
]

_SQLITE_TRIGGERS = (
    "unbilled_requests_ai", "unbilled_requests_ad", "unbilled_requests_au_old",
    "unbilled_requests_au_new", "unbilled_events_ai", "unbilled_events_ad", "unbilled_events_au",
)  # fmt: skip
SQLITE_DOWN = [*(f"DROP TRIGGER {name}" for name in _SQLITE_TRIGGERS), "DROP TABLE unbilled_hourly"]

# --------------------------------------------------------------------------- PostgreSQL

_P_HOUR = "date_trunc('hour', {r}.ended_at, 'UTC')"
#: float -> integer millionths, rounding half away from zero exactly as SQLite's round()
_P_MICRO = (
    "trunc(COALESCE({r}.billable_units, 1.0) * 1000000"
    " + CASE WHEN COALESCE({r}.billable_units, 1.0) < 0 THEN -0.5 ELSE 0.5 END)::bigint"
)


def _p_add(r: str, tail: str) -> str:
    return f"""INSERT INTO unbilled_hourly AS u ({_COLS})
            SELECT {_P_HOUR.format(r=r)}, {r}.endpoint_id, {r}.history, 1,
                   {_P_MICRO.format(r=r)} {tail}
            ON CONFLICT ({_KEY}) DO UPDATE SET
                requests = u.requests + excluded.requests,
                units_micro = u.units_micro + excluded.units_micro;"""


def _p_sub(r: str) -> str:
    key = (
        f"endpoint_id = {r}.endpoint_id AND hour = {_P_HOUR.format(r=r)} AND history = {r}.history"
    )
    return f"""UPDATE unbilled_hourly SET requests = requests - 1,
                units_micro = units_micro - {_P_MICRO.format(r=r)} WHERE {key};
            DELETE FROM unbilled_hourly WHERE {key} AND requests = 0;"""


_P_QUALIFIES = "{r}.status = 'success' AND {r}.ended_at IS NOT NULL"
_P_NO_EVENT = "NOT EXISTS (SELECT 1 FROM billing_events e WHERE e.request_id = {r}.request_id)"

PG_UP = [
    f"""CREATE TABLE unbilled_hourly (
        endpoint_id text COLLATE "C" NOT NULL,
        hour timestamptz NOT NULL,
        history text NOT NULL,
        requests bigint NOT NULL,
        units_micro bigint NOT NULL,
        PRIMARY KEY ({_KEY})
    )""",
    f"""INSERT INTO unbilled_hourly ({_COLS})
    SELECT {_P_HOUR.format(r="r")} AS h, r.endpoint_id, r.history, count(*),
           sum({_P_MICRO.format(r="r")})
    FROM requests r WHERE {_P_QUALIFIES.format(r="r")} AND {_P_NO_EVENT.format(r="r")}
    GROUP BY r.endpoint_id, h, r.history""",
    # A row's own statements each read what other transactions committed (READ COMMITTED,
    # a VOLATILE function): after the lock, the other side's row is seen or not yet written.
    f"""CREATE FUNCTION unbilled_requests() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        PERFORM pg_advisory_xact_lock_shared({LOCK_KEY});
        IF TG_OP IN ('UPDATE', 'DELETE') AND {_P_QUALIFIES.format(r="OLD")}
           AND {_P_NO_EVENT.format(r="OLD")} THEN
            {_p_sub("OLD")}
        END IF;
        IF TG_OP IN ('INSERT', 'UPDATE') AND {_P_QUALIFIES.format(r="NEW")}
           AND {_P_NO_EVENT.format(r="NEW")} THEN
            {_p_add("NEW", "")}
        END IF;
        RETURN NULL;
    END
    $$""",
    f"""CREATE FUNCTION unbilled_events() RETURNS trigger LANGUAGE plpgsql AS $$
    DECLARE
        r requests%ROWTYPE;
    BEGIN
        PERFORM pg_advisory_xact_lock({LOCK_KEY});
        IF TG_OP IN ('UPDATE', 'DELETE') THEN
            SELECT * INTO r FROM requests WHERE request_id = OLD.request_id;
            IF FOUND AND {_P_QUALIFIES.format(r="r")} AND {_P_NO_EVENT.format(r="r")} THEN
                {_p_add("r", "")}
            END IF;
        END IF;
        IF TG_OP IN ('INSERT', 'UPDATE') THEN
            SELECT * INTO r FROM requests WHERE request_id = NEW.request_id;
            IF FOUND AND {_P_QUALIFIES.format(r="r")} THEN
                {_p_sub("r")}
            END IF;
        END IF;
        RETURN NULL;
    END
    $$""",
    """CREATE TRIGGER unbilled_requests_insert_delete AFTER INSERT OR DELETE ON requests
    FOR EACH ROW EXECUTE FUNCTION unbilled_requests()""",
    f"""CREATE TRIGGER unbilled_requests_update AFTER UPDATE OF {_REQUEST_COLUMNS} ON requests
    FOR EACH ROW WHEN (OLD.request_id IS DISTINCT FROM NEW.request_id
        OR OLD.endpoint_id IS DISTINCT FROM NEW.endpoint_id
        OR OLD.ended_at IS DISTINCT FROM NEW.ended_at OR OLD.status IS DISTINCT FROM NEW.status
        OR OLD.billable_units IS DISTINCT FROM NEW.billable_units
        OR OLD.history IS DISTINCT FROM NEW.history)
    EXECUTE FUNCTION unbilled_requests()""",
    """CREATE TRIGGER unbilled_events_insert_delete AFTER INSERT OR DELETE ON billing_events
    FOR EACH ROW EXECUTE FUNCTION unbilled_events()""",
    """CREATE TRIGGER unbilled_events_update AFTER UPDATE OF request_id ON billing_events
    FOR EACH ROW WHEN (OLD.request_id IS DISTINCT FROM NEW.request_id)
    EXECUTE FUNCTION unbilled_events()""",
]

PG_DOWN = [
    "DROP TRIGGER unbilled_events_update ON billing_events",
    "DROP TRIGGER unbilled_events_insert_delete ON billing_events",
    "DROP TRIGGER unbilled_requests_update ON requests",
    "DROP TRIGGER unbilled_requests_insert_delete ON requests",
    "DROP FUNCTION unbilled_events()",
    "DROP FUNCTION unbilled_requests()",
    "DROP TABLE unbilled_hourly",
]


def _run_all(statements: list[str]) -> None:
    for statement in statements:
        op.execute(statement)


def upgrade() -> None:
    dialect = op.get_context().dialect.name
    if dialect == "sqlite":
        _run_all(SQLITE_UP)
    elif dialect == "postgresql":
        _run_all(PG_UP)


def downgrade() -> None:
    dialect = op.get_context().dialect.name
    if dialect == "sqlite":
        _run_all(SQLITE_DOWN)
    elif dialect == "postgresql":
        _run_all(PG_DOWN)
