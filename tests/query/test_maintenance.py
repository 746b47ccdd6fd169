"""The search index and the hourly summary stay exact while syncs insert, update and delete.

Both are maintained by triggers on ``requests``; these tests drive them through the store's
real upsert, and compare against what a recomputation from ``requests`` gives.
"""

from __future__ import annotations

import contextlib
import sqlite3
from datetime import timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest
import sqlalchemy as sa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from support.compare import derived_tables_exact
from support.rows import fill, make_rows, read_all
from support.sim import NOW

from mirror import query
from mirror.db import reader_engine
from mirror.records import Row, derive_status
from mirror.schema import ROW_COLUMNS
from mirror.store import Store
from mirror.timeparse import to_text


def search(path: Path, words: str, **kw: Any) -> list[str]:
    engine = reader_engine(str(path))
    try:
        with engine.connect() as conn:
            f = query.Filters(search=words, **kw)
            return [r[0] for r in query.select_requests(conn, f, columns=["request_id"])]
    finally:
        engine.dispose()


def row(
    rid: str,
    prompt: str | None,
    *,
    ended: bool = True,
    code: int = 200,
    billable: float | None = 1.0,
) -> Row:
    sent = to_text(NOW)
    end = to_text(NOW.replace(minute=30)) if ended else None
    status_code = code if ended else None
    payload = orjson.dumps({"prompt": prompt}).decode() if prompt is not None else None
    base = (rid, "acme/flux-lora", "r1", sent, sent, end, status_code, 2.5 if ended else None,
            billable if ended else None, payload, None)  # fmt: skip
    return Row(*base, derive_status(end, status_code))


def upsert(path: Path, rows: list[Row], *, payloads: bool = True) -> None:
    store = Store.open(str(path))
    try:
        with store.engine.begin() as conn:
            store.upsert(conn, rows, payloads=payloads, billing=True, now=to_text(NOW))
    finally:
        store.close()


def test_a_non_ascii_prompt_is_found(tmp_path):
    db = tmp_path / "m.db"
    upsert(db, [row("a", "Leuchtturm über Kiel im Nebel"), row("b", "маяк на рассвете"),
                row("c", "phare à Saint-Malo"), row("d", "lighthouse at dusk")])  # fmt: skip
    assert search(db, "über") == ["a"]
    assert search(db, "uber") == ["a"], "diacritics are folded"
    assert search(db, "МАЯК") == ["b"], "case is folded beyond ASCII"
    assert search(db, "Saint-Malo phare") == ["c"]
    assert search(db, "a") == ["c"]  # 'à' is the word 'a' once folded; 'at' is not
    derived_tables_exact(db)


def test_an_updated_row_is_found_once_and_by_its_new_text_only(tmp_path):
    db = tmp_path / "m.db"
    upsert(db, [row("a", "alpha lighthouse", ended=False), row("b", "beta")])
    upsert(db, [row("a", "omega lighthouse")])  # finished, new prompt: one UPDATE
    assert search(db, "alpha") == []
    assert search(db, "omega") == ["a"]
    assert search(db, "lighthouse") == ["a"]
    derived_tables_exact(db)
    upsert(db, [row("a", "omega lighthouse", code=500)])  # a non-payload change
    assert search(db, "lighthouse") == ["a"]
    upsert(db, [row("a", None, code=500)])  # payload expired at fal: the mirror keeps its copy
    assert search(db, "omega", statuses=("error",)) == ["a"]
    upsert(db, [row("a", "omega lighthouse", code=500)] * 3)  # the same row thrice in a batch
    derived_tables_exact(db)
    con = sqlite3.connect(db)
    assert con.execute(
        "SELECT count(*) FROM requests_fts WHERE requests_fts MATCH 'omega'"
    ).fetchone() == (1,)
    con.close()


# ----------------------------------------------------------------- random histories

