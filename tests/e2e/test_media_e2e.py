"""`mirror media` end to end: the real command, the simulated API and its CDN on loopback.

Each test builds the files it needs (sizes, expiries, signatures, lies, faults), syncs the
requests that refer to them, archives, and reads what was left on disk and in the
database without mirror's code.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import signal
import sqlite3
import stat
import time
from datetime import timedelta
from pathlib import Path

import pytest
from support.cli import assert_one_line, run_cli
from support.compare import db_query
from support.media import APP, files_on_disk, media_site, refs
from support.proxy import forward_proxy, tinyproxy_missing

SYNC = ["sync", "--since", "1h", "-e", APP, "-q"]


def _sync(db: Path | str, env: dict[str, str], out: Path, *extra: str) -> None:
    r = run_cli([*SYNC, "--db", str(db), *extra], env, out, no_second_wait=True)
    assert r.code == 0, f"sync failed: {r.stderr}"


def _media(db: Path | str, env: dict[str, str], out: Path, *extra: str, **kw):
    return run_cli(["media", "--db", str(db), *extra], env, out, **kw)


def gone_minute(db: Path) -> str:
    """When the tombstones were written, to the minute, as `mirror status` shows it."""
    con = sqlite3.connect(db)
    try:
        return con.execute("SELECT max(gone_at) FROM media_refs").fetchone()[0][:16] + "Z"
    finally:
        con.close()


def _stored(root: Path) -> dict[str, str]:
    """The store's files by hash name (tmp/ and the lock left out), checked named right."""
    files = {
        k: v for k, v in files_on_disk(root).items() if not k.startswith("tmp/") and k != ".lock"
    }
    for rel, sha in files.items():
        assert rel == f"{sha[:2]}/{sha}", f"{rel} is not named by the hash of its bytes"
    return files


def test_archive_stores_each_file_once_by_hash_and_a_second_run_fetches_nothing(tmp_path):
    with media_site() as site:
        a = site.file("panda/a.png", 5000)
        b = site.file("panda/b.png", 70_000, content_type="video/mp4")
        site.request({"images": [a, b], "seed": 1})
        site.request({"nested": {"deeper": [{"video": b}]}})  # the same file again
        site.request({"image_url": site.cdn.url("panda/a.png")})  # a bare URL to the same
        env = site.env()
        db = tmp_path / "m.db"
        _sync(db, env, tmp_path / "out")
        first = _media(db, env, tmp_path / "out")
        assert first.code == 0, first.stderr
        assert first.stderr == ""
        assert "2 files archived" in first.stdout, first.stdout
        hits = len(site.cdn.log)
        second = _media(db, env, tmp_path / "out")
        assert second.code == 0, second.stderr
        assert "0 files archived" in second.stdout, second.stdout
        assert len(site.cdn.log) == hits, "a second run asked the CDN again"
        want = {site.cdn.sha256("panda/a.png"), site.cdn.sha256("panda/b.png")}
    root = tmp_path / "m.db.media"
    listed = run_cli(["media", "--db", str(db), "--paths", "-f", "jsonl"], env, tmp_path / "out")
    rows = [json.loads(line) for line in listed.stdout.splitlines()]
    assert [(r["path"], Path(r["file"]).parent.parent) for r in rows] == [
        ("$.images[0]", root), ("$.images[1]", root), ("$.nested.deeper[0].video", root),
        ("$.image_url", root),
    ], rows  # fmt: skip
    for r in rows:
        assert hashlib.sha256(Path(r["file"]).read_bytes()).hexdigest() == Path(r["file"]).name
    assert set(_stored(root).values()) == want
    states = refs(db)
    assert {s for s, *_ in states.values()} == {"archived"}, states
    assert os.listdir(root / "tmp") == []
    for dirpath, dirs, names in os.walk(root):
        for d in dirs:
            mode = stat.S_IMODE((Path(dirpath) / d).stat().st_mode)
            assert mode & 0o077 == 0, f"{d} is open to others ({oct(mode)})"
        for n in names:
            mode = stat.S_IMODE((Path(dirpath) / n).stat().st_mode)
            assert mode & 0o077 == 0, f"{n} is open to others ({oct(mode)})"


