"""What `mirror browse` adds to Datasette for the media archive (``mirror media``): each
request's archived images as thumbnails in the requests table and on the request's page,
and the archived files themselves. Registered by ``mirror.commands_query`` in its own
process only, and only when the archive's folder exists and datasette-media is installed.

The files are served by datasette-media, the plugin made for serving files found by a SQL
query (with resizing); `plugin_settings` gives it two media types:

- ``/-/media/file/<sha256>``: the archived file. Images (but SVG, which may carry
  scripts), video and audio are sent with their content type; anything else as
  ``application/octet-stream``, so a file a host labelled ``text/html`` is never a page
  of the Datasette site.
- ``/-/media/thumb/<sha256>``: a raster image, scaled to `THUMB_HEIGHT` pixels high.

Both look the hash up in ``media_files``, and the file's place on disk comes from the SQL
function ``mirror_media_file(sha256)`` (`prepare_connection`): the store's root and the
hash only (``mirror.media_files.MediaDir.path_of`` takes nothing but 64 hex digits), and
NULL when the file is not in the store. So no URL can name a path outside the store, and
a key that is not an archived file's hash is a 404.

`render_cell` draws the thumbnails into the ``json_output`` cell of ``requests``, above
the payload: each links to the file; other archived files (video, audio) are links; the
files fal has deleted before they were archived are counted (``gone``). A request with
nothing archived keeps Datasette's own cell, and an image missing from the store is left
out, so no page shows a broken image. The payload below is cut as Datasette cuts cells on
a table page (``truncate_cells_html``) and shown whole on the request's own page, as
Datasette shows it there: `asgi_wrapper` notes which page is being drawn.
"""

from __future__ import annotations

import contextvars
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import markupsafe
from datasette import hookimpl

from mirror.media_files import MediaDir

#: this plugin's name, and the key of its settings in the metadata's ``plugins``
PLUGIN = "mirror-media"
#: thumbnails are scaled to this height, in pixels
THUMB_HEIGHT = 96
#: at most this many files are shown in one cell (then how many more there are)
MAX_SHOWN = 8
#: the image types a thumbnail is made of (what Pillow reads; not SVG)
THUMB_TYPES = ("image/png", "image/jpeg", "image/webp", "image/gif", "image/bmp")

_SERVED_TYPE = (
    "CASE WHEN (content_type GLOB 'image/*' AND content_type NOT GLOB 'image/svg*') "
    "OR content_type GLOB 'video/*' OR content_type GLOB 'audio/*' "
    "THEN content_type ELSE 'application/octet-stream' END"
)
_THUMB_TYPES = ", ".join(f"'{t}'" for t in THUMB_TYPES)
_FILES_OF = """
SELECT r.state, r.sha256, r.path, r.file_name, f.content_type, r.content_type AS declared_type
FROM media_refs r LEFT JOIN media_files f ON f.sha256 = r.sha256
WHERE r.request_id = :request_id AND r.side = 'output' AND r.state IN ('archived', 'gone')
ORDER BY r.path
"""

#: the path of the page being drawn (set by `asgi_wrapper`)
_page: contextvars.ContextVar[str] = contextvars.ContextVar("mirror_media_page", default="")


def plugin_settings(media_dir: Path) -> dict[str, Any]:
    """The metadata's ``plugins`` entries that serve the archive in ``media_dir``."""
    return {
        PLUGIN: {"media_dir": str(media_dir)},
        "datasette-media": {
            "file": {
                "sql": f"SELECT mirror_media_file(sha256) AS filepath, {_SERVED_TYPE} AS "
                "content_type FROM media_files WHERE sha256 = :key"
            },
            "thumb": {
                "sql": f"SELECT mirror_media_file(sha256) AS filepath, {THUMB_HEIGHT} AS "
                "resize_height FROM media_files WHERE sha256 = :key "
                f"AND content_type IN ({_THUMB_TYPES}) AND mirror_media_file(sha256) IS NOT NULL"
            },
        },
    }


def _store(datasette: Any) -> MediaDir | None:
    settings = datasette.plugin_config(PLUGIN) or {}
    root = settings.get("media_dir")
    return MediaDir(Path(root)) if root else None


def stored_file(store: MediaDir, sha: Any) -> str | None:
    """The path of the archived file with this hash, if it is in the store."""
    try:
        path = store.path_of(sha)
    except (ValueError, TypeError):
        return None
    return str(path) if path.is_file() else None


@hookimpl
def prepare_connection(conn: Any, database: str, datasette: Any) -> None:
    store = _store(datasette)
    if store is not None:
        conn.create_function("mirror_media_file", 1, lambda sha: stored_file(store, sha))


@hookimpl
def asgi_wrapper(datasette: Any) -> Callable[[Any], Any]:
    def wrap(app: Any) -> Any:
        async def noting_the_page(scope: Any, receive: Any, send: Any) -> None:
            token = _page.set(scope.get("path", "") if scope.get("type") == "http" else "")
            try:
                await app(scope, receive, send)
            finally:
                _page.reset(token)

        return noting_the_page

    return wrap


@hookimpl
def render_cell(
    row: Any, value: Any, column: str, table: str | None, database: str, datasette: Any
) -> Awaitable[markupsafe.Markup | None] | None:
    if table != "requests" or column != "json_output":
        return None
    store = _store(datasette)
    if store is None:
        return None
    try:
        request_id = row["request_id"]
    except (IndexError, KeyError):
        return None
    whole = _page.get().startswith(datasette.urls.table(database, table) + "/")
    limit = 0 if whole else (datasette.setting("truncate_cells_html") or 0)
    return _cell(datasette, database, store, request_id, value, limit)


async def _cell(
    datasette: Any, database: str, store: MediaDir, request_id: str, value: Any, limit: int
) -> markupsafe.Markup | None:
    refs = (
        await datasette.get_database(database).execute(_FILES_OF, {"request_id": request_id})
    ).rows
    gone = sum(1 for f in refs if f["state"] == "gone")
    shown = [
        f for f in refs if f["state"] == "archived" and stored_file(store, f["sha256"]) is not None
    ]
    if not shown and not gone:
        return None
    parts = [_link(datasette, f) for f in shown[:MAX_SHOWN]]
    if len(shown) > MAX_SHOWN:
        parts.append(markupsafe.escape(f"+{len(shown) - MAX_SHOWN} more"))
    if gone:
        parts.append(markupsafe.escape(f"{gone} {'file' if gone == 1 else 'files'} gone"))
    text = "" if value is None else str(value)
    if limit and len(text) > limit:
        text = text[:limit] + "\u2026"
    return markupsafe.Markup(
        '<div class="mirror-media" style="display:flex;flex-wrap:wrap;gap:4px;'
        'align-items:center;margin-bottom:4px">{}</div>{}'
    ).format(markupsafe.Markup("").join(parts), text)


def _link(datasette: Any, f: Any) -> markupsafe.Markup:
    sha = f["sha256"]
    href = datasette.urls.path(f"/-/media/file/{sha}")
    name = f["file_name"] or f["path"]
    if f["content_type"] in THUMB_TYPES:
        return markupsafe.Markup(
            '<a href="{}" title="{}"><img src="{}" alt="{}" loading="lazy" '
            'style="height:{}px;width:auto;max-width:{}px"></a>'
        ).format(
            href,
            name,
            datasette.urls.path(f"/-/media/thumb/{sha}"),
            name,
            THUMB_HEIGHT,
            4 * THUMB_HEIGHT,
        )
    return markupsafe.Markup('<a href="{}" title="{}">{}</a>').format(
        href, f["content_type"] or f["declared_type"] or "file", name
    )
