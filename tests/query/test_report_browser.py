"""`mirror report` as a person sees it: the file opened from disk in a real headless Chromium
(Debian's, driven by Playwright) with the network off.

Every report must load with no console error and no request leaving the file, draw every
chart (an SVG with the expected series, and a bar or a marker per point), and its charts
must hold exactly what `mirror stats` answers for the same range, in total and per
endpoint. A screenshot of each is kept in the test's folder (pytest's ``tmp_path``; the
path is printed). One browser serves every test of this module.

Chromium is /usr/bin/chromium (`apt-get install chromium`; `.ci/run` installs it). Without
it these tests are skipped, or fail when ``MIRROR_REQUIRE_BROWSER=1`` (as in CI).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from support.cli import mirror
from support.rows import fill, make_rows

from mirror.records import Row
from mirror.report import plot_x

CHROMIUM = Path("/usr/bin/chromium")
#: the flags of a quiet headless Chromium on a machine with no network
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--no-first-run",
]  # fmt: skip

#: what the page reports of each chart: its data, and what was drawn of it in the SVG
CHARTS_JS = """() => Array.from(document.querySelectorAll('.chart')).map(div => ({
  id: div.id,
  svg: div.querySelectorAll('svg.main-svg').length,
  width: Math.round(div.getBoundingClientRect().width),
  data: (div.data || []).map(t => ({name: t.name, type: t.type, x: t.x, y: t.y})),
  drawn: Array.from(div.querySelectorAll('g.trace')).map(g => g.classList.contains('bars')
      ? g.querySelectorAll('g.point').length : g.querySelectorAll('.points path').length),
}))"""


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    if not CHROMIUM.exists():
        if os.environ.get("MIRROR_REQUIRE_BROWSER"):
            pytest.fail(f"{CHROMIUM} is missing (apt-get install chromium)")
        pytest.skip(f"{CHROMIUM} is missing (apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield b
        b.close()


class Page:
    """A report opened offline, with what went wrong while it loaded."""

    def __init__(self, browser: Any, path: Path) -> None:
        self.context = browser.new_context(offline=True, viewport={"width": 1280, "height": 900})
        self.page = self.context.new_page()
        self.errors: list[str] = []
        self.requests: list[str] = []
        self.dialogs: list[str] = []
        self.page.on("console", lambda m: m.type == "error" and self.errors.append(m.text))
        self.page.on("pageerror", lambda e: self.errors.append(str(e)))
        self.page.on("dialog", lambda d: (self.dialogs.append(d.message), d.dismiss()))
        url = path.resolve().as_uri()

        def route(r: Any) -> None:
            if r.request.url != url:
                self.requests.append(r.request.url)
                r.abort()
            else:
                r.continue_()

        self.page.route("**/*", route)
        self.page.goto(url)
        self.wait_drawn()

    def wait_drawn(self) -> None:
        self.page.wait_for_selector("body[data-drawn=yes]", timeout=30_000)

    def charts(self) -> dict[str, dict[str, Any]]:
        return {c["id"]: c for c in self.page.evaluate(CHARTS_JS)}

    def show(self, view: str) -> None:
        self.page.select_option("#view", label=view)
        self.wait_drawn()

    def screenshot(self, path: Path) -> None:
        self.page.screenshot(path=str(path), full_page=True)
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", f"no PNG screenshot at {path}"
        print(f"screenshot: {path}")

    def assert_clean(self) -> None:
        assert not self.errors, f"console errors: {self.errors}"
        assert not self.requests, f"the report asked the network for: {self.requests}"
        assert not self.dialogs, f"the page ran a script from the data: {self.dialogs}"

    def close(self) -> None:
        self.context.close()


def report(db: Path, out: Path, *args: str) -> dict[str, Any]:
    """`mirror report` for real; returns the data the file carries."""
    r = mirror(["report", "--db", str(db), "-o", str(out), *args], dict(os.environ))
    assert r.code == 0, f"mirror report failed: {r.stderr}"
    text = out.read_text(encoding="utf-8")
    marker = '<script type="application/json" id="report-data">'
    start = text.index(marker) + len(marker)
    return dict(json.loads(text[start : text.index("</script>", start)]))


def stats(db: Path, data: dict[str, Any], *by: str) -> list[dict[str, Any]]:
    """`mirror stats` for the report's own range, as JSON."""
    args = ["stats", "--db", str(db), "--since", data["since"], "--until", data["until"]]
    r = mirror([*args, "--by", ",".join(by), "-f", "json"], dict(os.environ))
    assert r.code == 0, f"mirror stats failed: {r.stderr}"
    return list(json.loads(r.stdout))


def assert_drawn(chart: dict[str, Any], names: list[str]) -> None:
    """The chart is an SVG holding these series, each with a mark per point that has a value."""
    cid = chart["id"]
    assert chart["svg"] > 0 and chart["width"] > 0, f"{cid}: no SVG drawn"
    assert [t["name"] for t in chart["data"]] == names, f"{cid}: series"
    want = [sum(v is not None for v in t["y"]) for t in chart["data"]]
    assert chart["drawn"] == want, f"{cid}: marks drawn per series {chart['drawn']}, want {want}"


