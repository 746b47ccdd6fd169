"""Hostile filter values given to `mirror query`: never a traceback, never a write.

SQL fragments, LIKE wildcards, FTS5 operators, unbalanced quotes, huge and non-ASCII values
in every filter: each run either answers (exit 0, with only rows that really match) or
refuses in one ``usage`` line (exit 2); the file is byte-for-byte unchanged afterwards.
(The query suite covers the filters' semantics; this is the reliability side.)
"""

from __future__ import annotations

import json

import pytest
from support.cli import assert_one_line, run_cli
from support.compare import digest, mirror_rows
from support.figures import count
from support.sim import env_for, static_world, sync_args

from mirror.simulator import SimulatedAPI

HOSTILE = [
    "x' OR '1'='1",
    "acme/flux-lora' --",
    "'; DROP TABLE requests; --",
    "acme/flux_lora",  # _ is a LIKE wildcard
    "acme/%",
    "acme/flux-lora/%",
    '"',
    '"unbalanced',
    "NEAR(a b)",
    "a OR b",
    "* AND -",
    "prompt:*",
    "\\",
    "é" * 3000,
    "🦊" * 50,
    "x" * 100_000,
    "",
    " ",
    "\t\n",
    "NULL",
    "0x00",
    "..",
]
OPTIONS = ["-e", "--id", "--search", "--since", "--until", "--status-code", "--min-duration",
           "-c"]  # fmt: skip


@pytest.fixture(scope="module")
def synced_db(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("hostile")
    world = static_world(seed=121, hours=6, per_hour=40)
    db = tmp / "m.db"
    with SimulatedAPI(world) as api:
        o = run_cli(sync_args(db, "--since", "7h"), env_for(api.base_url), tmp / "out",
                    no_second_wait=True)  # fmt: skip
    assert o.code == 0, o.stderr
    return db


@pytest.mark.parametrize("option", OPTIONS)
def test_hostile_filter_values(tmp_path, synced_db, option: str) -> None:
    wal = synced_db.with_name(synced_db.name + "-wal")
    before = digest(synced_db)
    rows = mirror_rows(synced_db)
    answered = refused = 0
    for value in HOSTILE:
        o = run_cli(["query", "--db", str(synced_db), option, value, "-f", "json", "-n", "0"],
                    env_for("http://127.0.0.1:9/v1"), tmp_path / "out")  # fmt: skip
        where = f"query {option} {value[:40]!r}"
        count("hostile filter values tried")
        assert "Traceback" not in o.stderr and "internal error" not in o.stderr, (
            f"{where}: {o.stderr[-1500:]}"
        )
        if o.code == 2:
            assert_one_line(o.stderr, "usage", context=where)
            refused += 1
            continue
        assert o.code == 0, f"{where}: exit {o.code}: {o.stderr[-1500:]}"
        out = json.loads(o.stdout)
        answered += 1
        for item in out:
            rid = item.get("request_id")
            if option == "-e":
                ep = item["endpoint_id"]
                assert ep == value or ep.startswith(value + "/"), f"{where} returned {ep}"
            if option == "--id":
                assert rid == value, f"{where} returned {rid}"
            if rid is not None:
                assert rid in rows, f"{where} returned a request the mirror does not hold"
    assert answered + refused == len(HOSTILE)
    # (an empty WAL file may come and go as readers open and close the file: no content)
    assert digest(synced_db) == before, f"queries with hostile {option} values changed the file"
    assert not wal.exists() or wal.stat().st_size == 0, (
        f"queries with hostile {option} values wrote to the WAL"
    )
