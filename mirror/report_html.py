"""Drawing `mirror report`: the data of ``mirror.report`` as one self-contained HTML file.

The page is ``report_page.html`` (shipped with the package) with four things put in: the
tables, written here and escaped (every id, endpoint and error is the server's text), the
report's data as JSON in a ``<script type="application/json">`` block (with ``<``, ``>``
and ``&`` escaped, so no value can close the block), the charting library, and the page's
own few lines of script that draw the charts from the data.

The charts are plotly.js, inlined whole from the ``plotly`` package (the optional extra
``report``): the file opens from disk with no network, and the charts answer hover, zoom and
a click on a legend entry (a series on or off) with nothing else installed.
"""

from __future__ import annotations

import html
from collections.abc import Iterable, Sequence
from importlib import resources
from typing import Any

import orjson

from mirror.errors import ConfigError
from mirror.output import cell_text

MISSING = "mirror report draws its charts with plotly: pip install 'fal-mirror[report]' (or pip install plotly)"


def check_available() -> None:
    """ConfigError with the install line when the charting library is missing."""
    try:
        import plotly.offline  # noqa: F401
    except ImportError:
        raise ConfigError(MISSING) from None


def plotly_js() -> str:
    """plotly.js, minified, as the ``plotly`` package ships it."""
    check_available()
    from plotly.offline import get_plotlyjs

    return str(get_plotlyjs())


def json_for_script(data: Any) -> str:
    """JSON that is safe inside a ``<script>`` element, whatever the strings hold."""
    text = orjson.dumps(data).decode()
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def _e(value: Any) -> str:
    return html.escape(cell_text(value), quote=True)


