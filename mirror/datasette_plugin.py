"""What `mirror browse` adds to Datasette so that every page it offers stays fast on millions
of requests (registered by ``mirror.commands_query`` in its own process only).

Datasette answers a table page with its rows, a ``count(*)`` of every matching row, and
facets and facet suggestions that each group every matching row: on ``requests`` that is a
scan of the whole table, several times per page. The rollups (``mirror.rollups``) hold the
same counts per hour, endpoint and status, so:

- **Facets from the rollups.** On ``requests`` and ``request_log``, the facets on
  ``endpoint_id`` and ``status`` and the date facet on ``ended_at`` are summed from
  ``summary_hourly`` (plus the few unfinished rows, through their partial index) whenever
  the page's filters are ones the rollup has: none, an endpoint, a status, a day of
  ``ended_at``; on a later page too, where they count the whole table as on the first
  (Datasette alone counts the rows after the page). Otherwise (a search, any other filter)
  Datasette's own SQL runs; the answers are the same either way.
- **Suggestions without queries.** Datasette tries every column of a table as a facet
  (a grouping query each) to suggest some: on the big tables and views, only the facets the
  rollups answer are suggested, and nothing is run to find them.
- **Searches that match everything.** A search for a common word matches most requests:
  Datasette would look every one of them up to count them and to find the newest, and
  facet them all. When the full-text index holds more than `BIG_SEARCH` matches, the page
  reads the time index newest first and keeps the matching rows until it has a page (the
  planner is steered off looking each match up), and it neither counts nor facets them:
  its title says there are more than `BIG_SEARCH`. Fewer matches: Datasette's own way.
"""

from __future__ import annotations

import sqlite3
import urllib.parse
from collections.abc import Awaitable, Callable, Generator
from typing import Any

from datasette import hookimpl
from datasette.database import QueryInterrupted
from datasette.facets import ArrayFacet, ColumnFacet, DateFacet
from datasette.utils import (
    await_me_maybe,
    escape_fts,
    path_with_added_args,
    path_with_removed_args,
    tilde_decode,
)

#: the tables of requests, searched through ``requests_fts`` and summed in the rollups
REQUEST_TABLES = ("requests", "request_log")
#: tables and views whose every row Datasette would group to suggest facets (a row per
#: request, or per hour, endpoint and status)
BIG_TABLES = (*REQUEST_TABLES, "request_costs", "billing_events", "media_refs",
              "summary_hourly", "hourly_summary", "daily_summary", "daily_usage",
              "duration_histogram")  # fmt: skip
#: more full-text matches than this: the page is neither counted nor faceted
BIG_SEARCH = 10_000
#: request arguments that do not change which rows a page's facets are about; ``_next``
#: included: a later page is faceted like the first, the whole table (Datasette alone would
#: count only the rows after the page, reading them all)
_NEUTRAL = {"_size", "_sort", "_sort_desc", "_next", "_nocount", "_nosuggest", "_nofacet",
            "_labels", "_label", "_col", "_nocol", "_shape", "_json", "_trace", "_timelimit",
            "_hash", "_context", "_dl", "_stream", "_nl", "_extra"}  # fmt: skip
#: filters the rollups can answer, and the rollup column each one narrows
_ROLLUP_FILTERS = {
    "endpoint_id": "endpoint_id",
    "endpoint_id__exact": "endpoint_id",
    "status": "status",
    "status__exact": "status",
    "ended_at__date": "day",
}
_MATCHES = (
    "SELECT count(*) FROM (SELECT rowid FROM requests_fts "
    "WHERE requests_fts MATCH escape_fts(:search) LIMIT :most)"
)


def rollup_filters(args: Any) -> dict[str, str] | None:
    """The page's filters as rollup columns (``endpoint_id``, ``status``, ``day``), or None
    when the page asks for anything the rollups cannot answer."""
    out: dict[str, str] = {}
    for key in args:
        if key in _NEUTRAL or key.startswith("_facet"):
            continue
        column = _ROLLUP_FILTERS.get(key)
        values = args.getlist(key)
        if column is None or len(values) != 1 or column in out:
            return None
        out[column] = values[0]
    return out


