"""`mirror report` without a browser: bad input, an empty mirror, links into `mirror browse`.

What a person sees in the page (charts drawn, offline, equal to `mirror stats`) is checked
in a real browser by test_report_browser.py.
"""

from __future__ import annotations

import importlib.util
import json
import re
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest
from support.cli import serve_browse, terminate
from support.rows import fill, make_rows

from mirror.report import tilde_encode
from mirror.store import Store


@pytest.fixture(scope="module")
def small_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """300 made-up requests over 2026-11-25..28; tests must not change it."""
    path = tmp_path_factory.mktemp("report") / "small.db"
    fill(path, make_rows(300, seed=9))
    return path


RANGE = ["--since", "2026-11-25", "--until", "2026-11-29"]


def one_line(stderr: str) -> str:
    lines = [ln for ln in stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, f"expected one line on stderr, got:\n{stderr}"
    assert "Traceback" not in stderr
    return lines[0]


@pytest.mark.parametrize(
    ("args", "code", "line"),
    [
        (["-e", "acme/nope"], 2,
         "mirror: usage: the mirror holds no request of endpoint 'acme/nope' "
         "(mirror stats --by endpoint lists the ones it holds)"),
        (["-o", "missing/r.html"], 2,
         "mirror: usage: --output missing/r.html: the directory missing does not exist"),
        (["-o", "."], 2,
         "mirror: usage: --output . is a directory; name a file such as report.html"),
        (["--since", "2026-01-01", "--until", "2026-03-31", "--by", "hour"], 2,
         "mirror: usage: --by hour over 89 days would draw 2,136 points per series "
         "(at most 2,000): use --by day or a shorter range"),
        (["--since", "2026-11-28", "--until", "2026-11-27"], 2,
         "mirror: usage: --until (2026-11-27T00:00:00Z) must be after --since "
         "(2026-11-28T00:00:00Z)"),
        (["--browse-url", "ftp://host"], 2,
         "mirror: usage: --browse-url 'ftp://host' is not an http(s) URL"),
    ],
    ids=["unknown-endpoint", "no-such-folder", "a-folder", "too-many-points", "until-first",
         "browse-url"],
)  # fmt: skip
def test_bad_input_is_one_line_and_leaves_the_old_report(
    run_cli, small_db: Path, tmp_path: Path, args: list[str], code: int, line: str
) -> None:
    (tmp_path / "mirror-report.html").write_text("yesterday's report")
    argv = ["report", "--db", str(small_db), *RANGE, *args]
    if "--since" in args:
        argv = ["report", "--db", str(small_db), *args]
    r = run_cli(argv)
    assert r.exit_code == code, f"exit {r.exit_code}: {r.stderr}"
    assert one_line(r.stderr).split(" (see: ")[0] == line  # click points to --help
    assert (tmp_path / "mirror-report.html").read_text() == "yesterday's report"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mirror-report.html"], "a stray file"


def test_a_file_that_cannot_be_written_is_one_line_exit_1(run_cli, small_db: Path) -> None:
    r = run_cli(["report", "--db", str(small_db), *RANGE, "-o", "/proc/mirror-report.html"])
    assert r.exit_code == 1, r.stderr
    assert one_line(r.stderr).startswith("mirror: cannot write: --output /proc/mirror-report.html:")


def test_no_database_is_one_line(run_cli, tmp_path: Path) -> None:
    r = run_cli(["report", "--db", "nothing.db"])
    assert r.exit_code == 2
    assert one_line(r.stderr) == (
        "mirror: usage: nothing.db does not exist; run mirror sync --db nothing.db first"
    )
    assert not (tmp_path / "mirror-report.html").exists()


def test_without_plotly_it_says_how_to_install_it(
    run_cli, small_db: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "plotly", None)  # `import plotly` now fails
    monkeypatch.setitem(sys.modules, "plotly.offline", None)
    r = run_cli(["report", "--db", str(small_db), *RANGE])
    assert r.exit_code == 2
    assert one_line(r.stderr) == (
        "mirror: usage: mirror report draws its charts with plotly: "
        "pip install 'fal-mirror[report]' (or pip install plotly)"
    )
    assert not (tmp_path / "mirror-report.html").exists()


def test_an_empty_mirror_gets_a_report_that_says_so(run_cli, tmp_path: Path) -> None:
    Store.open(str(tmp_path / "new.db")).close()
    r = run_cli(["report", "--db", "new.db", *RANGE])
    assert r.exit_code == 0, r.stderr
    assert one_line(r.stderr) == (
        "mirror: note: no request ended between 2026-11-25T00:00Z and 2026-11-29T00:00Z: "
        "the report says there is nothing to show"
    )
    assert r.stdout.startswith("wrote mirror-report.html: 0 requests, 0 endpoints, ")
    page = (tmp_path / "mirror-report.html").read_text(encoding="utf-8")
    assert "Nothing to show: no request ended between 2026-11-25T00:00Z and " in page
    assert "no sync targets: nothing is mirrored yet" in page
    assert 'class="chart"' not in page


def test_the_page_is_written_once_whole(run_cli, small_db: Path, tmp_path: Path) -> None:
    r = run_cli(["report", "--db", str(small_db), *RANGE, "-o", "week.html"])
    assert r.exit_code == 0, r.stderr
    assert r.stdout == (
        "wrote week.html: 276 requests, 6 endpoints, 2026-11-25T00:00Z – 2026-11-29T00:00Z "
        f"per hour, {(tmp_path / 'week.html').stat().st_size / 2**20:.1f} MiB\n"
    )
    page = (tmp_path / "week.html").read_text(encoding="utf-8")
    assert page.endswith("</html>\n") and page.count("plotly.js v") >= 1
    assert (tmp_path / "week.html").stat().st_size < 6_000_000
    assert sorted(p.name for p in tmp_path.iterdir()) == ["week.html"]


@pytest.mark.parametrize("text", ["fal history", "a/b.c~d", "Zürich", "req_1-2", "x+y%z"])
def test_links_are_encoded_as_datasette_encodes(text: str) -> None:
    datasette = pytest.importorskip("datasette.utils")
    assert tilde_encode(text) == datasette.tilde_encode(text)


@pytest.mark.skipif(importlib.util.find_spec("datasette") is None, reason="needs datasette")
def test_the_links_open_the_request_in_mirror_browse(
    run_cli, synced_db: Path, tmp_path: Path
) -> None:
    proc, base = serve_browse(synced_db)
    try:
        r = run_cli(["report", "--db", str(synced_db), "--since", "3d", "--browse-url", base])
        assert r.exit_code == 0, r.stderr
        page = (tmp_path / "mirror-report.html").read_text(encoding="utf-8")
        links = re.findall(r'<a href="([^"]+)">([^<]+)</a>', page)
        assert len(links) >= 20, "too few links to requests in the report"
        for url, request_id in links[:3] + links[-3:]:
            assert url.startswith(f"{base}/fal+history/requests/"), url
            got = httpx.get(url + ".json", params={"_shape": "array"}, timeout=30)
            assert got.status_code == 200, f"{url}: {got.status_code}"
            assert [row["request_id"] for row in got.json()] == [request_id], url
    finally:
        terminate(proc)


def embedded(page: Path) -> dict[str, Any]:
    text = page.read_text(encoding="utf-8")
    marker = '<script type="application/json" id="report-data">'
    start = text.index(marker) + len(marker)
    return dict(json.loads(text[start : text.index("</script>", start)]))


def test_a_postgresql_mirror_gives_the_same_report(
    run_cli, small_db: Path, pg_url: str, tmp_path: Path
) -> None:
    fill(pg_url, make_rows(300, seed=9))  # type: ignore[arg-type]  # small_db's rows
    for db, out in ((str(small_db), "sqlite.html"), (pg_url, "pg.html")):
        r = run_cli(["report", "--db", db, *RANGE, "-o", out])
        assert r.exit_code == 0, r.stderr
    lite, pg = embedded(tmp_path / "sqlite.html"), embedded(tmp_path / "pg.html")
    figures = ("totals", "per_endpoint", "views", "units", "slowest", "failing")
    assert {k: pg[k] for k in figures} == {
        k: lite[k] if k not in ("slowest", "failing") else
        [{c: v for c, v in row.items() if c != "link"} for row in lite[k]]
        for k in figures
    }, "the PostgreSQL mirror's report differs from the SQLite one's"  # fmt: skip
    assert pg["browse_url"] is None and "link" not in pg["slowest"][0]


@pytest.mark.parametrize(
    "narrow",
    [[], ["-e", "acme/upscaler", "--by", "day"]],
    ids=["groups-by-their-longest", "fewer-groups-than-rows-shown"],
)
def test_the_request_tables_are_what_mirror_query_lists(
    run_cli, small_db: Path, narrow: list[str]
) -> None:
    assert run_cli(["report", "--db", str(small_db), *RANGE, *narrow]).exit_code == 0
    data = embedded(Path("mirror-report.html"))
    endpoint = narrow[:2]
    cols = ["-c", "request_id,endpoint_id,status,status_code,duration,ended_at", "-f", "json"]
    for table, args in (
        ("slowest", ["--sort", "duration"]),
        ("failing", ["-s", "error", "-s", "user_error"]),
    ):
        listed = run_cli(
            ["query", "--db", str(small_db), *RANGE, *endpoint, *args, "-n", "20", *cols]
        )
        want = json.loads(listed.stdout)
        got = [{c: v for c, v in row.items() if c != "link"} for row in data[table]]
        assert len(want) == 20 and got == want, f"the {table} table differs from mirror query"


def test_the_summary_is_what_mirror_stats_says(run_cli, small_db: Path) -> None:
    """Counts, rates, the longest duration and units, in total and per endpoint (the
    percentiles over the whole range are on the charts, per hour, not in the summary)."""
    assert run_cli(["report", "--db", str(small_db), *RANGE]).exit_code == 0
    data = embedded(Path("mirror-report.html"))
    fields = ["requests", "success", "user_error", "error", "unfinished", "error_rate",
              "user_error_rate", "max", "billable_units"]  # fmt: skip
    for by, got in (([], [data["totals"]]), (["--by", "endpoint"], data["per_endpoint"])):
        r = run_cli(["stats", "--db", str(small_db), *RANGE, *by, "-f", "json"])
        keys = ["endpoint", *fields] if by else fields
        want = [{k: row[k] for k in keys} for row in json.loads(r.stdout)]
        assert [{k: row[k] for k in keys} for row in got] == want, f"stats {by} differ"