def table(
    columns: Sequence[str],
    rows: Iterable[dict[str, Any]],
    *,
    numeric: Iterable[str] = (),
    links: str | None = None,
    css: str = "",
) -> str:
    """An HTML table; the column named ``links`` shows its value as a link to ``row["link"]``."""
    right = set(numeric)
    head = "".join(
        f"<th{' class=num' if c in right else ''}>{html.escape(c)}</th>" for c in columns
    )
    body = []
    for r in rows:
        cells = []
        for c in columns:
            text = _e(r.get(c))
            if c == links and r.get("link"):
                text = f'<a href="{html.escape(r["link"], quote=True)}">{text}</a>'
            cells.append(f"<td{' class=num' if c in right else ''}>{text}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    cls = f' class="{css}"' if css else ""
    return f"<table{cls}><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def _gaps(gaps: list[list[str]]) -> str:
    if not gaps:
        return "none"
    first = f"{gaps[0][0][:16]}Z … {gaps[0][1][:16]}Z"
    return first if len(gaps) == 1 else f"{first} (and {len(gaps) - 1} more)"


def _summary(data: dict[str, Any]) -> str:
    t = data["totals"]
    figures = [
        ("requests", t["requests"]), ("success", t["success"]), ("user errors", t["user_error"]),
        ("errors", t["error"]), ("error rate", t["error_rate"]), ("longest s", t["max"]),
        ("billable units", t["billable_units"]),
    ]  # fmt: skip
    return "".join(
        f'<div class="figure"><div class="value">{_e(v)}</div><div class="label">{html.escape(k)}</div></div>'
        for k, v in figures
    )


def _nothing(data: dict[str, Any]) -> str:
    what = f" of {', '.join(data['endpoints'])}" if data["endpoints"] else ""
    return (
        f'<p class="empty" id="nothing">Nothing to show: no request{html.escape(what)} ended '
        f"between {_e(data['since'])} and {_e(data['until'])}.</p>"
    )


def _timelines(data: dict[str, Any]) -> str:
    if not data["views"]:
        return _nothing(data)
    options = "".join(
        f'<option value="{i}">{html.escape(v["name"])}</option>'
        for i, v in enumerate(data["views"])
    )
    left = data["views_left_out"]
    more = (
        f'<p class="note">{left} more endpoints are in the total but not drawn one by one; '
        "narrow the report with --endpoint to see them.</p>"
        if left
        else ""
    )
    return (
        f'<label class="view">Show <select id="view">{options}</select></label>{more}'
        '<div class="chart" id="chart-requests"></div>'
        '<div class="chart" id="chart-durations"></div>'
    )


def _spend(data: dict[str, Any]) -> str:
    note = (
        '<p class="note" id="spend-note">Spend per day: cost is not mirrored yet, so this shows '
        "fal's billable units; multiply by your price per unit for spend.</p>"
    )
    if not data["units"]:
        return note + '<p class="empty">No billable units in this range.</p>'
    return note + '<div class="chart" id="chart-units"></div>'


def _requests_table(columns: Sequence[str], rows: list[dict[str, Any]], empty: str) -> str:
    if not rows:
        return f'<p class="empty">{html.escape(empty)}</p>'
    return table(
        columns, rows, numeric=("status_code", "duration"), links="request_id", css="requests"
    )


def _health(data: dict[str, Any]) -> str:
    h = data["health"]
    if h["problems"]:
        items = "".join(f"<li>{html.escape(p)}</li>" for p in h["problems"])
        verdict = f'<ul class="problems" id="problems">{items}</ul>'
    else:
        verdict = (
            '<p class="healthy" id="problems">Healthy: mirror status --check finds no problem.</p>'
        )
    targets = [{**t, "gaps": _gaps(t["gaps"])} for t in h["targets"]]
    cov = table(
        ["target", "rows", "unfinished", "stuck", "requested_from", "covered_from", "covered_to",
         "lag", "gaps", "last_run", "last_run_ended_at", "last_run_error"],
        targets, numeric=("rows", "unfinished", "stuck"),
    )  # fmt: skip
    runs = table(
        ["id", "started_at", "seconds", "outcome", "targets", "rows_inserted", "rows_updated",
         "api_calls", "error"],
        h["runs"], numeric=("id", "seconds", "rows_inserted", "rows_updated", "api_calls"),
    )  # fmt: skip
    return (
        f"{verdict}<h3>Coverage</h3>{cov if h['targets'] else '<p class=empty>No sync targets.</p>'}"
        f"<h3>Last runs</h3>{runs if h['runs'] else '<p class=empty>No run logged.</p>'}"
    )


def render(data: dict[str, Any]) -> str:
    """The whole page, ready to write."""
    page = resources.files("mirror").joinpath("report_page.html").read_text(encoding="utf-8")
    scope = f" · {', '.join(data['endpoints'])}" if data["endpoints"] else ""
    per_endpoint = table(
        ["endpoint", "requests", "success", "user_error", "error", "error_rate", "max",
         "billable_units"],
        data["per_endpoint"],
        numeric=("requests", "success", "user_error", "error", "error_rate", "max",
                 "billable_units"),
    ) if data["per_endpoint"] else ""  # fmt: skip
    browse = (
        f"Request ids link to <code>mirror browse</code> at {html.escape(data['browse_url'])} "
        "(start it to follow them)."
        if data["browse_url"]
        else "Run <code>mirror browse</code> on a SQLite mirror to see each request."
    )
    parts = {
        "TITLE": html.escape(f"mirror report: {data['database']}{scope}"),
        "SUBTITLE": html.escape(
            f"{data['since']} – {data['until']} (UTC, ended_at) · per {data['by']} · "
            f"written {data['generated_at']}"
        ),
        "SUMMARY": _summary(data),
        "PER_ENDPOINT": per_endpoint,
        "TIMELINES": _timelines(data),
        "SPEND": _spend(data),
        "SLOWEST": _requests_table(
            data["request_columns"], data["slowest"], "No finished request in this range."
        ),
        "FAILING": _requests_table(
            data["request_columns"], data["failing"], "No failed request in this range."
        ),
        "BROWSE": browse,
        "HEALTH": _health(data),
        "DATA": json_for_script(data),
        "PLOTLY": plotly_js(),
    }
    for key, value in parts.items():
        page = page.replace(f"<!--{key}-->", value)
    return page
