"""`mirror browse` over a mirror with a media archive: a real Datasette process, checked over
HTTP.

The archive is made for real (the simulated API and CDN, `mirror sync`, `mirror media`):
an image and a video archived, an image fal deleted before it was archived (gone), one
refused (a host not on the list), one archived and then lost from the store, and a file a
host labelled ``text/html``. Then the requests table, a request's page and the files they
link to are read as a browser would.
"""

from __future__ import annotations

import importlib.util
import io
import json
import re
import sys
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import httpcore
import httpx
import pytest
from support.cli import run_cli, serve_browse, terminate
from support.media import APP, media_site

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("datasette_media") is None,
    reason="datasette-media is not installed",
)

#: more than Datasette shows of a cell on a table page (truncate_cells_html)
LONG = "x" * 3000


@dataclass
class Archive:
    db: Path
    client: httpx.Client
    ids: dict[str, str]  # request ids by role
    sha: dict[str, str]  # file hashes by name
    content: dict[str, bytes]  # true bytes by name
    page: str  # the requests table's HTML


@pytest.fixture(scope="module")
def archive(tmp_path_factory: pytest.TempPathFactory):
    tmp = tmp_path_factory.mktemp("media-browse")
    db = tmp / "m.db"
    with media_site() as site:
        img = site.file("panda/a.png", 4000)
        video = site.file("panda/b.mp4", 9000, content_type="video/mp4")
        gone = site.file("panda/gone.png", expires_at=site.now - timedelta(hours=1))
        lost = site.file("panda/lost.png", 5000)
        page = site.file("panda/page.html", 300, content_type="text/html")
        refused = {"url": "https://v3.fal.media/files/elsewhere.png", "content_type": "image/png"}
        ids = {
            "archived": site.request({"images": [img, video], "note": LONG}),
            "gone": site.request({"images": [gone]}),
            "refused": site.request({"images": [refused]}),
            "lost": site.request({"images": [lost]}),
            "html": site.request({"file": page}),
            "none": site.request({"text": "no files here"}),
        }
        env = site.env()
        for args in (["sync", "--since", "1h", "-e", APP, "-q"], ["media", "-q"]):
            r = run_cli([*args, "--db", str(db)], env, tmp / "out", no_second_wait=True)
            assert r.code == 0, f"{args[0]} failed: {r.stderr}"
        names = ("panda/a.png", "panda/b.mp4", "panda/lost.png", "panda/page.html")
        sha = {n: site.cdn.sha256(n) for n in names}
        content = {n: site.cdn.content(n) for n in names}
    lost_file = tmp / "m.db.media" / sha["panda/lost.png"][:2] / sha["panda/lost.png"]
    lost_file.unlink()
    proc, base = serve_browse(db)
    client = httpx.Client(base_url=base, timeout=30)
    try:
        r = client.get("/m/requests", params={"_size": "max"})
        assert r.status_code == 200, r.text[:500]
        yield Archive(db, client, ids, sha, content, r.text)
    finally:
        client.close()
        terminate(proc)


def _row(html: str, request_id: str) -> str:
    """The <tr> of one request in a table page."""
    for row in re.findall(r"<tr>.*?</tr>", html, re.S):
        if f">{request_id}</a>" in row:
            return row
    raise AssertionError(f"request {request_id} is not on the page")


def _imgs(html: str) -> list[str]:
    return re.findall(r'<img src="([^"]+)"', html)


def _media_links(html: str) -> list[str]:
    return re.findall(r'<a href="(/-/media/[^"]+)"', html)


def test_an_archived_image_is_a_thumbnail_linked_to_the_file(archive):
    row = _row(archive.page, archive.ids["archived"])
    a, b = archive.sha["panda/a.png"], archive.sha["panda/b.mp4"]
    assert _imgs(row) == [f"/-/media/thumb/{a}"], row
    assert _media_links(row) == [f"/-/media/file/{a}", f"/-/media/file/{b}"], row
    thumb = archive.client.get(f"/-/media/thumb/{a}")
    assert (thumb.status_code, thumb.headers["content-type"]) == (200, "image/jpeg"), thumb.text
    from PIL import Image

    assert Image.open(io.BytesIO(thumb.content)).size[1] == 96, "not a thumbnail's height"
    for name, sha, ctype in (("panda/a.png", a, "image/png"), ("panda/b.mp4", b, "video/mp4")):
        f = archive.client.get(f"/-/media/file/{sha}")
        assert (f.status_code, f.headers["content-type"]) == (200, ctype), name
        assert f.content == archive.content[name], f"{name}: not the archived bytes"


