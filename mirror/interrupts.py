"""Interrupts (Ctrl-C, SIGTERM) that wait for a short critical section to end.

The CLI turns SIGINT and SIGTERM into one ``KeyboardInterrupt`` (``mirror.cli.main``,
``mirror.cliutil.sigterm_as_interrupt``). Raised in the middle of recording a run in
``sync_runs`` it would roll that record back and leave the run logged as ``running``; so the
recording is wrapped in :func:`deferred`, and an interrupt arriving inside it is raised the
moment the section ends, once its commit is done.

Signal handlers run in the main thread only, between bytecodes: the state here needs no lock.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator

_depth = 0
_pending = False


def interrupt() -> None:
    """Raise ``KeyboardInterrupt`` now, or at the end of the current deferred section."""
    global _pending
    if _depth and threading.current_thread() is threading.main_thread():
        _pending = True
        return
    raise KeyboardInterrupt


def pending() -> bool:
    """Whether an interrupt arrived inside the deferred section being run."""
    return _pending


@contextlib.contextmanager
def deferred() -> Iterator[None]:
    """Run the body whole: an interrupt arriving meanwhile is raised when it ends.

    Only for short sections (one small transaction): a deferred Ctrl-C waits for them. If
    the body raises while an interrupt is pending, the interrupt takes its place (the CLI's
    handler fires once, so it must not be lost).
    """
    global _depth, _pending
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    _depth += 1
    try:
        yield
    finally:
        _depth -= 1
        if _depth == 0 and _pending:
            _pending = False
            raise KeyboardInterrupt