def test_gone_files_are_tombstones_and_transient_faults_are_retried(tmp_path):
    with media_site(seed=4, p_5xx=0.2, p_429=0.1, p_reset=0.1) as site:
        now = site.now
        ok = site.file("lion/ok.png", 4000)
        cut = site.file("lion/cut.png", 90_000, truncate_first=2)
        expired = site.file("lion/expired.png", expires_at=now - timedelta(hours=1))
        signed_ok = site.file("lion/signed.png", signed_until=now + timedelta(days=7))
        signed_old = site.file("lion/signed-old.png", signed_until=now - timedelta(minutes=1))
        site.request({"images": [ok, cut, expired, signed_ok, signed_old]})
        env = site.env()
        db = tmp_path / "m.db"
        _sync(db, env, tmp_path / "out")
        r = _media(db, env, tmp_path / "out")
        assert r.code == 0, r.stderr
        urls = {n: site.cdn.url(n) for n in ("lion/ok.png", "lion/cut.png", "lion/expired.png",
                                              "lion/signed.png", "lion/signed-old.png")}  # fmt: skip
        want_sha = {n: site.cdn.sha256(n) for n in urls}
    got = refs(db)
    for n in ("lion/ok.png", "lion/cut.png", "lion/signed.png"):
        state, sha, _err, _gone = got[urls[n]]
        assert (state, sha) == ("archived", want_sha[n]), f"{n}: {got[urls[n]]}"
    assert got[urls["lion/expired.png"]][0::3] == ("gone", True)
    state, _sha, error, gone = got[urls["lion/signed-old.png"]]
    assert (state, gone) == ("gone", True) and "signed URL expired" in error, error
    assert "2 gone" in r.stdout and "0 failed" in r.stdout, r.stdout
    status = run_cli(["status", "--db", str(db)], env, tmp_path / "out")
    # the archive's line (the account's cost line may follow it)
    last = next((x for x in status.stdout.splitlines() if x.startswith("media: ")), "")
    assert last.startswith("media: 3 files archived ("), status.stdout
    assert last.endswith(
        "references: 0 pending, 2 gone (last " + f"{gone_minute(db)}), 0 failed, 0 refused"
    ), last


def test_the_api_key_never_reaches_a_media_host(tmp_path):
    """The key (the simulator's, a canary) is sent to the API by `sync --media`, and the
    CDN, which looks for it and its secret half in every request, never sees it."""
    with media_site() as site:
        redirected = site.file("panda/r.png", redirect_to="/files/panda/target.png")
        target = site.file("panda/target.png")
        site.request({"images": [site.file("panda/x.png"), redirected, target]})
        env = site.env()
        db = tmp_path / "m.db"
        r = run_cli([*SYNC, "--db", str(db), "--media"], env, tmp_path / "out",
                    no_second_wait=True)  # fmt: skip
        assert r.code == 0, r.stderr
        log = site.cdn.log
        assert len(log) >= 3, f"the CDN was asked {len(log)} times"
        assert not any(h.canary_seen for h in log), "the key reached the CDN"
        assert not any(h.authorization_present for h in log), "an Authorization header did"
        assert any(e.authorization_present for e in site.api.log), "the API got no key"


HOSTILE = {
    # name: (how the file is made, what the one line says)
    "redirect to a link-local address": (
        dict(redirect_to="http://169.254.169.254/latest/meta-data/"), "refused"),
    "redirect to a private address": (dict(redirect_to="https://10.0.0.7/x.png"), "refused"),
    "oversize": (dict(size=300_000), "over the per-file cap"),
    "endless body": (dict(size=10, endless=True), "past the per-file cap"),
    "lying size": (dict(declared_size=1234), "declares 1234"),
}  # fmt: skip
HOSTILE_URLS = {
    "a host not on the list": ("https://evil.example.com/files/a.png", "not the simulated CDN"),
    "credentials in the URL": ("http://fal.media@127.0.0.1:9/files/a.png", "credentials"),
    "a dot-dot path": ("{cdn}/files/../../etc/passwd", "'..' segment"),
    "an encoded dot-dot path": ("{cdn}/files/%2e%2e/%2e%2e/etc/passwd", "'..' segment"),
    "an encoded slash": ("{cdn}/files/..%2f..%2fetc/passwd", "encoded"),
}


