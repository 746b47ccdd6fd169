"""A sync, verify or media run from start to end, as `mirror sync`, `mirror verify` and
`mirror media` start one.

Each takes the database's name, the run's options and the environment, and does what the
command needs around the library call: checks the base URL, loads the key, the retry
knobs and the proxy and CA settings from the environment, takes the writer lock where the run writes, opens the store and
an HTTP client with its pacer, finds the targets, then calls ``mirror.sync.sync`` or
``mirror.verify.verify`` and returns its report. Nothing here prints or knows click: flags
that do not fit the database raise `mirror.errors.UsageError`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from mirror import lock
from mirror.api import (
    DEFAULT_BASE_URL,
    CallStats,
    FalClient,
    RetryPolicy,
    check_base_url,
    make_http_client,
)
from mirror.auth import load_key
from mirror.db import display_db, reader_engine, sqlite_path
from mirror.errors import ConfigError, UsageError
from mirror.histories import Resolved, discover_models, resolve
from mirror.media import ArchiveOptions, MediaReport, MediaVerifyReport, archive, dry_run
from mirror.media import verify as verify_media
from mirror.media_fetch import Budget, Fetcher, FetchLimits
from mirror.media_files import MediaDir, default_media_dir
from mirror.media_net import UrlPolicy, media_client
from mirror.metrics import check_path, write_for
from mirror.pacing import Pacer
from mirror.store import Store
from mirror.sync import ProgressListener, SyncOptions, SyncReport, sync
from mirror.timeparse import utcnow
from mirror.verify import VerifyReport, verify

log = logging.getLogger(__name__)


def _env_float(env: Mapping[str, str], name: str, default: float) -> float:
    raw = env.get(name)
    if raw is None:
        return default
    try:
        v = float(raw)
    except ValueError:
        raise ConfigError(f"{name}={raw!r} is not a number") from None
    if v < 0:
        raise ConfigError(f"{name} must not be negative")
    return v


def retry_policy_from_env(env: Mapping[str, str] = os.environ) -> RetryPolicy:
    """Tuning knobs for impatient networks and for tests (documented in the README)."""
    d = RetryPolicy()
    return RetryPolicy(
        attempts=max(1, int(_env_float(env, "MIRROR_RETRY_ATTEMPTS", d.attempts))),
        base=_env_float(env, "MIRROR_RETRY_BASE", d.base),
        cap=_env_float(env, "MIRROR_RETRY_CAP", d.cap),
        deadline=_env_float(env, "MIRROR_REQUEST_DEADLINE", d.deadline),
        read_timeout=min(
            d.read_timeout, _env_float(env, "MIRROR_REQUEST_DEADLINE", d.read_timeout)
        ),
        max_body=_env_page_bytes(env, d.max_body),
    )


def _env_page_bytes(env: Mapping[str, str], default: int) -> int:
    """``MIRROR_MAX_PAGE_BYTES``: the body cap, in whole bytes (tests lower it, so that a
    page over it need not be 64 MiB)."""
    raw = env.get("MIRROR_MAX_PAGE_BYTES")
    if raw is None:
        return default
    if not raw.strip().isdigit() or int(raw) < 1:
        raise ConfigError(f"MIRROR_MAX_PAGE_BYTES={raw!r} is not a whole number of bytes")
    return int(raw)


def _writer_lock(path: Path | None, *, wait: bool) -> contextlib.AbstractContextManager[None]:
    """The SQLite file's writer lock (``wait``: as long as it takes); a server needs none."""
    if path is None:
        return contextlib.nullcontext()
    return lock.hold(path, wait=10**9 if wait else 0.0)


@contextlib.contextmanager
def _client(
    key: str,
    base_url: str,
    retry: RetryPolicy,
    pacer: Pacer,
    env: Mapping[str, str],
    stats: CallStats | None = None,
) -> Iterator[FalClient]:
    with make_http_client(env) as http:
        yield FalClient(http, key, base_url=base_url, retry=retry, pacer=pacer, stats=stats)


