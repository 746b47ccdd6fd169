"""What every command of the ``mirror`` CLI shares: the group that turns errors into one line
and an exit code, the shared options and their callbacks, logging, signals.

The command modules (``mirror.cli``, ``mirror.commands_query``, ``mirror.commands_verify``)
import from here, and ``mirror.cli`` imports them: nothing here imports a command module.

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
from collections.abc import Callable, Iterable, Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, NoReturn, TypeVar

import click

from mirror import errors, interrupts, output
from mirror.api import DEFAULT_BASE_URL
from mirror.errors import MirrorError
from mirror.redact import MAX_MESSAGE, RedactFilter, printable, redact
from mirror.timeparse import parse_duration, parse_when, utcnow

EXIT_USAGE = 2
EXIT_INTERRUPTED = 130
#: the longest endpoint id a command accepts (fal's own are far shorter)
MAX_ENDPOINT_ID = 256

T = TypeVar("T")
F = TypeVar("F", bound=Callable[..., Any])


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


def print_notes(notes: Iterable[str]) -> None:
    """A run's notes (what a user should know of it), one line each on stderr."""
    for note in notes:
        click.echo(f"mirror: note: {shown(note)}", err=True)


class MirrorGroup(click.Group):
    """Turns library errors into one line and an exit code, never a traceback."""

    #: True when running as the ``mirror`` process (``mirror.cli.main``), not inside a
    #: caller (tests, scripts)
    as_process = False

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
        except click.Abort as e:
            if isinstance(e.__cause__, KeyboardInterrupt):
                # Ctrl-C or SIGTERM while click still parsed the options: the same line and
                # exit code as during the command (click turns it into Abort there)
                click.echo("mirror: interrupted; everything committed so far is kept", err=True)
                sys.exit(EXIT_INTERRUPTED)
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
            if self.as_process:
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

    from mirror.db import describe_db_error
    from mirror.errors import StoreError

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


@contextlib.contextmanager
def usage_errors() -> Iterator[None]:
    """The library's `mirror.errors.UsageError` (flags that do not fit the database) as
    click's own: the same one line, pointing to the command's --help, exit 2."""
    try:
        yield
    except errors.UsageError as e:
        raise click.UsageError(str(e)) from None


# --------------------------------------------------------------------------- flag values


def _parsed(value: str | None, parse: Callable[[str], T]) -> T | None:
    """A flag's ``value`` through ``parse`` (None when the flag is not given); its
    ``ValueError`` is click's one-line error about the flag."""
    if value is None:
        return None
    try:
        return parse(value)
    except ValueError as e:
        raise click.BadParameter(str(e)) from None


def when_callback(ctx: click.Context, param: click.Parameter, value: str | None) -> datetime | None:
    """``--since`` / ``--until``: a time or an age (``mirror.timeparse.parse_when``); every
    age in one command counts back from the same moment."""
    return _parsed(value, lambda v: parse_when(v, ctx.meta.setdefault("mirror.now", utcnow())))


def duration_callback(
    ctx: click.Context, param: click.Parameter, value: str | None
) -> timedelta | None:
    return _parsed(value, parse_duration)


_SIZE_UNITS = {"": 1, "b": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}


def parse_size(text: str) -> int:
    """``500M``, ``2G``, ``100k``, ``1.5g``, ``123`` (bytes); binary units (``M`` is MiB),
    an optional ``iB``/``B`` after the letter. Negative or malformed: ``ValueError``."""
    t = text.strip().lower().removesuffix("ib").removesuffix("b") if text.strip() else ""
    number, unit = t, ""
    if t and t[-1] in _SIZE_UNITS:
        number, unit = t[:-1], t[-1]
    try:
        value = float(number)
    except ValueError:
        raise ValueError(f"{text!r} is not a size (e.g. 500M, 2G, 100k, 4096)") from None
    if not value >= 0 or value == float("inf"):
        raise ValueError(f"{text!r} is not a size (e.g. 500M, 2G, 100k, 4096)")
    return int(value * _SIZE_UNITS[unit])


def size_callback(ctx: click.Context, param: click.Parameter, value: str | None) -> int | None:
    """A size flag (`parse_size`)."""
    return _parsed(value, parse_size)


