"""The `mirror` command. Click only: parse, open, call one library function, print.

Exit codes: 0 success, 1 failure (API, key rejected, bad data, storage), 2 usage or
configuration error, 75 another sync holds the database (EX_TEMPFAIL: try later), 130
interrupted. Every known failure is one line on stderr; ``MIRROR_DEBUG=1`` shows tracebacks.

What the program prints of an error, a note or a log record passes ``mirror.redact``: the
API key and its halves are redacted, and control characters (a server's text may carry
line breaks or terminal escapes) are shown as escapes, on one line of bounded length.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import sys
import threading
import traceback
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, NoReturn

import click

from mirror import __version__
from mirror.errors import ConfigError, MirrorError
from mirror.redact import MAX_MESSAGE, RedactFilter, printable, redact
from mirror.store import display_db
from mirror.timeparse import parse_duration, parse_when, utcnow

EXIT_USAGE = 2
EXIT_INTERRUPTED = 130


def _debug() -> bool:
    return os.environ.get("MIRROR_DEBUG", "") not in ("", "0")


def shown(text: object) -> str:
    """Text from outside (an error, a note) as printed: no secret, one bounded line."""
    return printable(redact(str(text)), MAX_MESSAGE)


def fail(err: MirrorError) -> NoReturn:
    if _debug():
        raise err
    hint = err.hint
    click.echo(f"mirror: {err.kind}: {shown(err)}{f'; {hint}' if hint else ''}", err=True)
    sys.exit(err.exit_code)


class MirrorGroup(click.Group):
    """Turns library errors into one line and an exit code, never a traceback."""

    def main(self, *args: Any, **kwargs: Any) -> Any:
        kwargs["standalone_mode"] = False
        try:
            rv = super().main(*args, **kwargs)
        except click.UsageError as e:
            if _debug():
                raise
            where = e.ctx.command_path if e.ctx else "mirror"
            click.echo(f"mirror: usage: {e.format_message()} (see: {where} --help)", err=True)
            sys.exit(EXIT_USAGE)
        except click.ClickException as e:
            click.echo(f"mirror: {e.format_message()}", err=True)
            sys.exit(e.exit_code)
        except click.Abort:
            click.echo("mirror: aborted", err=True)
            sys.exit(1)
        if isinstance(rv, int) and not isinstance(rv, bool):
            sys.exit(rv)
        return rv

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except MirrorError as e:
            fail(e)
        except KeyboardInterrupt:
            if _debug():  # the traceback, then the same line and exit code as always
                traceback.print_exc()
            click.echo("mirror: interrupted; everything committed so far is kept", err=True)
            if threading.active_count() > 1:
                # a worker may sit in a slow HTTP read; what matters is committed already
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(EXIT_INTERRUPTED)
            sys.exit(EXIT_INTERRUPTED)
        except (click.exceptions.Exit, click.ClickException, click.Abort, SystemExit):
            raise
        except Exception as e:
            storage = _storage_error(e)
            if storage is not None:
                fail(storage)
            if _debug():
                raise
            click.echo(
                f"mirror: internal error: {type(e).__name__}: {shown(e)} "
                "(run with MIRROR_DEBUG=1 for details, and please report it)",
                err=True,
            )
            sys.exit(1)
        finally:
            if _as_process:
                # The command is over (its outcome decided and printed, or being printed): a
                # signal from here to the exit could only cut the exit short, or turn a
                # finished command into an "interrupted" one.
                signal.signal(signal.SIGTERM, signal.SIG_IGN)
                signal.signal(signal.SIGINT, signal.SIG_IGN)


def _storage_error(e: BaseException) -> MirrorError | None:
    """Local storage failures (disk full, file-size limit, read-only, corrupt) that escaped
    the library's own translation, as one StoreError line."""
    import errno
    import sqlite3

    import sqlalchemy as sa

    from mirror.errors import StoreError
    from mirror.store import describe_db_error

    if isinstance(e, sa.exc.DBAPIError):
        return StoreError(describe_db_error(e.orig, "the mirror database"))
    if isinstance(e, sqlite3.Error):
        return StoreError(describe_db_error(e, "the mirror database"))
    if isinstance(e, OSError) and e.errno in (
        errno.ENOSPC,
        errno.EDQUOT,
        errno.EFBIG,
        errno.EROFS,
        errno.EIO,
        errno.EACCES,
    ):
        what = (
            "disk full" if e.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG) else "cannot write"
        )
        return StoreError(
            f"the mirror database: {what} ({e.strerror}); free space or fix permissions and run again, nothing committed is lost"
        )
    return None


