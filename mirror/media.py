"""`mirror media`: archive the files the mirrored requests produced, and check the archive.

`archive` is one run: search the payloads changed since the last run for file references
(``mirror.media_db.scan``), count references to a URL already archived as archived, plan
the URLs still to fetch under the run's filters, then download them a few at once
(``mirror.media_fetch.Fetcher``, through the key-less client of ``mirror.media_net``) and
record each outcome as it comes. Results are committed in small transactions, so a run
stopped at any point keeps what it finished; the files it was writing stay in the store's
``tmp/`` and are cleared by the next run, which then fetches them again. A second run with
nothing new fetches nothing.

`verify` re-hashes every archived file; with ``repair`` it fetches a missing or corrupt
file again from a URL it was archived from, keeping it only if the bytes are the same;
what cannot be repaired goes back to pending, and the next archive run tries again.

Neither prints: the CLI shows the report (``mirror.commands_media``); ``mirror.runs`` opens
the database, the store folder and the client around them.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path

from sqlalchemy.engine import Engine

from mirror import media_db
from mirror.db import reading, writing
from mirror.media_db import MediaFilters, Work
from mirror.media_fetch import DEFAULT_DEADLINE, DEFAULT_MAX_FILE, Fetched, Fetcher
from mirror.media_files import MediaDir, sha256_file
from mirror.media_net import UrlPolicy
from mirror.timeparse import to_text, utcnow

#: notes of one kind a run prints at most (then how many more)
MAX_NOTES = 20
#: results recorded per transaction at most, and at least this often (seconds)
RECORD_BATCH = 64
RECORD_EVERY = 0.5


@dataclass(frozen=True)
class ArchiveOptions:
    filters: MediaFilters = field(default_factory=MediaFilters)
    dry_run: bool = False
    #: files fetched at most this run (None: all)
    max_files: int | None = None
    #: bytes downloaded at most this run (None: no limit)
    max_bytes: int | None = None
    #: the per-file cap, in bytes
    max_file: int = DEFAULT_MAX_FILE
    #: seconds one file's download may take, retries included
    deadline: float = DEFAULT_DEADLINE
    #: downloads at once
    max_concurrency: int = 16
    #: media hosts besides fal's (``mirror.media_net``)
    hosts: tuple[str, ...] = ()
    #: the store's folder (default: beside a SQLite mirror)
    media_dir: Path | None = None


@dataclass
class MediaReport:
    dry_run: bool = False
    requests_scanned: int = 0
    refs_found: int = 0
    linked: int = 0
    planned: int = 0
    planned_bytes: int = 0
    unknown_size: int = 0
    archived: int = 0
    archived_bytes: int = 0
    gone: int = 0
    failed: int = 0
    refused: int = 0
    deferred: int = 0
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)
    _noted: dict[str, int] = field(default_factory=dict)

    def note(self, kind: str, text: str) -> None:
        n = self._noted.get(kind, 0) + 1
        self._noted[kind] = n
        if n <= MAX_NOTES:
            self.notes.append(text)

    def close_notes(self) -> None:
        for kind, n in self._noted.items():
            if n > MAX_NOTES:
                self.notes.append(f"and {n - MAX_NOTES} more {kind}")

    def summary(self) -> str:
        if self.dry_run:
            unknown = f" (+{self.unknown_size} of unknown size)" if self.unknown_size else ""
            return (
                f"media (dry run): would fetch {self.planned} files, "
                f"{human_bytes(self.planned_bytes)} declared{unknown}; "
                f"{self.refs_found} new references found in {self.requests_scanned} requests"
            )
        parts = [
            f"media: {self.archived} files archived ({human_bytes(self.archived_bytes)})",
            f"{self.linked} already archived",
            f"{self.gone} gone",
            f"{self.failed} failed",
            f"{self.refused} refused",
        ]
        text = ", ".join(parts) + f" in {self.seconds:.1f}s"
        if self.deferred:
            text += f"; {self.deferred} left for the next run (--max-bytes/--max-files)"
        return text


def human_bytes(n: int) -> str:
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{n} B"


def dry_run(
    writer: Engine,
    policy: UrlPolicy,
    opts: ArchiveOptions,
    *,
    clock: Callable[[], str] = lambda: to_text(utcnow()),
) -> MediaReport:
    """What `archive` would fetch: its scan and plan, in a transaction rolled back."""
    report = MediaReport(dry_run=True)
    with writer.connect() as conn, conn.begin() as txn:
        report.requests_scanned, report.refs_found = media_db.scan(
            conn, lambda: contextlib.nullcontext(conn), policy.bare_host, clock()
        )
        media_db.link_known(conn, clock())
        work = _limited(media_db.plan(conn, opts.filters), opts.max_files)
        txn.rollback()
    report.planned = len(work)
    report.planned_bytes = sum(w.declared_size or 0 for w in work)
    report.unknown_size = sum(1 for w in work if w.declared_size is None)
    return report


def archive(
    writer: Engine,
    reader: Engine,
    files: MediaDir,
    fetcher: Fetcher,
    policy: UrlPolicy,
    opts: ArchiveOptions,
    *,
    clock: Callable[[], str] = lambda: to_text(utcnow()),
) -> MediaReport:
    """One archive run (see the module's docstring); hold ``files.lock()`` around it.
    ``reader`` streams the payloads while ``writer`` records (on SQLite: a read-only
    engine, so the two never wait for each other's lock)."""
    t0 = time.monotonic()
    report = MediaReport()
    files.clear_temps()
    with reader.connect() as rconn:
        report.requests_scanned, report.refs_found = media_db.scan(
            rconn, writer.begin, policy.bare_host, clock()
        )
    with writer.begin() as conn:
        report.linked = media_db.link_known(conn, clock())
        all_work = media_db.plan(conn, opts.filters)
    work = _limited(all_work, opts.max_files)
    report.deferred = len(all_work) - len(work)
    report.planned = len(work)
    _fetch_all(writer, fetcher, work, opts.max_concurrency, report, clock)
    report.seconds = time.monotonic() - t0
    report.close_notes()
    return report


def _limited(work: list[Work], most: int | None) -> list[Work]:
    return work if most is None else work[:most]


def _fetch_all(
    writer: Engine,
    fetcher: Fetcher,
    work: list[Work],
    concurrency: int,
    report: MediaReport,
    clock: Callable[[], str],
) -> None:
    """Download ``work`` with ``concurrency`` workers, recording results in small batches
    from this thread (the one writer); stop handing out work once the budget is spent."""
    stop = threading.Event()
    queue = iter(work)
    done: list[tuple[Work, Fetched]] = []
    last_commit = time.monotonic()

    def run(item: Work) -> Fetched:
        if stop.is_set() or fetcher.budget.exhausted:
            return Fetched("deferred", reason="stopped", contacted=False)
        left = fetcher.budget.left()
        if left is not None and item.declared_size is not None and item.declared_size > left:
            fetcher.budget.exhausted = True
            return Fetched("deferred", reason="over the byte budget", contacted=False)
        return fetcher.fetch(item.url, item.declared_size)

    pool = ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="mirror-media")
    running: dict[Future[Fetched], Work] = {}
    try:
        while True:
            while len(running) < 2 * concurrency and not stop.is_set():
                item = next(queue, None)
                if item is None:
                    break
                running[pool.submit(run, item)] = item
            if not running:
                break
            finished, _ = wait(list(running), timeout=RECORD_EVERY, return_when=FIRST_COMPLETED)
            for fut in finished:
                done.append((running.pop(fut), fut.result()))
            if done and (
                len(done) >= RECORD_BATCH or time.monotonic() - last_commit >= RECORD_EVERY
            ):
                _record(writer, done, report, clock())
                done = []
                last_commit = time.monotonic()
        report.deferred += sum(1 for _ in queue)
    finally:
        stop.set()
        if done:
            _record(writer, done, report, clock())
        pool.shutdown(wait=False, cancel_futures=True)


def _record(
    writer: Engine, results: list[tuple[Work, Fetched]], report: MediaReport, now: str
) -> None:
    with writing(writer) as conn:
        media_db.record(conn, [(item.url, fetched) for item, fetched in results], now)
    for item, fetched in results:
        _count(report, item, fetched)


def _count(report: MediaReport, item: Work, fetched: Fetched) -> None:
    outcome = fetched.outcome
    if outcome == "archived":
        report.archived += 1
        report.archived_bytes += fetched.size or 0
    elif outcome == "gone":
        report.gone += 1
    elif outcome == "deferred":
        report.deferred += 1
    elif outcome == "failed":
        report.failed += 1
        report.note("failures", f"media: failed {_short(item.url)}: {fetched.reason}")
    elif outcome == "refused":
        report.refused += 1
        if not (item.refused_before and not fetched.contacted):  # said when first refused
            report.note("refusals", f"media: refused {_short(item.url)}: {fetched.reason}")


def _short(url: str) -> str:
    return url if len(url) <= 120 else url[:117] + "..."


# --------------------------------------------------------------------------- verify


@dataclass
class MediaVerifyReport:
    checked: int = 0
    checked_bytes: int = 0
    missing: list[str] = field(default_factory=list)
    corrupt: list[str] = field(default_factory=list)
    repaired: list[str] = field(default_factory=list)
    #: lost files whose references went back to pending
    reset: list[str] = field(default_factory=list)
    stray: int = 0
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        bad = set(self.missing) | set(self.corrupt)
        return bad <= set(self.repaired)

    def summary(self) -> str:
        text = (
            f"media: {self.checked} files checked ({human_bytes(self.checked_bytes)}): "
            f"{len(self.missing)} missing, {len(self.corrupt)} corrupt"
        )
        if self.repaired or self.reset:
            text += f"; {len(self.repaired)} repaired, {len(self.reset)} left to fetch again"
        if self.stray:
            text += f"; {self.stray} files in the store that the database does not list"
        return text


def verify(
    writer: Engine, files: MediaDir, fetcher: Fetcher | None, *, repair: bool
) -> MediaVerifyReport:
    """Re-hash the archive (see the module's docstring); ``fetcher`` for ``repair``."""
    report = MediaVerifyReport()
    with reading(writer) as conn:
        stored = list(media_db.archived_files(conn))
    for sha, size in stored:
        path = files.path_of(sha)
        report.checked += 1
        if not path.is_file():
            report.missing.append(sha)
            report.notes.append(f"media: missing {path}")
            continue
        got, got_size = sha256_file(path)
        report.checked_bytes += got_size
        if got != sha or got_size != size:
            report.corrupt.append(sha)
            report.notes.append(f"media: corrupt {path} (its bytes hash to {got[:12]}…)")
    report.stray = len(files.stray_files({sha for sha, _ in stored}))
    if repair and fetcher is not None:
        for sha in [*report.missing, *report.corrupt]:
            _repair(writer, fetcher, sha, report)
    return report


def _repair(writer: Engine, fetcher: Fetcher, sha: str, report: MediaVerifyReport) -> None:
    with reading(writer) as conn:
        urls = media_db.urls_of(conn, sha)
    for url in urls:
        fetched = fetcher.fetch(url, expect_sha=sha)
        if fetched.outcome == "archived":
            report.repaired.append(sha)
            return
        report.notes.append(f"media: cannot repair from {_short(url)}: {fetched.reason}")
    with writing(writer) as conn:
        media_db.mark_missing(conn, sha)
    report.reset.append(sha)
