"""The media archive's tables: references found, the work of a run, results, figures.

``media_refs`` holds one row per file reference of a request's payload, ``media_files``
one per archived file (by SHA-256), ``media_scan`` how far the payloads have been searched
(``mirror.schema``; migration 0008). This module reads and writes them with SQLAlchemy Core
on SQLite and PostgreSQL alike; it does no HTTP and touches no file.

- `scan` searches the payloads of requests changed since the last scan (less a margin, so
  a sync committing while it reads is never skipped) and records new references; a
  reference whose URL changed is fetched again, and none is ever deleted: the point of the
  archive is to outlive fal's payloads.
- `link_known` marks references to a URL already archived as archived: the same file is
  downloaded and stored once.
- `plan` is a run's work: one item per URL whose references are pending, failed fewer than
  `MAX_ATTEMPTS` times, or refused without a host being contacted (the URL policy is
  checked again, since the user may have added a host), oldest request first (fal deletes
  the oldest first).
- `record` writes what became of a batch of URLs into all of their references.
- `endpoint_figures`, `totals`, `state_counts`, `archived_files`, `archived_paths` answer
  the questions.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import orjson
import sqlalchemy as sa
from sqlalchemy.engine import Connection

from mirror.media_fetch import Fetched
from mirror.media_refs import FileRef, extract
from mirror.schema import Instant, media_files, media_refs, media_scan, requests, target_clause
from mirror.timeparse import from_text, to_text

#: a failed reference is tried again by this many runs in all, then left failed
MAX_ATTEMPTS = 3
#: how far before the last scan's newest change a scan starts again
SCAN_MARGIN = timedelta(minutes=10)
#: requests whose references are written per transaction
SCAN_BATCH = 500
STATES = ("pending", "archived", "gone", "failed", "refused")


@dataclass(frozen=True)
class MediaFilters:
    """Which requests' files a run archives, as `mirror query` reads its flags: endpoints
    (an app id covers its routes), statuses, ``ended_at`` in ``[since, until)``; ``sides``:
    output, and input when asked; ``request_ids``: these requests only."""

    endpoints: tuple[str, ...] = ()
    statuses: tuple[str, ...] = ()
    since: datetime | None = None
    until: datetime | None = None
    sides: tuple[str, ...] = ("output",)
    #: only these requests (none: any)
    request_ids: tuple[str, ...] = ()


@dataclass(frozen=True)
class Work:
    """One URL to fetch: the size its references declare (None: unknown), how many
    references it has, and whether any host was contacted for it before."""

    url: str
    declared_size: int | None
    refs: int
    #: refused before without contacting a host (checked again: a host may have been added)
    refused_before: bool = False


def _payload(text: Any) -> Any:
    if text is None:
        return None
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError:
        return None


def scan(
    reader: Connection,
    write: Callable[[], AbstractContextManager[Connection]],
    bare_host: Callable[[str], bool],
    now: str,
) -> tuple[int, int]:
    """Record the references of payloads changed since the last scan: (requests read,
    references added). ``reader`` streams the requests; ``write()`` gives a transaction
    for a batch of references (the watermark is written last, so a killed scan starts over
    from the old one)."""
    with write() as conn:
        until = conn.execute(sa.select(media_scan.c.changed_until)).scalar()
    q = sa.select(
        requests.c.request_id,
        requests.c.json_output,
        requests.c.json_input,
        requests.c.last_changed_at,
    ).where(sa.or_(requests.c.json_output.is_not(None), requests.c.json_input.is_not(None)))
    if until is not None:
        q = q.where(requests.c.last_changed_at >= to_text(from_text(until) - SCAN_MARGIN))
    seen = added = 0
    newest = until
    result = reader.execution_options(stream_results=True, yield_per=SCAN_BATCH).execute(q)
    for part in result.partitions(SCAN_BATCH):
        found: dict[str, list[FileRef]] = {}
        for rid, out, inp, changed in part:
            seen += 1
            if newest is None or changed > newest:
                newest = changed
            refs = extract(_payload(out), "output", bare_host)
            refs += extract(_payload(inp), "input", bare_host)
            if refs:
                found[rid] = refs
        if found:
            with write() as conn:
                added += _add_refs(conn, found, now)
    if newest is not None and newest != until:
        with write() as conn:
            if until is None:
                conn.execute(media_scan.insert().values(id=1, changed_until=newest))
            else:
                conn.execute(media_scan.update().values(changed_until=newest))
    return seen, added


def _add_refs(conn: Connection, found: dict[str, list[FileRef]], now: str) -> int:
    m = media_refs.c
    have = {
        (r.request_id, r.side, r.path): r.url
        for r in conn.execute(
            sa.select(m.request_id, m.side, m.path, m.url).where(m.request_id.in_(list(found)))
        )
    }
    new: list[dict[str, Any]] = []
    for rid, refs in found.items():
        for ref in refs:
            key = (rid, ref.side, ref.path)
            old = have.get(key)
            if old == ref.url:
                continue
            values = {
                "url": ref.url,
                "content_type": ref.content_type,
                "file_name": ref.file_name,
                "declared_size": ref.declared_size,
                "state": "pending",
                "sha256": None,
                "attempts": 0,
                "error": None,
                "seen_at": now,
                "tried_at": None,
                "gone_at": None,
            }
            if old is None:
                new.append({"request_id": rid, "side": ref.side, "path": ref.path, **values})
                have[key] = ref.url
            else:  # the payload now names another file here: that one is to be fetched
                conn.execute(
                    media_refs.update()
                    .where(m.request_id == rid, m.side == ref.side, m.path == ref.path)
                    .values(**values)
                )
    if new:
        conn.execute(media_refs.insert(), new)
    return len(new)


def _retry_clause() -> sa.ColumnElement[bool]:
    m = media_refs.c
    return sa.or_(
        m.state == "pending",
        sa.and_(m.state == "failed", m.attempts < MAX_ATTEMPTS),
        sa.and_(m.state == "refused", m.attempts == 0),
    )


def _filter_clauses(f: MediaFilters) -> list[sa.ColumnElement[bool]]:
    r = requests.c
    out: list[sa.ColumnElement[bool]] = [media_refs.c.side.in_(f.sides)]
    if f.endpoints:
        out.append(sa.or_(*(target_clause(e) for e in f.endpoints)))
    if f.statuses:
        out.append(r.status.in_(f.statuses))
    if f.since is not None:
        out.append(r.ended_at >= to_text(f.since))
    if f.until is not None:
        out.append(r.ended_at < to_text(f.until))
    if f.request_ids:
        out.append(media_refs.c.request_id.in_(f.request_ids))
    return out


def link_known(conn: Connection, now: str) -> int:
    """References (to be fetched) of URLs another reference has archived: archived too."""
    m = media_refs.c
    a = media_refs.alias("a")
    sha = (
        sa.select(a.c.sha256)
        .where(a.c.url == m.url, a.c.state == "archived")
        .limit(1)
        .scalar_subquery()
    )
    known = sa.exists().where(a.c.url == m.url, a.c.state == "archived")
    result = conn.execute(
        media_refs.update()
        .where(m.state.in_(("pending", "failed", "refused")), known)
        .values(state="archived", sha256=sha, error=None, tried_at=now)
    )
    return int(result.rowcount or 0)


def plan(conn: Connection, filters: MediaFilters) -> list[Work]:
    """The URLs a run is to fetch, oldest request first (see the module's docstring)."""
    m = media_refs.c
    q = (
        sa.select(
            m.url,
            sa.func.max(m.declared_size),
            sa.func.count(),
            sa.func.max(sa.case((m.state == "refused", 1), else_=0)),
        )
        .select_from(media_refs.join(requests, requests.c.request_id == m.request_id))
        .where(_retry_clause(), *_filter_clauses(filters))
        .group_by(m.url)
        .order_by(sa.func.min(requests.c.sent_at), m.url)
    )
    return [Work(url, size, n, bool(refused)) for url, size, n, refused in conn.execute(q)]


#: the states of references still to be fetched
_TO_FETCH = ("pending", "failed", "refused")


def _outcome(**values: Any) -> sa.Update:
    """The update that records one outcome into every reference to ``:b_url`` still to be
    fetched, built once: `record` runs it for a whole batch of URLs in one executemany
    (built and compiled per URL, the statements cost more than the downloads themselves,
    bench/media_bench.py)."""
    m = media_refs.c
    return (
        media_refs.update()
        .where(
            m.url == sa.bindparam("b_url", type_=sa.Text()),
            # not in_(): executemany takes no expanding parameter
            sa.or_(*(m.state == state for state in _TO_FETCH)),
        )
        .values(
            attempts=m.attempts + sa.bindparam("b_bump", type_=sa.Integer()),
            tried_at=sa.bindparam("b_now", type_=Instant()),
            **values,
        )
    )


_ARCHIVED = _outcome(
    state="archived", sha256=sa.bindparam("b_sha", type_=sa.Text()), error=sa.null()
)
_GONE = _outcome(
    state="gone",
    gone_at=sa.bindparam("b_now", type_=Instant()),
    error=sa.bindparam("b_error", type_=sa.Text()),
)
_NOT_FETCHED = _outcome(
    state=sa.bindparam("b_state", type_=sa.Text()),
    error=sa.bindparam("b_error", type_=sa.Text()),
)


def record(conn: Connection, results: Sequence[tuple[str, Fetched]], now: str) -> None:
    """What became of each URL, into every reference to it still to be fetched; a new
    file's row into ``media_files``. A deferred URL is left as it was, for the next run."""
    files: dict[str, dict[str, Any]] = {}
    archived: list[dict[str, Any]] = []
    gone: list[dict[str, Any]] = []
    not_fetched: list[dict[str, Any]] = []
    for url, fetched in results:
        common = {"b_url": url, "b_bump": 1 if fetched.contacted else 0, "b_now": now}
        if fetched.outcome == "archived":
            assert fetched.sha256 is not None and fetched.size is not None
            files.setdefault(
                fetched.sha256,
                {"sha256": fetched.sha256, "size": fetched.size,
                 "content_type": fetched.content_type, "fetched_at": now},
            )  # fmt: skip
            archived.append({**common, "b_sha": fetched.sha256})
        elif fetched.outcome == "gone":
            gone.append({**common, "b_error": fetched.reason})
        elif fetched.outcome in ("failed", "refused"):
            not_fetched.append({**common, "b_state": fetched.outcome, "b_error": fetched.reason})
    if files:
        f = media_files.c
        known = set(conn.execute(sa.select(f.sha256).where(f.sha256.in_(list(files)))).scalars())
        new = [row for sha, row in files.items() if sha not in known]
        if new:
            conn.execute(media_files.insert(), new)
    for statement, params in ((_ARCHIVED, archived), (_GONE, gone), (_NOT_FETCHED, not_fetched)):
        if params:
            conn.execute(statement, params)


def mark_missing(conn: Connection, sha: str) -> int:
    """A stored file found missing or corrupt and not repaired: its references are pending
    again (the next run fetches them where the URL still answers), its row is dropped."""
    m = media_refs.c
    n = conn.execute(
        media_refs.update()
        .where(m.sha256 == sha, m.state == "archived")
        .values(state="pending", sha256=None, attempts=0, error="the archived file was lost")
    ).rowcount
    conn.execute(media_files.delete().where(media_files.c.sha256 == sha))
    return int(n or 0)


def archived_files(conn: Connection) -> Iterator[tuple[str, int]]:
    """(sha256, size) of every archived file."""
    yield from conn.execute(
        sa.select(media_files.c.sha256, media_files.c.size).order_by(media_files.c.sha256)
    )


def urls_of(conn: Connection, sha: str) -> list[str]:
    """The URLs an archived file was fetched from (for a repair)."""
    m = media_refs.c
    return [
        u
        for (u,) in conn.execute(sa.select(m.url).where(m.sha256 == sha).distinct().order_by(m.url))
    ]


def _among(among: sa.Select[Any] | None) -> list[sa.ColumnElement[bool]]:
    """The references of the requests ``among`` selects (their ``request_id``; None: all)."""
    return [] if among is None else [media_refs.c.request_id.in_(among.order_by(None))]


def state_counts(conn: Connection, among: sa.Select[Any] | None = None) -> dict[str, int]:
    """References per state (every state, zero included), of the requests ``among``
    selects (a statement selecting ``request_id``; None: every request)."""
    counts = dict.fromkeys(STATES, 0)
    m = media_refs.c
    q = sa.select(m.state, sa.func.count()).where(*_among(among)).group_by(m.state)
    for state, n in conn.execute(q):
        counts[state] = n
    return counts


def totals(conn: Connection, among: sa.Select[Any] | None = None) -> dict[str, Any]:
    """The archive in figures: files and bytes archived, references per state, and when a
    file was last found gone (``mirror status``); of the requests ``among`` selects (as in
    `state_counts`), whose files are counted once however many of them refer to each."""
    f = media_files.c
    m = media_refs.c
    if among is None:
        counted = sa.select(sa.func.count(), sa.func.coalesce(sa.func.sum(f.size), 0))
    else:
        shas = (
            sa.select(m.sha256).where(m.state == "archived", *_among(among)).distinct().subquery()
        )
        counted = sa.select(sa.func.count(), sa.func.coalesce(sa.func.sum(f.size), 0)).select_from(
            shas.join(media_files, f.sha256 == shas.c.sha256)
        )
    files, size = conn.execute(counted).one()
    last_gone = conn.execute(sa.select(sa.func.max(m.gone_at)).where(*_among(among))).scalar()
    return {
        "files": files, "bytes": int(size), "last_gone_at": last_gone,
        **state_counts(conn, among),
    }  # fmt: skip


#: the columns of `endpoint_figures`' rows
FIGURE_COLUMNS = (
    "endpoint_id", "files", "bytes", "pending", "gone", "failed", "refused", "last_gone_at",
)  # fmt: skip


def endpoint_figures(conn: Connection, among: sa.Select[Any] | None = None) -> list[dict[str, Any]]:
    """Per endpoint: files archived (distinct), their bytes, references pending, gone,
    failed and refused, and when a file was last found gone; of the requests ``among``
    selects (as in `state_counts`)."""
    m = media_refs.c
    r = requests.c
    joined = media_refs.join(requests, r.request_id == m.request_id)
    per_state = (
        sa.select(
            r.endpoint_id,
            *(sa.func.sum(sa.case((m.state == s, 1), else_=0)).label(s) for s in STATES[2:]),
            sa.func.sum(sa.case((m.state == "pending", 1), else_=0)).label("pending"),
            sa.func.max(m.gone_at).label("last_gone_at"),
        )
        .select_from(joined)
        .where(*_among(among))
        .group_by(r.endpoint_id)
    )
    distinct_files = (
        sa.select(r.endpoint_id, m.sha256)
        .select_from(joined)
        .where(m.state == "archived", *_among(among))
        .distinct()
        .subquery()
    )
    sizes = (
        sa.select(
            distinct_files.c.endpoint_id,
            sa.func.count().label("files"),
            sa.func.coalesce(sa.func.sum(media_files.c.size), 0).label("bytes"),
        )
        .select_from(
            distinct_files.join(media_files, media_files.c.sha256 == distinct_files.c.sha256)
        )
        .group_by(distinct_files.c.endpoint_id)
    )
    files = {row.endpoint_id: (row.files, int(row.bytes)) for row in conn.execute(sizes)}
    out = []
    for row in conn.execute(per_state.order_by(r.endpoint_id)):
        n, size = files.get(row.endpoint_id, (0, 0))
        out.append(
            {
                "endpoint_id": row.endpoint_id,
                "files": n,
                "bytes": size,
                "pending": int(row.pending or 0),
                "gone": int(row.gone or 0),
                "failed": int(row.failed or 0),
                "refused": int(row.refused or 0),
                "last_gone_at": row.last_gone_at,
            }
        )
    return out


#: the columns of `archived_paths`' rows
PATH_COLUMNS = ("request_id", "side", "path", "sha256", "file_name", "content_type")


def archived_paths(conn: Connection, filters: MediaFilters) -> list[dict[str, Any]]:
    """The archived files of the requests ``filters`` select (both sides unless narrowed):
    request, side, path in the payload, hash, declared name and type; by request and path."""
    m = media_refs.c
    q = (
        sa.select(m.request_id, m.side, m.path, m.sha256, m.file_name, m.content_type)
        .select_from(media_refs.join(requests, requests.c.request_id == m.request_id))
        .where(m.state == "archived", *_filter_clauses(filters))
        .order_by(m.request_id, m.side, m.path)
    )
    return [dict(r._mapping) for r in conn.execute(q)]