def sync_mirror(
    db: str,
    opts: SyncOptions,
    *,
    models: Sequence[str] = (),
    all_models: bool = False,
    base_url: str = DEFAULT_BASE_URL,
    wait: bool = False,
    env: Mapping[str, str] = os.environ,
    progress: ProgressListener | None = None,
    metrics_file: Path | None = None,
) -> SyncReport:
    """Sync ``opts.targets`` into the mirror ``db`` (a SQLite file or a database URL).

    ``opts.targets`` are apps of the key's account, ``models`` hosted models (the model-API
    history; ``mirror.histories``); none of either: every target the database already has,
    each through its own history's operations. ``all_models``: also every model the key was
    billed for since the run's start (``/models/usage``, ADMIN scope; without it, a note).
    ``wait``: if another sync holds
    the database, wait for it instead of raising `mirror.errors.LockedError`. ``env``: where
    the key (``mirror.auth``), the retry knobs and the proxies and CA certificates
    (``mirror.netenv``) come from. ``metrics_file``: where to write the Prometheus metrics
    (``mirror.metrics``) once the run has ended, however it ended; a failure to write them
    after a failed run is logged, the run's error stands.
    """
    named = _Named(tuple(models), all_models)
    if metrics_file is None:
        return _sync_mirror(db, opts, named, base_url, wait, env, progress, None)
    check_path(metrics_file)
    calls = CallStats()
    try:
        report = _sync_mirror(db, opts, named, base_url, wait, env, progress, calls)
    except BaseException:
        try:
            write_for(db, metrics_file, calls)
        except Exception as e:  # the run's own error is the one to report
            log.info("could not write --metrics-file %s: %s", metrics_file, e)
        raise
    write_for(db, metrics_file, calls)
    return report


@dataclasses.dataclass(frozen=True)
class _Named:
    """The models a sync was named (``--model``), and whether it looks for the rest."""

    models: tuple[str, ...]
    all_models: bool


def _sync_mirror(
    db: str,
    opts: SyncOptions,
    named: _Named,
    base_url: str,
    wait: bool,
    env: Mapping[str, str],
    progress: ProgressListener | None,
    calls: CallStats | None,
) -> SyncReport:
    base_url = check_base_url(base_url)
    path = sqlite_path(db)
    named_any = opts.targets or named.models or named.all_models
    if not named_any and path is not None and not path.exists():
        raise UsageError(
            f"{db} does not exist yet: name what to sync with --endpoint ID or --model ID"
        )
    resolve({}, list(opts.targets), list(named.models))  # an id given as both: refused first
    key = load_key(env)
    retry = retry_policy_from_env(env)
    with _writer_lock(path, wait=wait):
        store = Store.open(db)
        try:
            stored = store.target_histories()
            run = resolve(
                stored, list(dict.fromkeys(opts.targets)), list(dict.fromkeys(named.models))
            )
            if not run.targets and not named.all_models:
                raise UsageError(
                    f"{display_db(db)} has no sync targets yet: name one with --endpoint ID "
                    "or --model ID"
                )
            n = opts.max_concurrency
            pacer = Pacer(n, initial=min(4, n), learn_rate=True, slow_start=True)
            with _client(key, base_url, retry, pacer, env, calls) as client:
                note = None
                if named.all_models:
                    note = _add_models(client, opts, stored, run)
                if not run.targets:  # --all-models found none, and nothing else is named
                    report = SyncReport(run_id=0, targets=[], started_at=utcnow(), outcome="ok")
                else:
                    run_opts = dataclasses.replace(
                        opts, targets=run.targets, histories=run.histories
                    )
                    report = sync(store, client, run_opts, progress=progress)
                if note is not None:
                    report.notes.insert(0, note)
                return report
        finally:
            store.close()


def _add_models(
    client: FalClient, opts: SyncOptions, stored: Mapping[str, str], run: Resolved
) -> str | None:
    """Add to ``run`` the models the key used since the run's start (``--all-models``); the
    note to print, if any."""
    now = utcnow()
    start = opts.since or now - opts.first_since
    apps = [t for t, h in stored.items() if h == "serverless"] + list(opts.targets)
    found = discover_models(client, start, now, serverless=apps)
    for m in found.models:
        if m not in run.targets:
            run.targets.append(m)
            run.histories[m] = "model"
    return found.note


