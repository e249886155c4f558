"""Tune glibc's allocator for a server that moves many 0.5–2 MB buffers (files read, parts received).

By default glibc serves each such buffer with a fresh ``mmap`` (or trims the arena it came from), so
every request pays page faults and page zeroing for memory it just gave back: about 15 % of the CPU of
a whole-study retrieval in ``bench/``. Buffers up to MMAP_THRESHOLD come from the heap instead and up
to TRIM_THRESHOLD of free memory stays mapped per arena; two arenas are enough for a process whose
Python threads allocate under one GIL, and bound what is kept. No-op where glibc is not the C library.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging

log = logging.getLogger(__name__)

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD, M_ARENA_MAX = -1, -3, -8
MMAP_THRESHOLD = 8 << 20
TRIM_THRESHOLD = 32 << 20
ARENA_MAX = 2


def tune() -> bool:
    """Apply the settings above to this process; True if the C library took them."""
    name = ctypes.util.find_library("c")
    if name is None:
        return False
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    done = all(mallopt(option, value) == 1 for option, value in (
        (M_ARENA_MAX, ARENA_MAX), (M_MMAP_THRESHOLD, MMAP_THRESHOLD), (M_TRIM_THRESHOLD, TRIM_THRESHOLD)))
    if not done:
        log.debug("mallopt refused the allocator settings; keeping the defaults")
    return done