def _conditions(filters: dict[str, str], *, unfinished: bool) -> tuple[list[str], dict[str, str]]:
    where: list[str] = []
    params: dict[str, str] = {}
    for column in ("endpoint_id", "status"):
        if column in filters:
            where.append(f"{column} = :{column}")
            params[column] = filters[column]
    if "day" in filters:
        if unfinished:
            where.append("0")  # an unfinished request has no ended_at, so no day
        else:
            # the hours of that day: text that starts with the day and "T"
            where.append("hour >= :day || 'T' AND hour < :day || 'U'")
        params["day"] = filters["day"]
    return where, params


def column_facet_sql(
    column: str, filters: dict[str, str], limit: int
) -> tuple[str, dict[str, str]]:
    """Each value of ``endpoint_id`` or ``status`` with its number of requests, as
    Datasette's column facet orders them: finished ones from ``summary_hourly``; unfinished
    ones (no ``ended_at``, so not in it) counted value by value (an index seek for each of
    the column's few distinct values, found by skipping through its index), each count a
    range of the index ``(endpoint_id, ended_at, …, status, …)`` or ``(status, ended_at)``."""
    done, params = _conditions(filters, unfinished=False)
    running, _ = _conditions(filters, unfinished=True)
    sql = f"""
        WITH RECURSIVE present(v) AS (
            SELECT (SELECT min({column}) FROM requests)
            UNION ALL
            SELECT (SELECT min({column}) FROM requests WHERE {column} > p.v)
            FROM present p WHERE p.v IS NOT NULL
        )
        SELECT value, sum(n) AS count FROM (
            SELECT {column} AS value, sum(requests) AS n FROM summary_hourly
            {"WHERE " + " AND ".join(done) if done else ""} GROUP BY {column}
            UNION ALL
            SELECT v, (SELECT count(*) FROM requests WHERE {
        " AND ".join([f"{column} = p.v", "ended_at IS NULL", *running])
    })
            FROM present p WHERE v IS NOT NULL
        ) GROUP BY value HAVING count > 0 ORDER BY count DESC, value LIMIT {int(limit)}
    """
    return sql, params


def date_facet_sql(filters: dict[str, str], limit: int) -> tuple[str, dict[str, str]]:
    """Each day of ``ended_at`` with its number of requests, from ``summary_hourly``."""
    where, params = _conditions(filters, unfinished=False)
    sql = f"""
        SELECT substr(hour, 1, 10) AS value, sum(requests) AS count FROM summary_hourly
        {"WHERE " + " AND ".join(where) if where else ""}
        GROUP BY value ORDER BY count DESC, value LIMIT {int(limit)}
    """
    return sql, params


class _RollupFacet:
    """What the column and date facets share: which of a page's facets the rollups answer,
    running those, and leaving the others to Datasette's own SQL."""

    ds: Any
    request: Any
    database: str
    table: str | None
    #: the columns this facet type can sum from the rollups
    columns: tuple[str, ...] = ()
    #: while Datasette's own facet runs: the columns it is to do (None: all of them)
    only: tuple[str, ...] | None = None

    def get_configs(self) -> list[dict[str, Any]]:
        configs: list[dict[str, Any]] = super().get_configs()  # type: ignore[misc]
        if self.only is None:
            return configs
        return [c for c in configs if _column(c) in self.only]

    async def results(
        self,
        rollup: Callable[[str, dict[str, str], int], tuple[str, dict[str, str]]],
        shape: Callable[[str, str, list[Any], int], dict[str, Any]],
    ) -> tuple[list[dict[str, Any]], list[str]]:
        """Every facet of the page, each from the rollups when they answer it."""
        filters = rollup_filters(self.request.args)
        configs = self.get_configs()
        applies = self.table in REQUEST_TABLES and filters is not None
        # a facet asked for twice (in the metadata and in the URL) is summed once
        first = {_column(c): c for c in reversed(configs)}
        mine = [
            c for c in configs if applies and _column(c) in self.columns and first[_column(c)] is c
        ]
        theirs = tuple(_column(c) for c in configs if not (applies and _column(c) in self.columns))
        by_name: dict[str, dict[str, Any]] = {}
        timed_out: list[str] = []
        if theirs:
            self.only = theirs
            try:
                found, late = await super().facet_results()  # type: ignore[misc]
            finally:
                self.only = None
            by_name.update((r["name"], r) for r in found)
            timed_out += late
        size = self.get_facet_size()  # type: ignore[attr-defined]
        for config in mine:
            column = _column(config)
            sql, params = rollup(column, filters or {}, size + 1)
            try:
                result = await self.ds.execute(
                    self.database, sql, params, truncate=False,
                    custom_time_limit=self.ds.setting("facet_time_limit_ms"),
                )  # fmt: skip
            except QueryInterrupted:
                timed_out.append(column)
                continue
            by_name[column] = shape(column, config["source"], list(result.rows), size)
        ordered = [by_name[n] for n in dict.fromkeys(_column(c) for c in configs) if n in by_name]
        return ordered, timed_out


