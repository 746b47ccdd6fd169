"""Alembic environment: runs on the connection mirror hands in, inside its transaction.

`mirror` calls ``alembic.command.upgrade`` with ``config.attributes["connection"]`` set to a
connection that already holds a transaction (and, for SQLite files, the writer lock), so the
whole upgrade commits or rolls back as one. From the `alembic` command line, ``-x db=PATH``
names the database instead.
"""

from __future__ import annotations

from alembic import context

config = context.config
connection = config.attributes.get("connection")


def _run(conn) -> None:  # type: ignore[no-untyped-def]
    context.configure(
        connection=conn,
        target_metadata=None,
        render_as_batch=conn.dialect.name == "sqlite",
        transactional_ddl=True,
    )
    with context.begin_transaction():
        context.run_migrations()


if connection is not None:
    _run(connection)
else:
    from mirror.db import make_engine

    db = context.get_x_argument(as_dictionary=True).get("db", "mirror.db")
    engine = make_engine(db)
    with engine.begin() as conn:
        _run(conn)
