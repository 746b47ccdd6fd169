"""The media archive in the offline commands' answers: `mirror query --media`, `mirror stats
--media`, and each target's archive in `mirror status --format json`/`csv`.

One archive made for real (simulated API and CDN, `mirror sync`, `mirror media --inputs`)
over two endpoints: a file both refer to (stored once), an input upload, a file fal deleted
before it was archived (gone), a request with no file. Every answer is compared with what
SQL over the file says, read without mirror's code.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import sqlite3
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from support.cli import run_cli as run_process
from support.media import media_site

APP, OTHER = "acme/app", "acme/other"


@pytest.fixture(scope="module")
def archive(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    tmp = tmp_path_factory.mktemp("media-answers")
    db = tmp / "m.db"
    with media_site() as site:
        shared = site.file("panda/shared.png", 4000)
        ids = {
            "two": site.request({"images": [shared, site.file("panda/own.png", 6000)]}),
            "upload": site.request({"image": shared},
                                   json_input={"image_url": site.file("panda/in.png", 2000)}),
            "gone": site.request(
                {"video": site.file("tiger/v.mp4", content_type="video/mp4",
                                    expires_at=site.now - timedelta(hours=1))},
                endpoint=OTHER),
            "other": site.request({"audio_file": site.file("rabbit/a.mp3", 3000,
                                                           content_type="audio/mpeg")},
                                  endpoint=OTHER),
            "none": site.request({"text": "nothing to keep"}),
        }  # fmt: skip
        env = site.env()
        for args in (["sync", "--since", "1h", "-e", APP, "-e", OTHER, "-q"],
                     ["media", "--inputs", "-q"]):  # fmt: skip
            r = run_process([*args, "--db", str(db)], env, tmp / "out", no_second_wait=True)
            assert r.code == 0, f"{args[0]} failed: {r.stderr}"
    return {"db": db, "ids": ids}


def sql(db: Path, statement: str, *params: Any) -> list[tuple[Any, ...]]:
    con = sqlite3.connect(db)
    try:
        return con.execute(statement, params).fetchall()
    finally:
        con.close()


def files_of(db: Path) -> dict[str, list[dict[str, Any]]]:
    """Each request's archived files as `query --media` lists them, from SQL."""
    out: dict[str, list[dict[str, Any]]] = {}
    root = db.with_name(db.name + ".media")
    for rid, side, path, sha, name, ctype in sql(
        db,
        "SELECT request_id, side, path, sha256, file_name, content_type FROM media_refs "
        "WHERE state = 'archived' ORDER BY request_id, side, path",
    ):
        out.setdefault(rid, []).append({"side": side, "path": path,
                                        "file": str(root / sha[:2] / sha),
                                        "file_name": name, "content_type": ctype})  # fmt: skip
    return out


def figures(db: Path, where: str = "1", by_endpoint: bool = True) -> dict[Any, dict[str, int]]:
    """files (distinct) and bytes archived, references gone: per endpoint or in all."""
    key = "q.endpoint_id" if by_endpoint else "NULL"
    rows = sql(
        db,
        f"SELECT {key}, count(DISTINCT CASE WHEN m.state = 'archived' THEN m.sha256 END), "
        "sum(m.state = 'gone') FROM media_refs m JOIN requests q USING (request_id) "
        f"WHERE {where} GROUP BY 1",
    )
    out = {}
    for k, files, gone in rows:
        size = sql(
            db,
            "SELECT coalesce(sum(size), 0) FROM media_files WHERE sha256 IN (SELECT m.sha256 "
            "FROM media_refs m JOIN requests q USING (request_id) WHERE m.state = 'archived' "
            f"AND {where} AND ({key} IS ? OR ? IS NULL))",
            k, k,
        )[0][0]  # fmt: skip
        out[k] = {"media_files": files, "media_bytes": size, "media_gone": gone}
    return out


@pytest.mark.parametrize("fmt", ["json", "jsonl", "csv", "table"])
def test_query_lists_each_requests_archived_files_in_every_format(run_cli, archive, fmt):
    db, ids = archive["db"], archive["ids"]
    r = run_cli(["query", "--db", str(db), "--media", "-n", "0", "-f", fmt],
                env={"COLUMNS": "1000"})  # fmt: skip
    assert r.exit_code == 0, r.output
    if fmt == "json":
        rows = json.loads(r.stdout)
    elif fmt == "jsonl":
        rows = [json.loads(line) for line in r.stdout.splitlines()]
    elif fmt == "csv":
        rows = [{**row, "media": json.loads(row["media"])}
                for row in csv.DictReader(io.StringIO(r.stdout))]  # fmt: skip
    else:
        lines = r.stdout.splitlines()
        rows = [{"request_id": ln.split()[0], "media": ln.split()[6:]} for ln in lines[2:]]
    got = {row["request_id"]: row["media"] for row in rows}
    want = {rid: files_of(db).get(rid, []) for rid in ids.values()}
    if fmt == "table":
        want = {rid: [f["file"] for f in files] for rid, files in want.items()}
    assert got == want
    assert [f["path"] for f in files_of(db)[ids["upload"]]] == ["$.image_url", "$.image"]
    for files in files_of(db).values():
        for f in files:
            digest = hashlib.sha256(Path(f["file"]).read_bytes()).hexdigest()
            assert digest == Path(f["file"]).name, f"{f['file']} is not the archived file"


