"""A cap on glibc's malloc arenas, set once when the command starts.

glibc gives threads that allocate at the same time arenas of their own (up to eight per
core), and freed memory stays in each. With sixteen walkers decoding pages, a 1M-request
backfill peaked at 168 MiB instead of ~120 (``bench/memory_bench.py``); two arenas keep it
at what four walkers took, at no measurable cost in speed. Elsewhere than glibc (musl,
macOS) there is no ``mallopt`` and nothing is done.
"""

from __future__ import annotations

import ctypes
import sys

#: ``M_ARENA_MAX`` in glibc's malloc.h
M_ARENA_MAX = -8
ARENAS = 2


def cap(arenas: int = ARENAS) -> bool:
    """Whether the cap was set (False where the C library has no ``mallopt``)."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    return bool(mallopt(M_ARENA_MAX, arenas))