def validate_endpoint_id(value: str) -> str:
    """``value`` if it can be an endpoint (or app) id: not blank, no whitespace, at most
    `MAX_ENDPOINT_ID` characters; else ``BadParameter`` for ``--endpoint``."""
    if not value.strip() or len(value) > MAX_ENDPOINT_ID or any(c.isspace() for c in value):
        raise click.BadParameter(f"{value!r} is not an endpoint id", param_hint="--endpoint")
    return value


def endpoints_callback(
    ctx: click.Context, param: click.Parameter, value: tuple[str, ...]
) -> tuple[str, ...]:
    """``-e/--endpoint`` (repeatable): each value passes `validate_endpoint_id`."""
    return tuple(validate_endpoint_id(v) for v in value)


def check_since_until(since: datetime | None, until: datetime | None) -> None:
    if since and until and until <= since:
        raise click.UsageError(
            f"--until ({until:%Y-%m-%dT%H:%M:%SZ}) must be after --since ({since:%Y-%m-%dT%H:%M:%SZ})"
        )


def split_values(values: Iterable[str]) -> list[str]:
    """``a,b`` and repeated flags alike: ``--by endpoint,day`` == ``--by endpoint --by day``."""
    return [part.strip() for v in values for part in v.split(",") if part.strip()]


def checked_groups(by: Iterable[str], check: Callable[[list[str]], Iterable[str]]) -> list[str]:
    """``--by``'s groups, each value split at commas, passed through ``check``; its
    `mirror.errors.ConfigError` is click's one-line error about ``--by``."""
    try:
        return list(check(split_values(by)))
    except errors.ConfigError as e:
        raise click.BadParameter(str(e), param_hint="--by") from None


# --------------------------------------------------------------------------- shared options


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
base_url_option = click.option(
    "--base-url", envvar="MIRROR_BASE_URL", default=DEFAULT_BASE_URL, show_default=True,
    help="API base URL. Env: MIRROR_BASE_URL.",
)  # fmt: skip
metrics_file_option = click.option(
    "--metrics-file", type=click.Path(dir_okay=False, path_type=Path), metavar="PATH",
    help="Also write Prometheus metrics here (for node-exporter's textfile collector: "
    "a *.prom file in its directory), atomically.",
)  # fmt: skip
format_option = click.option(
    "-f", "--format", "fmt", type=click.Choice(output.FORMATS), default="table",
    show_default=True, help="table for people; json (one array), jsonl (one object a line) "
    "or csv (with a header row) for programs.",
)  # fmt: skip


def endpoints_option(help: str, *more_names: str) -> Callable[[F], F]:
    """``-e/--endpoint ID`` (repeatable; each value passes `validate_endpoint_id`), with the
    command's own help and any ``more_names`` for the flag."""
    return click.option("-e", "--endpoint", *more_names, "endpoints", multiple=True,
                        metavar="ID", callback=endpoints_callback, help=help)  # fmt: skip


def when_option(flag: str, help: str) -> Callable[[F], F]:
    """``--since WHEN`` or ``--until WHEN`` (`when_callback`), with the command's own help."""
    return click.option(flag, callback=when_callback, metavar="WHEN", help=help)


def by_option(help: str) -> Callable[[F], F]:
    """``-b/--by GROUP[,GROUP…]`` (repeatable); `checked_groups` reads it."""
    return click.option("-b", "--by", "by", multiple=True, metavar="GROUP[,GROUP…]", help=help)


# --------------------------------------------------------------------------- logging


def setup_logging(verbose: int) -> None:
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


# --------------------------------------------------------------------------- signals


@contextlib.contextmanager
def sigterm_as_interrupt(stop: Callable[[], None] | None = None) -> Iterator[None]:
    """cron and systemd stop jobs with SIGTERM: treat it like Ctrl-C (and both only once).

    ``stop``: called first, for work that a Python exception cannot reach while it runs (a
    SQLite statement: `mirror.readonly.ReadOnlyDatabase.interrupt`).
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return

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
    watcher = SignalWatcher(stop) if stop is not None else None
    try:
        yield
    finally:
        if watcher is not None:
            watcher.close()
        signal.signal(signal.SIGTERM, old_term)
        signal.signal(signal.SIGINT, old_int)


class SignalWatcher:
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
