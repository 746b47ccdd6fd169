"""Reading a PostgreSQL mirror independently of mirror's own types, for the pg tests.

Plain SQLAlchemy on psycopg, none of mirror's column types or connection hooks: timestamps
arrive as aware datetimes, ``jsonb`` as decoded JSON values, so they compare with
``e2e.harness.server_record`` the way the SQLite suite compares its files.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from e2e.harness import FIELDS

from mirror.simulator import SimulatedAPI


def pg_engine(url: str) -> sa.Engine:
    url = url.replace("postgresql://", "postgresql+psycopg://", 1)
    return sa.create_engine(url, poolclass=sa.pool.NullPool)


def pg_rows(url: str) -> dict[str, dict[str, Any]]:
    """Every stored request as comparable values; asserts no request_id is stored twice."""
    engine = pg_engine(url)
    try:
        with engine.connect() as conn:
            rows = conn.exec_driver_sql(f"SELECT {', '.join(FIELDS)} FROM requests").all()
    finally:
        engine.dispose()
    out = {r[0]: dict(zip(FIELDS, r, strict=True)) for r in rows}
    assert len(out) == len(rows), f"{len(rows) - len(out)} request_ids are stored twice"
    return out


def pg_query(url: str, sql: str) -> list[tuple[Any, ...]]:
    engine = pg_engine(url)
    try:
        with engine.connect() as conn:
            return [tuple(r) for r in conn.exec_driver_sql(sql).all()]
    finally:
        engine.dispose()


def assert_rows_equal(got: dict[str, dict[str, Any]], expected: dict[str, dict[str, Any]]) -> None:
    missing = sorted(set(expected) - set(got))
    assert not missing, f"{len(missing)} requests missing from the mirror, e.g. {missing[:3]}"
    extra = sorted(set(got) - set(expected))
    assert not extra, f"{len(extra)} requests the server never listed, e.g. {extra[:3]}"
    wrong = [
        (rid, {f: (got[rid][f], want[f]) for f in FIELDS if got[rid][f] != want[f]})
        for rid, want in expected.items()
        if got[rid] != want
    ]
    assert not wrong, f"{len(wrong)} requests differ from the server, e.g. {wrong[:2]}"


@dataclass(frozen=True)
class Call:
    """One API call as the server saw it: who (by key), for what, from when to when."""

    key: str
    path: str
    endpoint_ids: tuple[str, ...]
    began: float  # time.monotonic() when the server read the request
    ended: float  # ... and when it had answered


class IdentifyingAPI(SimulatedAPI):
    """The simulated API, also recording which key made each call and when it began and
    ended (the base log keeps neither): evidence outside the code under test of which
    process asked for what, and when."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.calls: list[Call] = []
        self._calls_lock = threading.Lock()

    def _handle(self, handler: Any, method: str) -> None:
        from urllib.parse import parse_qs, urlsplit

        began = time.monotonic()
        auth = handler.headers.get("Authorization") or ""
        split = urlsplit(handler.path)
        params = parse_qs(split.query)
        try:
            super()._handle(handler, method)
        finally:
            call = Call(
                key=auth.removeprefix("Key ").strip(),
                path=split.path,
                endpoint_ids=tuple(params.get("endpoint_id", ())),
                began=began,
                ended=time.monotonic(),
            )
            with self._calls_lock:
                self.calls.append(call)