@pytest.mark.parametrize("case", [*HOSTILE, *HOSTILE_URLS])
def test_every_hostile_file_is_refused_with_one_line_and_nothing_written_outside(tmp_path, case):
    with media_site() as site:
        if case in HOSTILE:
            make, needle = HOSTILE[case]
            obj = site.file(f"bad/{case.replace(' ', '-')}.png", **make)
            if make.get("endless"):  # nothing declared: only the cap stops it
                del obj["file_size"]
        else:
            template, needle = HOSTILE_URLS[case]
            obj = {"url": template.format(cdn=site.cdn.base_url), "content_type": "image/png"}
        site.request({"image": obj})
        env = site.env()
        db = tmp_path / "data" / "m.db"
        db.parent.mkdir()
        _sync(db, env, tmp_path / "out")
        before = files_on_disk(tmp_path / "data")
        r = _media(db, env, tmp_path / "out", "--max-file-size", "200k")
        assert r.code == 0, r.stderr
        line = assert_one_line(r.stderr, "note", context=case)
        assert needle in line, f"{case}: {line}"
    after = files_on_disk(tmp_path / "data")
    new = {p for p in after if p not in before}
    outside = {p for p in new if not p.startswith("m.db")}
    assert not outside, f"{case}: written outside the mirror and its store: {outside}"
    store = {p for p in new if p.startswith("m.db.media/") and p != "m.db.media/.lock"}
    assert not store, f"{case}: the store holds {store}"


def test_a_listed_host_that_resolves_to_loopback_is_refused_before_connecting(tmp_path):
    """Against the real API's base URL (not loopback), `localhost` added as a media host
    passes the URL policy and is refused at the address check: the CDN is never asked."""
    with media_site() as site:
        site.request({"image": {"url": "https://localhost/files/a.png", "file_size": 5}})
        env = site.env()
        db = tmp_path / "m.db"
        _sync(db, env, tmp_path / "out")
        env = dict(env, MIRROR_BASE_URL="https://api.fal.ai/v1", MIRROR_MEDIA_HOSTS="localhost")
        r = _media(db, env, tmp_path / "out")
        assert r.code == 0, r.stderr
        line = assert_one_line(r.stderr, "note")
        assert "resolves to" in line and "loopback" in line, line
        assert site.cdn.log == []


def test_a_run_killed_mid_download_leaves_no_half_file_and_the_next_completes(tmp_path):
    with media_site() as site:
        fast = [site.file(f"tiger/f{k}.png", 3000) for k in range(4)]
        slow = site.file("tiger/slow.mp4", 40_000, content_type="video/mp4", drip=0.03)
        site.request({"images": fast, "video": slow})
        env = site.env()
        db = tmp_path / "m.db"
        _sync(db, env, tmp_path / "out")
        killed = _media(db, env, tmp_path / "out", kill_after=0.3,
                        after=lambda: any(p.endswith("slow.mp4") for p in site.cdn.arrivals))  # fmt: skip
        assert killed.code == -signal.SIGKILL, f"the run was not killed: {killed}"
        root = tmp_path / "m.db.media"
        got = refs(db)
        stored = _stored(root)
        slow_url = site.cdn.url("tiger/slow.mp4")
        assert got[slow_url][0] == "pending", got[slow_url]
        for url, (state, sha, *_rest) in got.items():
            if state == "archived":
                assert stored.get(f"{sha[:2]}/{sha}") == sha, f"{url} counts as archived, is not"
        assert site.cdn.sha256("tiger/slow.mp4") not in stored.values()
        again = _media(db, env, tmp_path / "out")
        assert again.code == 0, again.stderr
        want = {site.cdn.sha256(f"tiger/f{k}.png") for k in range(4)}
        want.add(site.cdn.sha256("tiger/slow.mp4"))
    assert set(_stored(root).values()) == want
    assert os.listdir(root / "tmp") == [], "the killed run's partial file is still there"