def verify_mirror(
    db: str,
    endpoints: Sequence[str],
    *,
    repair: bool = False,
    base_url: str = DEFAULT_BASE_URL,
    wait: bool = False,
    env: Mapping[str, str] = os.environ,
    **options: Any,
) -> VerifyReport:
    """Verify (and with ``repair``, mend) the mirror ``db``'s targets ``endpoints``.

    No endpoints: every target of the database; one the database does not sync is refused.
    Only ``repair`` writes, and only it takes the writer lock (``wait`` as in
    `sync_mirror`); without it a SQLite mirror is opened as the readers open it.
    ``options``: the rest of ``mirror.verify.verify``'s keyword arguments.
    """
    base_url = check_base_url(base_url)
    path = sqlite_path(db)
    if path is not None and not path.exists():
        raise UsageError(f"{db} does not exist: verify compares an existing mirror")
    key = load_key(env)
    retry = retry_policy_from_env(env)
    with _writer_lock(path if repair else None, wait=wait):
        store = Store.open(db) if repair or path is None else Store.open_reader(db)
        try:
            known = store.targets()
            unknown = [e for e in endpoints if e not in known]
            if unknown:
                raise UsageError(
                    f"{', '.join(unknown)} {'is' if len(unknown) == 1 else 'are'} not a sync "
                    f"target of {display_db(db)} (targets: {', '.join(known) or 'none'})"
                )
            targets = list(dict.fromkeys(endpoints)) or known
            if not targets:
                raise UsageError(f"{display_db(db)} has no sync targets: nothing to verify")
            with _client(key, base_url, retry, Pacer(4), env) as client:
                return verify(store, client, targets=targets, repair=repair, **options)
        finally:
            store.close()


def media_dir_for(db: str, media_dir: Path | None) -> Path:
    """The media store of the mirror ``db``: ``media_dir``, or ``<db>.media`` beside a
    SQLite file (a server database has no "beside": `UsageError`)."""
    if media_dir is not None:
        return media_dir
    path = sqlite_path(db)
    if path is None:
        raise UsageError(
            f"{display_db(db)} is a database server: say where its files go with --media-dir"
        )
    return default_media_dir(path)


def _existing(db: str, what: str) -> None:
    path = sqlite_path(db)
    if path is not None and not path.exists():
        raise UsageError(f"{db} does not exist: {what}")


@contextlib.contextmanager
def _fetcher(
    files: MediaDir, opts: ArchiveOptions, policy: UrlPolicy, env: Mapping[str, str]
) -> Iterator[Fetcher]:
    """A key-less downloader into ``files``: the API's retry knobs, the run's limits."""
    with media_client(policy) as http:
        yield Fetcher(
            http,
            files,
            policy,
            retry=retry_policy_from_env(env),
            pacer=Pacer(opts.max_concurrency),
            limits=FetchLimits(max_file=opts.max_file, deadline=opts.deadline),
            budget=Budget(opts.max_bytes),
        )


def media_mirror(
    db: str,
    opts: ArchiveOptions,
    *,
    base_url: str = DEFAULT_BASE_URL,
    env: Mapping[str, str] = os.environ,
) -> MediaReport:
    """Archive the files of the mirror ``db``'s requests (``mirror.media.archive``).

    Needs no key: nothing is asked of the API. ``base_url`` only says whether the API is
    the simulator on loopback (then so may the media hosts be). Holds the media store's
    lock, not the database's writer lock: a sync may run meanwhile.
    """
    base_url = check_base_url(base_url)
    _existing(db, "mirror media archives the files of an existing mirror; sync first")
    root = media_dir_for(db, opts.media_dir)
    policy = UrlPolicy.build(opts.hosts, env, base_url=base_url)
    store = Store.open(db)
    if opts.dry_run:
        try:
            return dry_run(store.engine, policy, opts)
        finally:
            store.close()
    files = MediaDir.open(root)
    reader = reader_engine(db)
    try:
        with files.lock(), _fetcher(files, opts, policy, env) as fetcher:
            return archive(store.engine, reader, files, fetcher, policy, opts)
    finally:
        reader.dispose()
        store.close()


def verify_media_mirror(
    db: str,
    opts: ArchiveOptions,
    *,
    repair: bool = False,
    base_url: str = DEFAULT_BASE_URL,
    env: Mapping[str, str] = os.environ,
) -> MediaVerifyReport:
    """Re-hash the media store of the mirror ``db``; ``repair``: fetch what is missing or
    corrupt again (``mirror.media.verify``)."""
    base_url = check_base_url(base_url)
    _existing(db, "verify --media checks an existing mirror's files")
    files = MediaDir.open(media_dir_for(db, opts.media_dir), create=repair)
    policy = UrlPolicy.build(opts.hosts, env, base_url=base_url)
    store = Store.open(db)
    try:
        if not repair:
            return verify_media(store.engine, files, None, repair=False)
        with files.lock(), _fetcher(files, opts, policy, env) as fetcher:
            return verify_media(store.engine, files, fetcher, repair=True)
    finally:
        store.close()