def _when(ctx: click.Context, param: click.Parameter, value: str | None) -> datetime | None:
    if value is None:
        return None
    try:
        return parse_when(value, ctx.meta.setdefault("mirror.now", utcnow()))
    except ValueError as e:
        raise click.BadParameter(str(e)) from None


def _duration(ctx: click.Context, param: click.Parameter, value: str | None) -> timedelta | None:
    if value is None:
        return None
    try:
        return parse_duration(value)
    except ValueError as e:
        raise click.BadParameter(str(e)) from None


def _setup_logging(verbose: int) -> None:
    level = logging.WARNING if verbose == 0 else logging.DEBUG
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(name)s %(levelname)s %(message)s"))
    handler.addFilter(RedactFilter())  # no key, no control character in any log line
    root = logging.getLogger("mirror")
    root.handlers[:] = [handler]
    root.setLevel(level)
    root.propagate = False
    # httpx logs every request at INFO; ours (mirror.api) already do, without headers
    logging.getLogger("httpx").setLevel(logging.WARNING)
    # SQLAlchemy's pool logs (with a traceback) a connection it failed to close, e.g. when
    # Ctrl-C lands right then; the user gets our one line instead
    sa_log = logging.getLogger("sqlalchemy")
    sa_log.handlers[:] = [logging.NullHandler()]
    sa_log.propagate = False
    logging.getLogger("httpcore").setLevel(logging.WARNING)


db_option = click.option(
    "--db",
    envvar="MIRROR_DB",
    default="mirror.db",
    show_default=True,
    help="The mirror: a SQLite file, or postgresql+psycopg://USER@HOST/DBNAME. Env: MIRROR_DB.",
)
verbose_option = click.option(
    "-v", "--verbose", count=True, help="Log each API request (never the key)."
)


@click.group(cls=MirrorGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="mirror")
def cli() -> None:
    """Keep a local, queryable mirror of your fal.ai request history."""
    os.umask(0o077)  # every file mirror creates is private to the user


# --------------------------------------------------------------------------- sync