def test_no_image_on_the_page_is_broken(archive):
    """Gone, refused and lost files get no <img>; every <img> the page has answers an image."""
    for role in ("gone", "refused", "lost", "none"):
        assert _imgs(_row(archive.page, archive.ids[role])) == [], role
    assert "1 file gone" in _row(archive.page, archive.ids["gone"])
    assert 'class="mirror-media"' not in _row(archive.page, archive.ids["none"])
    srcs = _imgs(archive.page)
    assert srcs == [f"/-/media/thumb/{archive.sha['panda/a.png']}"], srcs
    for src in srcs:
        r = archive.client.get(src)
        assert r.status_code == 200 and r.headers["content-type"].startswith("image/"), src


def test_the_table_cuts_the_payload_and_the_request_page_shows_it_whole(archive):
    row = _row(archive.page, archive.ids["archived"])
    assert LONG not in row and "x" * 1000 + "\u2026" in row.replace("&#34;", '"'), row[:300]
    r = archive.client.get(f"/m/requests/{archive.ids['archived']}")
    assert r.status_code == 200
    assert _imgs(r.text) == [f"/-/media/thumb/{archive.sha['panda/a.png']}"]
    assert LONG in r.text, "the request's page does not show its whole payload"


def test_a_file_labelled_html_is_served_as_bytes_not_as_a_page(archive):
    sha = archive.sha["panda/page.html"]
    assert _media_links(_row(archive.page, archive.ids["html"])) == [f"/-/media/file/{sha}"]
    r = archive.client.get(f"/-/media/file/{sha}")
    assert (r.status_code, r.headers["content-type"]) == (200, "application/octet-stream")
    assert r.content == archive.content["panda/page.html"]


def test_no_url_reaches_a_file_outside_the_archive(archive):
    """Keys that are not an archived file's hash, path tricks among them, are 404s; the
    database, a file beside it and a file in the store the database does not list are never
    served."""
    store = archive.db.parent / "m.db.media"
    stray = "ab" * 32
    (store / "ab").mkdir(mode=0o700, exist_ok=True)
    (store / "ab" / stray).write_bytes(b"not listed")
    (archive.db.parent / "secret.txt").write_bytes(b"secret")
    a = archive.sha["panda/a.png"]
    keys = [
        stray, a.upper(), a + "/../../m.db", "../m.db", "..%2F..%2Fm.db", "%2e%2e/secret.txt",
        f"{a[:2]}/{a}", "..", "/etc/passwd", "%00", a + "%00", "lost", archive.sha["panda/lost.png"],
    ]  # fmt: skip
    db_head = archive.db.read_bytes()[:100]
    for kind in ("file", "thumb"):
        for key in keys:
            status, body = _get_as_written(archive.client.base_url, f"/-/media/{kind}/{key}")
            assert status == 404, f"/-/media/{kind}/{key}: {status}"
            assert b"secret" not in body and b"not listed" not in body, key
            assert db_head not in body, f"/-/media/{kind}/{key} served the database"


def _get_as_written(base: httpx.URL, target: str) -> tuple[int, bytes]:
    """GET ``target`` exactly as written: httpx would resolve its dot segments first."""
    url = httpcore.URL(scheme=b"http", host=base.host.encode(), port=base.port,
                       target=target.encode())  # fmt: skip
    r = httpcore.request("GET", url, extensions={"timeout": {"read": 30}})
    return r.status, r.content


def test_print_metadata_carries_the_archive_when_there_is_one(run_cli, tmp_path):
    (tmp_path / "m.db").touch()
    bare = json.loads(
        run_cli(["browse", "--db", str(tmp_path / "m.db"), "--print-metadata"]).stdout
    )
    assert "datasette-media" not in bare.get("plugins", {}), "no archive, yet files are served"
    (tmp_path / "m.db.media").mkdir()
    r = run_cli(["browse", "--db", str(tmp_path / "m.db"), "--print-metadata"])
    assert r.exit_code == 0, r.output
    plugins = json.loads(r.stdout)["plugins"]
    assert plugins["mirror-media"] == {"media_dir": str((tmp_path / "m.db.media").resolve())}
    assert set(plugins["datasette-media"]) == {"file", "thumb"}


def test_browse_without_datasette_media_says_how_to_get_it(run_cli, tmp_path, monkeypatch):
    (tmp_path / "m.db").touch()
    (tmp_path / "m.db.media").mkdir()
    monkeypatch.setitem(sys.modules, "datasette_media", None)  # as if not installed
    r = run_cli(["browse", "--db", str(tmp_path / "m.db"), "--print-metadata"])
    assert r.exit_code == 0, r.output
    assert "plugins" not in json.loads(r.stdout)
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "pip install" in lines[0] and "datasette-media" in lines[0], lines


def test_a_media_dir_that_is_not_a_folder_is_one_line_and_exit_2(run_cli, tmp_path):
    (tmp_path / "m.db").touch()
    r = run_cli(["browse", "--db", str(tmp_path / "m.db"), "--media-dir", str(tmp_path / "no")])
    assert r.exit_code == 2, r.output
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "--media-dir" in lines[0] and "Traceback" not in r.output, lines