def _column(config: dict[str, Any]) -> str:
    inner = config["config"]
    return str(inner.get("column") or inner["simple"])


class MirrorColumnFacet(_RollupFacet, ColumnFacet):
    """Datasette's column facet, summed from the rollups where they have the answer."""

    columns = ("endpoint_id", "status")

    async def suggest(self) -> list[dict[str, Any]]:
        if self.table in BIG_TABLES:
            return []
        return list(await super().suggest())

    async def facet_results(self) -> tuple[list[dict[str, Any]], list[str]]:
        return await self.results(column_facet_sql, self.shape)

    def shape(self, column: str, source: str, rows: list[Any], size: int) -> dict[str, Any]:
        """The facet as Datasette's column facet describes it."""
        qs_pairs = self.get_querystring_pairs()
        values = []
        for value, count in rows[:size]:
            selected = (column, str(value)) in qs_pairs
            if selected:
                toggle = path_with_removed_args(self.request, {column: str(value)})
            else:
                toggle = path_with_added_args(self.request, {column: value})
            values.append({
                "value": value, "label": value, "count": count, "selected": selected,
                "toggle_url": self.ds.absolute_url(self.request, self.ds.urls.path(toggle)),
            })  # fmt: skip
        return {
            "name": column, "type": self.type, "hideable": source != "metadata",
            "toggle_url": self.ds.urls.path(path_with_removed_args(self.request, {"_facet": column})),
            "results": values, "truncated": len(rows) > size,
        }  # fmt: skip


class MirrorDateFacet(_RollupFacet, DateFacet):
    """Datasette's date facet, summed from the rollups for ``ended_at``."""

    columns = ("ended_at",)

    async def suggest(self) -> list[dict[str, Any]]:
        if self.table not in BIG_TABLES:
            return list(await super().suggest())
        if self.table not in REQUEST_TABLES or rollup_filters(self.request.args) is None:
            return []
        if "ended_at" in (_column(c) for c in self.get_configs()):
            return []
        toggle = path_with_added_args(self.request, {"_facet_date": "ended_at"})
        return [{"name": "ended_at", "type": "date",
                 "toggle_url": self.ds.absolute_url(self.request, self.ds.urls.path(toggle))}]  # fmt: skip

    async def facet_results(self) -> tuple[list[dict[str, Any]], list[str]]:
        return await self.results(lambda _c, f, n: date_facet_sql(f, n), self.shape)

    def shape(self, column: str, source: str, rows: list[Any], size: int) -> dict[str, Any]:
        """The facet as Datasette's date facet describes it."""
        args = dict(self.get_querystring_pairs())
        values = []
        for value, count in rows[:size]:
            selected = str(args.get(f"{column}__date")) == str(value)
            if selected:
                toggle = path_with_removed_args(self.request, {f"{column}__date": str(value)})
            else:
                toggle = path_with_added_args(self.request, {f"{column}__date": value})
            values.append({
                "value": value, "label": value, "count": count, "selected": selected,
                "toggle_url": self.ds.absolute_url(self.request, toggle),
            })  # fmt: skip
        return {
            "name": column, "type": self.type, "results": values,
            "hideable": source != "metadata",
            "toggle_url": path_with_removed_args(self.request, {"_facet_date": column}),
            "truncated": len(rows) > size,
        }  # fmt: skip


class MirrorArrayFacet(ArrayFacet):
    """Datasette's array facet, never suggested on the big tables (finding JSON arrays to
    suggest reads every row of every column)."""

    async def suggest(self) -> list[dict[str, Any]]:
        if self.table in BIG_TABLES:
            return []
        return list(await super().suggest())