def test_a_file_that_never_finishes_is_abandoned_at_its_deadline_and_tried_next_run(tmp_path):
    with media_site() as site:
        site.request({"video": site.file("tiger/drip.mp4", 200_000, drip=0.02)})
        env = site.env()
        db = tmp_path / "m.db"
        _sync(db, env, tmp_path / "out")
        t0 = time.monotonic()
        r = _media(db, env, tmp_path / "out", "--file-deadline", "1s")
        took = time.monotonic() - t0
        assert r.code == 0, r.stderr
        line = assert_one_line(r.stderr, "note")
        assert "not finished within 1s" in line, line
        assert took < 30, f"the run took {took:.0f}s despite the deadline"
        ((state, *_rest),) = refs(db).values()
        assert state == "failed"
        assert os.listdir(tmp_path / "m.db.media" / "tmp") == []
        site.cdn.add(dataclasses.replace(site.cdn.file("tiger/drip.mp4"), drip=0.0))
        again = _media(db, env, tmp_path / "out")
        assert again.code == 0 and "1 files archived" in again.stdout, again.stdout


def test_dry_run_and_the_byte_budget(tmp_path):
    with media_site() as site:
        site.request({"images": [site.file(f"p/{k}.png", 10_000) for k in range(6)]})
        env = site.env()
        db = tmp_path / "m.db"
        _sync(db, env, tmp_path / "out")
        dry = _media(db, env, tmp_path / "out", "--dry-run")
        assert dry.code == 0, dry.stderr
        assert "would fetch 6 files, 58.6 KiB declared" in dry.stdout, dry.stdout
        assert site.cdn.log == [] and not (tmp_path / "m.db.media").exists()
        assert refs(db) == {}, "the dry run wrote references"
        part = _media(db, env, tmp_path / "out", "--max-bytes", "25k", "--media-concurrency", "1")
        assert part.code == 0, part.stderr
        assert "2 files archived" in part.stdout and "left for the next run" in part.stdout, (
            part.stdout
        )
        rest = _media(db, env, tmp_path / "out")
        assert "4 files archived" in rest.stdout, rest.stdout
    assert len(_stored(tmp_path / "m.db.media")) == 6


def test_verify_media_finds_missing_and_corrupt_files_and_repair_fetches_them(tmp_path):
    with media_site() as site:
        site.request({"images": [site.file(f"v/{k}.png", 6000) for k in range(3)]})
        env = site.env()
        db = tmp_path / "m.db"
        _sync(db, env, tmp_path / "out")
        assert _media(db, env, tmp_path / "out").code == 0
        root = tmp_path / "m.db.media"
        a, b, _c = sorted(_stored(root))
        (root / a).unlink()
        (root / b).write_bytes(b"not the file")
        check = run_cli(["verify", "--media", "--db", str(db)], env, tmp_path / "out")
        assert check.code == 1, check.stdout
        assert "1 missing, 1 corrupt" in check.stdout, check.stdout
        fixed = run_cli(["verify", "--media", "--repair", "--db", str(db)], env, tmp_path / "out")
        assert fixed.code == 0, fixed.stdout + fixed.stderr
        assert "2 repaired" in fixed.stdout, fixed.stdout
        again = run_cli(["verify", "--media", "--db", str(db)], env, tmp_path / "out")
        assert again.code == 0 and "0 missing, 0 corrupt" in again.stdout, again.stdout


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--max-bytes", "lots"], "is not a size"),
        (["--max-file-size", "-5"], "is not a size"),
        (["--media-host", "bad host!"], "is not a host name"),
        (["--file-deadline", "soon"], "--file-deadline"),
        (["--db", "postgresql+psycopg://u@127.0.0.1:9/x"], "--media-dir"),
    ],
)
def test_bad_media_flags_are_one_line_and_exit_2(tmp_path, args, needle):
    db = tmp_path / "m.db"
    db.write_bytes(b"")
    r = run_cli(["media", "--db", str(db), *args], {"PATH": os.environ["PATH"]}, tmp_path)
    assert r.code == 2, (r.code, r.stderr)
    line = assert_one_line(r.stderr, "usage")
    assert needle in line, line