def test_query_media_without_the_request_id_column(run_cli, archive):
    db, ids = archive["db"], archive["ids"]
    r = run_cli(["query", "--db", str(db), "--media", "-c", "endpoint_id", "-f", "json",
                 "--id", ids["two"]])  # fmt: skip
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout) == [{"endpoint_id": APP, "media": files_of(db)[ids["two"]]}]


def test_query_media_of_a_server_database_needs_its_folder(run_cli):
    r = run_cli(["query", "--db", "postgresql://127.0.0.1:9/none", "--media"])
    assert r.exit_code == 2, r.output
    assert "--media-dir" in r.stderr and "Traceback" not in r.output, r.stderr


def test_stats_adds_the_archives_figures_of_the_requests_counted(run_cli, archive):
    db = archive["db"]
    r = run_cli(["stats", "--db", str(db), "--media", "--by", "endpoint", "-f", "json"])
    assert r.exit_code == 0, r.output
    got = {row["endpoint"]: {k: row[k] for k in ("media_files", "media_bytes", "media_gone")}
           for row in json.loads(r.stdout)}  # fmt: skip
    assert got == figures(db) and got[APP]["media_files"] == 3 and got[OTHER]["media_gone"] == 1
    r = run_cli(["stats", "--db", str(db), "--media", "-f", "json"])
    (row,) = json.loads(r.stdout)
    want = figures(db, by_endpoint=False)[None]
    assert {k: row[k] for k in want} == want and want["media_files"] == 4, row
    narrowed = run_cli(["stats", "--db", str(db), "--media", "-e", OTHER, "-f", "json"])
    (row,) = json.loads(narrowed.stdout)
    assert (row["requests"], row["media_files"], row["media_gone"]) == (2, 1, 1), row


def test_stats_media_in_a_narrow_table_keeps_its_columns(run_cli, archive):
    r = run_cli(["stats", "--db", str(archive["db"]), "--media", "--by", "endpoint"],
                env={"COLUMNS": "60"})  # fmt: skip
    assert r.exit_code == 0, r.output
    lines = r.stdout.splitlines()
    assert lines[0].split() == ["endpoint", "requests", "media_files", "media_bytes",
                                "media_gone"], r.stdout  # fmt: skip
    assert all(len(ln) <= 60 for ln in lines), r.stdout
    assert "left out to fit 60" in r.stderr and "media" not in r.stderr, r.stderr


def test_stats_media_by_another_group_is_one_line_and_exit_2(run_cli, archive):
    r = run_cli(["stats", "--db", str(archive["db"]), "--media", "--by", "endpoint,day"])
    assert r.exit_code == 2, r.output
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "--by endpoint" in lines[0], r.stderr


@pytest.mark.parametrize("fmt", ["json", "csv"])
def test_status_gives_each_targets_archive(run_cli, archive, fmt):
    db = archive["db"]
    r = run_cli(["status", "--db", str(db), "-f", fmt])
    assert r.exit_code == 0, r.output
    if fmt == "json":
        got = {row["target"]: row["media"] for row in json.loads(r.stdout)}
    else:
        got = {row["target"]: json.loads(row["media"])
               for row in csv.DictReader(io.StringIO(r.stdout))}  # fmt: skip
    want = figures(db)
    for target in (APP, OTHER):
        states = dict(sql(db, "SELECT state, count(*) FROM media_refs JOIN requests q "
                              "USING (request_id) WHERE q.endpoint_id = ? GROUP BY 1", target))  # fmt: skip
        (last_gone,) = sql(db, "SELECT max(gone_at) FROM media_refs JOIN requests q "
                               "USING (request_id) WHERE q.endpoint_id = ?", target)[0]  # fmt: skip
        assert got[target] == {
            "files": want[target]["media_files"], "bytes": want[target]["media_bytes"],
            "last_gone_at": last_gone,
            **{s: states.get(s, 0) for s in ("pending", "archived", "gone", "failed", "refused")},
        }, target  # fmt: skip