rids = st.sampled_from([f"r{i}" for i in range(12)])
changes = st.tuples(
    rids,
    st.sampled_from(["insert", "delete"]),
    st.none() | st.sampled_from(["lighthouse", "harbor dusk", "маяк", "über alles"]),
    st.booleans(),  # ended
    st.sampled_from([200, 404, 500]),
    st.none() | st.sampled_from([0.5, 1.0, 0.1, 0.2]),  # billable units: 0.1 + 0.2 drift in floats
    st.sampled_from(["acme/flux-lora", "acme/upscaler"]),
    st.sampled_from([0, 1, 2, 26]),  # hour offset of ended_at
    st.sampled_from([0.1, 0.2, 2.5, 1e-6]),
)


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(history=st.lists(st.lists(changes, min_size=1, max_size=6), min_size=1, max_size=6))
def test_random_histories_keep_index_and_rollups_exact(tmp_path_factory, history):
    db = tmp_path_factory.mktemp("h") / "m.db"
    store = Store.open(str(db))
    try:
        for batch in history:
            with store.engine.begin() as conn:
                rows = []
                for rid, op, prompt, ended, code, units, ep, hours, dur in batch:
                    if op == "delete":  # not something a sync does, but the triggers must hold
                        conn.exec_driver_sql("DELETE FROM requests WHERE request_id = ?", (rid,))
                        continue
                    end = to_text(NOW.replace(hour=hours % 24)) if ended else None
                    sc = code if ended else None
                    payload = orjson.dumps({"prompt": prompt}).decode() if prompt else None
                    rows.append(Row(rid, ep, None, to_text(NOW), None, end, sc,
                                    dur if ended else None, units, payload, payload,
                                    derive_status(end, sc)))  # fmt: skip
                store.upsert(conn, rows, payloads=True, billing=True, now=to_text(NOW))
    finally:
        store.close()
    derived_tables_exact(db)


def test_the_migration_backfills_an_existing_database_and_downgrades(tmp_path):
    """0001 with rows -> 0002 (index and summary built from them) -> 0001 -> 0002."""
    from alembic import command

    from mirror.db import alembic_config, make_engine

    db = tmp_path / "m.db"
    engine = make_engine(str(db))
    with engine.begin() as conn:
        command.upgrade(alembic_config(conn), "0001")
    engine.dispose()
    store = Store(make_engine(str(db)), str(db))
    with store.engine.begin() as conn:
        store.upsert(conn, make_rows(300, seed=9), payloads=True, billing=True, now=to_text(NOW))
    store.close()
    fill(db, [])  # Store.open upgrades to head
    derived_tables_exact(db)
    assert search(db, "lighthouse"), "the existing rows were not indexed"
    engine = make_engine(str(db))
    with engine.begin() as conn:
        command.downgrade(alembic_config(conn), "0001")
    with engine.connect() as conn:
        names = {r[0] for r in conn.exec_driver_sql("SELECT name FROM sqlite_master")}
        cols = [r[2] for r in conn.exec_driver_sql("PRAGMA index_info(ix_requests_endpoint_ended)")]
    engine.dispose()
    assert not names & {"requests_fts", "summary_hourly", "request_log", "ix_requests_sent_at"}
    assert cols == ["endpoint_id", "ended_at", "status_code", "duration"]
    fill(db, make_rows(50, seed=10))
    derived_tables_exact(db)


def fts_config(path: Path) -> dict[str, Any]:
    return dict(read_all(path, "SELECT k, v FROM requests_fts_config WHERE k != 'version'"))