@tinyproxy_missing
def test_downloads_go_through_the_proxy_the_environment_names(tmp_path):
    """A company network reaches the CDN only through its proxy: the downloads take the
    same HTTP_PROXY as the API's calls (the key still never reaches the CDN)."""
    with media_site() as site, forward_proxy(tmp_path / "proxy") as proxy:
        site.request({"images": [site.file("proxied/a.png", 3000)]})
        env = site.env(HTTP_PROXY=proxy.url)
        db = tmp_path / "m.db"
        _sync(db, env, tmp_path / "out")
        done = _media(db, env, tmp_path / "out")
        carried = proxy.requests()
        want = site.cdn.sha256("proxied/a.png")
        file_url = f"GET {site.cdn.url('proxied/a.png')}"
    assert done.code == 0, done.stderr
    assert "1 files archived" in done.stdout, done.stdout
    assert file_url in carried, f"the download did not go through the proxy: {carried}"
    assert set(_stored(tmp_path / "m.db.media").values()) == {want}


def test_a_postgresql_mirror_archives_into_its_media_dir(tmp_path, pg_url):
    """The same archive on PostgreSQL, its files in the folder --media-dir names: each file
    once, a tombstone, a second run that asks nothing, and the offline commands' answers."""
    with media_site() as site:
        a = site.file("pg/a.png", 5000)
        gone = site.file("pg/gone.png", expires_at=site.now - timedelta(hours=1))
        first_id = site.request({"images": [a, gone]})
        second_id = site.request({"image": a})
        env = site.env()
        store = tmp_path / "store"
        _sync(pg_url, env, tmp_path / "out")
        first = _media(pg_url, env, tmp_path / "out", "--media-dir", str(store))
        assert first.code == 0 and first.stderr == "", first.stderr
        assert "1 files archived" in first.stdout and "1 gone" in first.stdout, first.stdout
        hits = len(site.cdn.log)
        again = _media(pg_url, env, tmp_path / "out", "--media-dir", str(store))
        assert again.code == 0 and "0 files archived" in again.stdout, again.stdout
        assert len(site.cdn.log) == hits, "a second run asked the CDN again"
        want = site.cdn.sha256("pg/a.png")
    assert set(_stored(store).values()) == {want}
    assert db_query(pg_url, "SELECT request_id, path, state, sha256, gone_at IS NOT NULL "
                            "FROM media_refs ORDER BY 1, 2") == [
        (first_id, "$.images[0]", "archived", want, False),
        (first_id, "$.images[1]", "gone", None, True),
        (second_id, "$.image", "archived", want, False),
    ]  # fmt: skip
    assert db_query(pg_url, "SELECT sha256, size, content_type FROM media_files") == [
        (want, 5000, "image/png")
    ]
    file = str(store / want[:2] / want)
    listed = run_cli(["query", "--db", pg_url, "--media", "--media-dir", str(store),
                      "-c", "request_id", "-f", "json"], env, tmp_path / "out")  # fmt: skip
    assert {r["request_id"]: [f["file"] for f in r["media"]]
            for r in json.loads(listed.stdout)} == {first_id: [file], second_id: [file]}  # fmt: skip
    status = run_cli(["status", "--db", pg_url, "-f", "json"], env, tmp_path / "out")
    ((target, media),) = [(t["target"], t["media"]) for t in json.loads(status.stdout)]
    got = (target, media["files"], media["bytes"], media["archived"], media["gone"])
    assert got == (APP, 1, 5000, 2, 1), media
    check = run_cli(["verify", "--media", "--db", pg_url, "--media-dir", str(store)], env,
                    tmp_path / "out")  # fmt: skip
    assert check.code == 0 and "1 files checked" in check.stdout, check.stdout + check.stderr