@contextlib.contextmanager
def _sigterm_as_interrupt(stop: Callable[[], None] | None = None) -> Iterator[None]:
    """cron and systemd stop jobs with SIGTERM: treat it like Ctrl-C (and both only once).

    ``stop``: called first, for work that a Python exception cannot reach while it runs (a
    SQLite statement: `mirror.readonly.ReadOnlyDatabase.interrupt`).
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    from mirror import interrupts

    fired: list[int] = []

    def handler(signum: int, frame: Any) -> None:
        # once: a second Ctrl-C must not break the cleanup that records the run's outcome;
        # while the run's record is being committed, raised as soon as that is done
        if not fired:
            fired.append(signum)
            if stop is not None:
                stop()
            interrupts.interrupt()

    old_term = signal.signal(signal.SIGTERM, handler)
    old_int = signal.signal(signal.SIGINT, handler)
    watcher = _SignalWatcher(stop) if stop is not None else None
    try:
        yield
    finally:
        if watcher is not None:
            watcher.close()
        signal.signal(signal.SIGTERM, old_term)
        signal.signal(signal.SIGINT, old_int)


class _SignalWatcher:
    """Calls ``stop`` from a thread of its own the moment SIGINT or SIGTERM arrives.

    Python runs signal handlers in the main thread, between bytecodes: not while the main
    thread is inside one long C call (a SQLite statement whose steps are long function calls
    reaches SQLite's progress handler, where Python code runs, only every few seconds). The
    C-level handler still writes the signal's number to the wakeup fd at once, and this
    thread reads it. The handler proper runs as soon as the main thread is back in Python.
    """

    def __init__(self, stop: Callable[[], None]) -> None:
        self._r, self._w = os.pipe()
        os.set_blocking(self._w, False)
        self._old_fd = signal.set_wakeup_fd(self._w, warn_on_full_buffer=False)
        self._thread = threading.Thread(
            target=self._watch, args=(stop,), name="mirror-signal-watcher", daemon=True
        )
        self._thread.start()

    def _watch(self, stop: Callable[[], None]) -> None:
        while True:
            data = os.read(self._r, 64)
            if not data or 0 in data:  # 0: close() says the command is over
                return
            if signal.SIGINT in data or signal.SIGTERM in data:
                stop()

    def close(self) -> None:
        signal.set_wakeup_fd(self._old_fd)
        os.write(self._w, b"\0")
        self._thread.join()
        os.close(self._r)
        os.close(self._w)


def _env_float(name: str, default: float) -> float:
    raw = os.environ.get(name)
    if raw is None:
        return default
    try:
        v = float(raw)
    except ValueError:
        raise ConfigError(f"{name}={raw!r} is not a number") from None
    if v < 0:
        raise ConfigError(f"{name} must not be negative")
    return v


def retry_policy_from_env() -> Any:
    """Tuning knobs for impatient networks and for tests (documented in the README)."""
    from mirror.api import RetryPolicy

    d = RetryPolicy()
    return RetryPolicy(
        attempts=max(1, int(_env_float("MIRROR_RETRY_ATTEMPTS", d.attempts))),
        base=_env_float("MIRROR_RETRY_BASE", d.base),
        cap=_env_float("MIRROR_RETRY_CAP", d.cap),
        deadline=_env_float("MIRROR_REQUEST_DEADLINE", d.deadline),
        read_timeout=min(d.read_timeout, _env_float("MIRROR_REQUEST_DEADLINE", d.read_timeout)),
    )


class _Progress:
    """A one-line progress display on a terminal; nothing at all under cron."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self.shown = False

    def __call__(self, report: Any) -> None:
        if not self.enabled:
            return
        self.shown = True
        click.echo(
            f"\rsyncing: {report.windows_done}/{report.windows_planned} windows, "
            f"{report.inserted + report.updated} rows written ",
            err=True,
            nl=False,
        )

    def close(self) -> None:
        if self.shown:
            click.echo("\r\033[K", err=True, nl=False)


@cli.command()
@db_option
@click.option("-e", "--endpoint", "endpoints", multiple=True, metavar="ID",
              help="Endpoint id to sync (repeatable); an app id also covers its routes. "
              "Default: every target already in the database.")  # fmt: skip
@click.option("--since", callback=_when, metavar="WHEN",
              help="Start of history to cover: 2026-11-01, 2026-11-01T12:00Z, or 90m/36h/7d ago. "
              "Default the first time: 24h. Stored with each target: every later run covers "
              "it until done; a later --since never shrinks it.")  # fmt: skip
@click.option("--narrow", is_flag=True,
              help="With --since: move the targets' stored start forward to it, on purpose "
              "(rows before it stay; that stretch is no longer walked or shown as a gap).")  # fmt: skip
@click.option(
    "--until", callback=_when, metavar="WHEN", help="End of history to cover (default: now)."
)
@click.option("--lookback", callback=_duration, default="2h", show_default=True, metavar="DURATION",
              help="Re-walk this much before the last completed point, to catch late changes.")  # fmt: skip
@click.option("--no-payloads", is_flag=True, help="Do not fetch json_input/json_output.")
@click.option("--no-billing", is_flag=True, help="Do not fetch billable_units.")
@click.option("--base-url", envvar="MIRROR_BASE_URL", default="https://api.fal.ai/v1", show_default=True,
              help="API base URL. Env: MIRROR_BASE_URL.")  # fmt: skip
@click.option("--max-concurrency", type=click.IntRange(1, 64), default=4, show_default=True,
              help="At most this many pages fetched at once (fewer on 429s, slow answers, "
                   "or while the database writer is behind).")  # fmt: skip
@click.option("--recheck/--no-recheck", default=True, show_default=True,
              help="Re-check older history on a schedule: the last day hourly, the last week daily "
              "(analytics first, then only hours whose counts differ).")  # fmt: skip
@click.option(
    "--wait",
    is_flag=True,
    help="If another sync holds the database, wait for it instead of exiting 75.",
)
@click.option("-q", "--quiet", is_flag=True, help="Print nothing on success.")
@verbose_option
def sync(
    db: str,
    endpoints: tuple[str, ...],
    since: datetime | None,
    narrow: bool,
    until: datetime | None,
    lookback: timedelta,
    no_payloads: bool,
    no_billing: bool,
    base_url: str,
    max_concurrency: int,
    recheck: bool,
    wait: bool,
    quiet: bool,
    verbose: int,
) -> None:
    """Fetch new and changed requests into the mirror.

    \b
    Exit codes: 0 ok, 1 failed (API, key, data, storage), 2 usage,
    75 another sync is running (try later).
    """
    from mirror import lock
    from mirror.api import FalClient, check_base_url, make_http_client
    from mirror.auth import load_key
    from mirror.pacing import Pacer
    from mirror.store import Store, sqlite_path
    from mirror.sync import SyncOptions
    from mirror.sync import sync as run_sync

    _setup_logging(verbose)
    if since and until and until <= since:
        raise click.UsageError(
            f"--until ({until:%Y-%m-%dT%H:%M:%SZ}) must be after --since ({since:%Y-%m-%dT%H:%M:%SZ})"
        )
    now = utcnow()
    if since and since >= now:
        raise click.UsageError("--since is in the future")
    if narrow and not since:
        raise click.UsageError("--narrow moves the stored start to --since: give --since too")
    for e in endpoints:
        if not e.strip() or len(e) > 256 or any(c.isspace() for c in e):
            raise click.BadParameter(f"{e!r} is not an endpoint id", param_hint="--endpoint")
    base_url = check_base_url(base_url)
    path = sqlite_path(db)
    if not endpoints and path is not None and not path.exists():
        raise click.UsageError(f"{db} does not exist yet: name what to sync with --endpoint ID")
    key = load_key(os.environ)
    retry = retry_policy_from_env()

    holder = (
        lock.hold(path, wait=10**9 if wait else 0.0)
        if path is not None
        else contextlib.nullcontext()
    )
    with _sigterm_as_interrupt(), holder:
        store = Store.open(db)
        try:
            targets = list(dict.fromkeys(endpoints)) or store.targets()
            if not targets:
                raise click.UsageError(
                    f"{display_db(db)} has no sync targets yet: name one with --endpoint ID"
                )
            opts = SyncOptions(
                targets=targets,
                since=since,
                narrow=narrow,
                until=until,
                lookback=lookback,
                payloads=not no_payloads,
                billing=not no_billing,
                max_concurrency=max_concurrency,
                recheck=recheck,
            )
            progress = _Progress(enabled=sys.stderr.isatty() and not verbose and not quiet)
            with make_http_client() as http:
                client = FalClient(
                    http,
                    key,
                    base_url=base_url,
                    retry=retry,
                    pacer=Pacer(max_concurrency, initial=min(4, max_concurrency), learn_rate=True),
                )
                try:
                    report = run_sync(store, client, opts, progress=progress)
                finally:
                    progress.close()
        finally:
            store.close()
    for note in report.notes:
        click.echo(f"mirror: note: {shown(note)}", err=True)
    if not quiet:
        click.echo(report.summary())


# --------------------------------------------------------------------------- db


@cli.group()
def db() -> None:
    """Manage the database schema."""


@db.command("upgrade")
@db_option
def db_upgrade(db: str) -> None:
    """Apply pending migrations (every command does this on its own too)."""
    from mirror.store import make_engine, schema_state, upgrade

    engine = make_engine(db)
    try:
        applied = upgrade(engine, db)
        rev, _ = schema_state(engine)
    finally:
        engine.dispose()
    click.echo(
        f"{display_db(db)}: {'upgraded to' if applied else 'already at'} schema revision {rev}"
    )


# --------------------------------------------------------------------------- copy


@cli.command("copy")
@click.option("--from", "source", required=True, metavar="PATH_OR_URL",
              help="The mirror to copy: a SQLite file or a database URL (only read).")  # fmt: skip
@click.option("--to", "dest", required=True, metavar="PATH_OR_URL",
              help="Where to: a new SQLite file or an empty PostgreSQL database (migrated first).")  # fmt: skip
@click.option("-q", "--quiet", is_flag=True, help="Print nothing on success.")
def copy_cmd(source: str, dest: str, quiet: bool) -> None:
    """Copy a whole mirror (requests and sync state) into another, empty database.

    \b
    Syncs then carry on from where the source left off: nothing is downloaded again.
    Works both ways between SQLite and PostgreSQL, e.g.
      mirror copy --from mirror.db --to postgresql://USER@HOST/DBNAME
    The destination must be empty; the source is never written.

    \b
    Exit codes: 0 ok, 1 failed (storage), 2 refused (missing source, bad URL,
    non-empty destination), 75 a sync is writing the SQLite source (try later).
    """
    from mirror.copy import copy_mirror

    with _sigterm_as_interrupt():
        report = copy_mirror(source, dest)
    if not quiet:
        click.echo(report.summary())


# --------------------------------------------------------------------------- simulator


@cli.command("fake-api")
@click.option("--port", type=click.IntRange(0, 65535), default=8765, show_default=True)
@click.option("--seed", type=int, default=1, show_default=True)
def fake_api(port: int, seed: int) -> None:
    """Serve the built-in simulated fal API on 127.0.0.1, to try mirror without a key."""
    from mirror.demo import TARGETS
    from mirror.simulator import DEFAULT_KEY, SimulatedAPI, demo_world

    api = SimulatedAPI(demo_world(utcnow(), seed=seed), port=port)
    api.start()
    endpoints = " ".join(f"--endpoint {e}" for e in TARGETS)
    click.echo(f"simulated fal API at {api.base_url} (Ctrl-C to stop). Try:")
    click.echo(f"  export MIRROR_BASE_URL={api.base_url} FAL_KEY={DEFAULT_KEY}")
    click.echo(f"  mirror sync --db sim.db --since 3d {endpoints}")
    api.serve_forever()


@cli.command()
@click.option("--db", default="demo.db", show_default=True, help="Where to write the demo mirror.")
def demo(db: str) -> None:
    """Sync a few days of simulated history into demo.db: no key, no network."""
    from mirror.demo import run_demo

    run_demo(Path(db), echo=click.echo)


def _register_commands() -> None:
    """Command families that live in their own modules (each keeps click out of its library)."""
    from mirror.commands_query import register as register_query
    from mirror.commands_verify import register as register_verify

    register_query(cli)
    register_verify(cli)


_register_commands()


#: True when running as the ``mirror`` process (``main``), not inside a caller (tests, scripts)
_as_process = False


def main() -> None:
    global _as_process
    _as_process = True
    # `mirror query ... | head` should stop quietly, like any Unix tool
    signal.signal(signal.SIGPIPE, signal.SIG_DFL)
    # Ctrl-C means stop, whatever this process inherited: a shell starts background jobs
    # (`cmd &`, nohup) with SIGINT ignored, and Python then never raises KeyboardInterrupt
    signal.signal(signal.SIGINT, signal.default_int_handler)
    # cron and systemd stop jobs with SIGTERM: Ctrl-C's meaning (exit 130, one line) for the
    # whole command, not only while it syncs (where _sigterm_as_interrupt defers it further)
    from mirror import interrupts

    signal.signal(signal.SIGTERM, lambda _signum, _frame: interrupts.interrupt())
    cli(prog_name="mirror")