def timeline(rows: list[dict[str, Any]], by: str, fields: list[str]) -> list[tuple[Any, ...]]:
    """Per field, the (x, y) pairs `mirror stats` rows make: what a chart must hold."""
    return [([plot_x(r[by], by) for r in rows], [r[f] for r in rows]) for f in fields]


def held(chart: dict[str, Any]) -> list[tuple[Any, ...]]:
    return [(t["x"], t["y"]) for t in chart["data"]]


STATUS = ["success", "user_error", "error"]
PERCENTILES = ["p50", "p95", "p99"]


def test_the_report_draws_what_mirror_stats_says_offline(
    browser: Any, synced_db: Path, tmp_path: Path
) -> None:
    data = report(synced_db, tmp_path / "report.html", "--since", "3d", "--by", "hour")
    page = Page(browser, tmp_path / "report.html")
    try:
        page.assert_clean()
        charts = page.charts()
        assert sorted(charts) == ["chart-durations", "chart-requests", "chart-units"]
        total = stats(synced_db, data, "hour")
        assert total, "the simulated mirror has no request in the report's range"
        assert_drawn(charts["chart-requests"], STATUS)
        assert_drawn(charts["chart-durations"], PERCENTILES)
        assert held(charts["chart-requests"]) == timeline(total, "hour", STATUS), (
            "the requests chart differs from mirror stats --by hour"
        )
        assert held(charts["chart-durations"]) == timeline(total, "hour", PERCENTILES), (
            "the durations chart differs from mirror stats --by hour"
        )

        per_day = stats(synced_db, data, "endpoint", "day")
        endpoints = sorted({r["endpoint"] for r in per_day})
        assert_drawn(charts["chart-units"], endpoints)
        assert held(charts["chart-units"]) == [
            ([r["day"] for r in per_day if r["endpoint"] == e],
             [r["billable_units"] for r in per_day if r["endpoint"] == e])
            for e in endpoints
        ], "the units chart differs from mirror stats --by endpoint,day"  # fmt: skip
        page.screenshot(tmp_path / "report.png")

        # every endpoint on its own, as the selector shows it
        per_hour = stats(synced_db, data, "endpoint", "hour")
        for e in endpoints:
            page.show(e)
            charts = page.charts()
            mine = [r for r in per_hour if r["endpoint"] == e]
            assert_drawn(charts["chart-requests"], STATUS)
            assert held(charts["chart-requests"]) == timeline(mine, "hour", STATUS), (
                f"{e}: the requests chart differs from mirror stats --by endpoint,hour"
            )
            assert held(charts["chart-durations"]) == timeline(mine, "hour", PERCENTILES), (
                f"{e}: the durations chart differs from mirror stats --by endpoint,hour"
            )
        page.assert_clean()
    finally:
        page.close()


def test_a_range_with_no_request_is_a_report_that_says_so(
    browser: Any, synced_db: Path, tmp_path: Path
) -> None:
    out = tmp_path / "empty.html"
    data = report(synced_db, out, "--since", "2020-01-01", "--until", "2020-01-02")
    page = Page(browser, out)
    try:
        page.assert_clean()
        assert data["totals"]["requests"] == 0
        assert page.charts() == {}, "charts drawn for a range with no request"
        assert page.page.inner_text("#nothing") == (
            "Nothing to show: no request ended between 2020-01-01T00:00Z and 2020-01-02T00:00Z."
        )
        # the mirror's own health is shown all the same
        assert "acme/flux-lora" in page.page.inner_text("#health")
        page.screenshot(tmp_path / "empty.png")
    finally:
        page.close()


HOSTILE_ID = '</script><script>alert("id")</script>'
HOSTILE_ENDPOINT = "acme/<img src=x onerror=alert(1)>"


def test_text_from_the_server_is_shown_never_run(browser: Any, tmp_path: Path) -> None:
    hostile = Row(HOSTILE_ID, HOSTILE_ENDPOINT, "runner-0", "2026-11-27T10:00:00.000000Z",
               "2026-11-27T10:00:01.000000Z", "2026-11-27T10:00:31.000000Z", 500, 30.0, 1.0,
               None, None, "error")  # fmt: skip
    db = tmp_path / "hostile.db"
    fill(db, [hostile, *make_rows(60, seed=3)])
    out = tmp_path / "hostile.html"
    report(db, out, "--since", "2026-11-25", "--until", "2026-11-29")
    page = Page(browser, out)
    try:
        page.assert_clean()
        assert HOSTILE_ID in page.page.inner_text("#failing"), "the hostile id is not shown"
        assert HOSTILE_ENDPOINT in page.page.inner_text("#summary")
        page.show(HOSTILE_ENDPOINT)
        assert page.charts()["chart-requests"]["data"][2]["y"] == [1]
        page.assert_clean()
    finally:
        page.close()