def test_0004_tunes_the_index_and_it_stays_exact_both_ways(tmp_path):
    """0003 with rows -> 0004 (rebuilt) -> more rows -> 0003 (rebuilt) -> more rows."""
    from alembic import command

    from mirror.db import alembic_config, make_engine

    def tables() -> set[str]:
        return {r[0] for r in read_all(db, "SELECT name FROM sqlite_master WHERE type = 'table'")}

    db = tmp_path / "m.db"
    engine = make_engine(str(db))
    with engine.begin() as conn:
        command.upgrade(alembic_config(conn), "0003")
    store = Store(engine, str(db))
    with engine.begin() as conn:
        store.upsert(conn, make_rows(200, seed=11), payloads=True, billing=True, now=to_text(NOW))
    store.close()
    before = search(db, "lighthouse")
    fill(db, [])  # Store.open upgrades to head: the index is rebuilt from the rows
    assert fts_config(db) == {"automerge": 16, "pgsz": 16000}, "0004 did not tune the index"
    assert "requests_fts_docsize" not in tables(), "0004 keeps no per-row sizes"
    derived_tables_exact(db)
    assert search(db, "lighthouse") == before and before, "the rebuilt index lost rows"
    # separate transactions: segments pile up and are merged under the new settings
    rows = make_rows(600, seed=12)
    for i in range(0, len(rows), 20):
        fill(db, rows[i : i + 20])
    derived_tables_exact(db)
    engine = make_engine(str(db))
    with engine.begin() as conn:
        command.downgrade(alembic_config(conn), "0003")
    engine.dispose()
    assert fts_config(db) == {}, "0003's index has FTS5's default settings"
    assert "requests_fts_docsize" in tables()
    engine = make_engine(str(db))  # rows written under 0003's index, without upgrading
    store = Store(engine, str(db))
    with engine.begin() as conn:
        store.upsert(conn, make_rows(50, seed=13), payloads=True, billing=True, now=to_text(NOW))
    store.close()
    derived_tables_exact(db)


def test_integrity_check_catches_a_row_indexed_twice(tmp_path):
    """What derived_tables_exact relies on to prove every row is indexed once (there is no
    ``requests_fts_docsize`` to count since 0004)."""
    db = tmp_path / "m.db"
    fill(db, make_rows(30, seed=14))
    derived_tables_exact(db)
    con = sqlite3.connect(db)
    con.execute(
        "INSERT INTO requests_fts (rowid, json_input, json_output) "
        "SELECT rowid, json_input, json_output FROM requests WHERE json_input IS NOT NULL LIMIT 1"
    )
    con.commit()
    con.close()
    with pytest.raises(pytest.fail.Exception, match="requests_fts does not match requests"):
        derived_tables_exact(db)


# ----------------------------------------------------------------- batch indexing (0005)


