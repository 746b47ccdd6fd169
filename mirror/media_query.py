"""The media archive beside the offline commands' answers (no click, no printing).

- `with_files`: each request of `mirror query --media` with its archived files (both
  sides): where in its payload, the file in the store, its declared name and type. Rows
  stream through in batches, the files of a batch's requests read in one query
  (``mirror.media_db.archived_paths``).
- `stats_figures`: `mirror stats --media`'s columns: files and bytes archived and
  references gone, per endpoint or in all, of the requests the stats' filters select.
- `target_figures`: the archive of each sync target's requests, for `mirror status`'
  JSON and CSV (its table ends with one line for the whole archive, ``media_db.totals``).

Files are counted once however many requests refer to them.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from mirror import media_db, query
from mirror.media_db import MediaFilters
from mirror.media_files import MediaDir
from mirror.schema import requests, target_clause

#: the columns `stats_figures` adds to a stats row
STATS_COLUMNS = ("media_files", "media_bytes", "media_gone")
#: the fields of one file in `with_files`' lists
FILE_FIELDS = ("side", "path", "file", "file_name", "content_type")
#: requests whose files are read at once
BATCH = 500


def with_files(
    conn: Connection, rows: Iterable[Sequence[Any]], id_index: int, store: MediaDir
) -> Iterator[tuple[tuple[Any, ...], list[dict[str, Any]]]]:
    """Each row (its request id at ``id_index``) with its request's archived files, in
    payload order (`FILE_FIELDS`; ``file``: its path in ``store``)."""
    it = iter(rows)
    while batch := [tuple(r) for r in itertools.islice(it, BATCH)]:
        ids = tuple(dict.fromkeys(r[id_index] for r in batch))
        found: dict[str, list[dict[str, Any]]] = {}
        wanted = MediaFilters(request_ids=ids, sides=("output", "input"))
        for f in media_db.archived_paths(conn, wanted):
            found.setdefault(f["request_id"], []).append(
                {"side": f["side"], "path": f["path"], "file": str(store.path_of(f["sha256"])),
                 "file_name": f["file_name"], "content_type": f["content_type"]}
            )  # fmt: skip
        for r in batch:
            yield r, found.get(r[id_index], [])


def _selected(conn: Connection, filters: query.Filters) -> sa.Select[Any]:
    return query.listing_statement(conn, filters, columns=["request_id"])


def stats_figures(
    conn: Connection, filters: query.Filters, *, by_endpoint: bool
) -> dict[str | None, dict[str, int]]:
    """`STATS_COLUMNS` of the requests ``filters`` select, by endpoint id, or in all (the
    key None)."""
    among = _selected(conn, filters)
    if not by_endpoint:
        t = media_db.totals(conn, among)
        return {None: {"media_files": t["files"], "media_bytes": t["bytes"],
                       "media_gone": t["gone"]}}  # fmt: skip
    return {
        f["endpoint_id"]: {"media_files": f["files"], "media_bytes": f["bytes"],
                           "media_gone": f["gone"]}
        for f in media_db.endpoint_figures(conn, among)
    }  # fmt: skip


def target_figures(conn: Connection, targets: Iterable[str]) -> dict[str, dict[str, Any]]:
    """``media_db.totals`` of each target's requests (an app id covers its routes)."""
    return {
        t: media_db.totals(conn, sa.select(requests.c.request_id).where(target_clause(t)))
        for t in targets
    }