@hookimpl(hookwrapper=True)
def register_facet_classes() -> Generator[None, Any, None]:
    """Datasette's facets, replaced by the ones above."""
    outcome = yield
    replace = {ColumnFacet: MirrorColumnFacet, DateFacet: MirrorDateFacet,
               ArrayFacet: MirrorArrayFacet}  # fmt: skip
    outcome.force_result(
        [[replace.get(klass, klass) for klass in classes] for classes in outcome.get_result()]
    )


# --------------------------------------------------------------------------- search


async def big_search(datasette: Any, database: str, search: str) -> bool:
    """Whether a search's words match more than `BIG_SEARCH` requests (a bounded count over
    the full-text index alone: milliseconds); False when they cannot be searched."""
    if not search.strip():
        return False
    try:
        result = await datasette.get_database(database).execute(
            _MATCHES, {"search": search, "most": BIG_SEARCH + 1}
        )
    except (sqlite3.DatabaseError, QueryInterrupted):
        return False  # words Datasette will report itself, or no index: its own way
    return bool(result.rows[0][0] > BIG_SEARCH)


def _plain_search(args: Any) -> str | None:
    """The words of a simple ``?_search=`` in the default (escaped) mode, else None."""
    keys = [k for k in args if k.startswith("_search") and k != "_searchmode"]
    if keys != ["_search"] or args.get("_searchmode") == "raw":
        return None
    return str(args.get("_search"))


@hookimpl(hookwrapper=True)
def filters_from_request(
    request: Any, database: str, table: str, datasette: Any
) -> Generator[None, Any, None]:
    """A big search's clause steered off the rowid lookups, its description amended; an
    empty one dropped."""
    outcome = yield
    search = _plain_search(request.args)
    if table not in REQUEST_TABLES or search is None:
        return

    def steer(hook: Any) -> Callable[[], Awaitable[Any]]:
        async def inner() -> Any:
            found = await await_me_maybe(hook)
            if found is None or found.params.get("search") != search:
                return found
            if not escape_fts(search):
                # an empty search box: FTS5 refuses a query with no words; show every row
                found.where_clauses = [c for c in found.where_clauses if ":search)" not in c]
                found.human_descriptions = []
                return found
            if not await big_search(datasette, database, search):
                return found
            # "rowid in (select rowid from requests_fts …)": as "+rowid" the planner cannot
            # look each match up, and reads the time index newest first instead
            found.where_clauses = [
                "+" + c if c.startswith("rowid in (select rowid from ") else c
                for c in found.where_clauses
            ]
            found.human_descriptions = [
                f"{d} (more than {BIG_SEARCH:,} rows: not counted or faceted)"
                if d == f'search matches "{search}"'
                else d
                for d in found.human_descriptions
            ]
            return found

        return inner

    outcome.force_result([steer(hook) for hook in outcome.get_result()])


@hookimpl
def asgi_wrapper(datasette: Any) -> Callable[[Any], Any]:
    """Table pages of a big search skip the count and the facets (``_nocount``,
    ``_nofacet``), which would read every match: decided before Datasette reads its
    arguments, which is why this is middleware."""

    def wrap(app: Any) -> Any:
        async def wrapped(scope: dict[str, Any], receive: Any, send: Any) -> None:
            if scope.get("type") == "http":
                scope = await _skip_counting(datasette, scope)
            await app(scope, receive, send)

        return wrapped

    return wrap


async def _skip_counting(datasette: Any, scope: dict[str, Any]) -> dict[str, Any]:
    parts = scope.get("path", "").split("/")
    if len(parts) != 3:
        return scope
    table = tilde_decode(parts[2].split(".", 1)[0])
    if table not in REQUEST_TABLES:
        return scope
    query = scope.get("query_string", b"").decode("latin-1")
    args = urllib.parse.parse_qs(query, keep_blank_values=True)
    if [k for k in args if k.startswith("_search") and k != "_searchmode"] != ["_search"]:
        return scope
    if args.get("_searchmode") == ["raw"] or len(args["_search"]) != 1:
        return scope
    try:
        database = datasette.get_database(route=tilde_decode(parts[1])).name
    except KeyError:
        return scope
    if not await big_search(datasette, database, args["_search"][0]):
        return scope
    extra = urllib.parse.urlencode({"_nocount": "1", "_nofacet": "1"})
    return {**scope, "query_string": f"{query}&{extra}".encode("latin-1")}