def _gate(path: Path) -> tuple[list[tuple[Any, ...]], list[str]]:
    """sync_batch's rows, and the insert triggers that consult it."""
    con = sqlite3.connect(path)
    try:
        names = {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        rows = con.execute("SELECT * FROM sync_batch").fetchall() if "sync_batch" in names else []
        gated = [
            name
            for name, sql in con.execute(
                "SELECT name, sql FROM sqlite_master WHERE type = 'trigger'"
            )
            if "sync_batch" in sql
        ]
        return rows, sorted(gated)
    finally:
        con.close()


def _other_writer(path: Path, rows: list[tuple[Any, ...]]) -> None:
    """Another program writing to the file (the sqlite3 shell, a script): plain SQL, no
    gate, so the row-by-row triggers do the work; then it changes and deletes some rows."""
    con = sqlite3.connect(path)
    with con:
        con.executemany(
            f"INSERT INTO requests ({', '.join(ROW_COLUMNS)}) "
            f"VALUES ({', '.join('?' * len(ROW_COLUMNS))})",
            [(*r, to_text(NOW), to_text(NOW)) for r in rows],
        )
        con.execute(
            'UPDATE requests SET json_input = \'{"prompt": "rewritten by hand"}\', '
            "duration = duration + 1 WHERE request_id = ?",
            (rows[0][0],),
        )
        con.execute("DELETE FROM requests WHERE request_id = ?", (rows[1][0],))
    con.close()


def test_0005_a_batch_indexes_its_new_rows_and_other_writers_keep_the_triggers(tmp_path):
    """0004 with rows -> 0005 -> batches of new and changed rows, plain-SQL writers in
    between -> 0004 -> both kinds of writer again: index and summary exact at every step."""
    from alembic import command

    from mirror.db import alembic_config, make_engine

    db = tmp_path / "m.db"
    engine = make_engine(str(db))
    with engine.begin() as conn:
        command.upgrade(alembic_config(conn), "0004")
    store = Store(engine, str(db))
    rows = make_rows(900, seed=21)
    with engine.begin() as conn:
        store.upsert(conn, rows[:300], payloads=True, billing=True, now=to_text(NOW))
    store.close()
    assert _gate(db) == ([], []), "0004 has no gate"
    fill(db, [])  # Store.open upgrades to head
    gated = ["requests_fts_ai", "requests_histogram_ai", "requests_summary_ai",
             "unbilled_requests_ai"]  # fmt: skip
    assert _gate(db) == ([], gated), "the insert triggers a batch stands in for"
    derived_tables_exact(db)
    # new rows, and rows already stored coming back changed (payload, status, billing)
    changed = [
        r._replace(status_code=500, billable_units=9.5, status=derive_status(r.ended_at, 500),
                   json_input=orjson.dumps({"prompt": f"changed {i}"}).decode())
        for i, r in enumerate(rows[:300:7])
    ]  # fmt: skip
    fill(db, rows[300:600] + changed)
    assert _gate(db)[0] == [], "the gate was committed"
    derived_tables_exact(db)
    assert set(search(db, "changed")) == {r[0] for r in changed}, "changed payloads not found"
    _other_writer(db, make_rows(40, seed=22, start=NOW - timedelta(days=9)))
    derived_tables_exact(db)
    assert search(db, "rewritten by hand"), "a plain-SQL insert and update were indexed"
    engine = make_engine(str(db))
    with engine.begin() as conn:
        command.downgrade(alembic_config(conn), "0004")
    engine.dispose()
    assert _gate(db) == ([], []), "0004's triggers are back, ungated"
    derived_tables_exact(db)
    store = Store(make_engine(str(db)), str(db))  # rows written at 0004, row by row
    with store.engine.begin() as conn:
        store.upsert(conn, rows[600:], payloads=True, billing=True, now=to_text(NOW))
    store.close()
    _other_writer(db, make_rows(40, seed=23, start=NOW - timedelta(days=12)))
    derived_tables_exact(db)
    con = sqlite3.connect(db)
    assert con.execute("SELECT count(*) FROM requests").fetchone() == (900 + 80 - 2,)
    con.close()


def test_a_failed_batch_is_rolled_back_whole_and_never_commits_the_gate(tmp_path):
    """A batch whose second statement fails (more rows than one statement takes, the last
    one refused by a NOT NULL): the transaction is rolled back, and the file is exactly as
    before — rows, index, summary —, the gate gone. A caller that commits anyway (none of
    mirror's does) still never commits the gate, so other writers keep their triggers."""
    from mirror.store import ROWS_PER_STATEMENT

    db = tmp_path / "m.db"
    fill(db, make_rows(200, seed=31))
    before = read_all(db, "SELECT * FROM requests ORDER BY rowid")
    summary = read_all(db, "SELECT * FROM summary_hourly ORDER BY 1, 2, 3")
    rows = make_rows(ROWS_PER_STATEMENT + 200, seed=32, start=NOW - timedelta(days=20))
    last = max(rows, key=lambda r: r[5] or "")
    bad = [r if r is not last else r._replace(endpoint_id=None) for r in rows]  # no endpoint_id
    store = Store.open(str(db))
    try:
        with pytest.raises(sa.exc.IntegrityError), store.engine.begin() as conn:
            store.upsert(conn, bad, payloads=True, billing=True, now=to_text(NOW))
        assert read_all(db, "SELECT * FROM requests ORDER BY rowid") == before
        assert read_all(db, "SELECT * FROM summary_hourly ORDER BY 1, 2, 3") == summary
        derived_tables_exact(db)
        assert _gate(db)[0] == []
        # a careless caller: swallows the error inside the transaction, which then commits
        with store.engine.begin() as conn, contextlib.suppress(sa.exc.IntegrityError):
            store.upsert(conn, bad, payloads=True, billing=True, now=to_text(NOW))
        assert _gate(db)[0] == [], "the gate was committed"
    finally:
        store.close()
    _other_writer(db, make_rows(10, seed=33, start=NOW - timedelta(days=30)))
    con = sqlite3.connect(db)
    indexed = con.execute(
        "SELECT count(*) FROM requests_fts WHERE requests_fts MATCH ?", ('"rewritten"',)
    ).fetchone()
    con.close()
    assert indexed == (1,), "a plain-SQL writer after the careless commit was not indexed"
