"""Give memory freed by finished runs back to the operating system (glibc only; elsewhere a no-op).

Why: every run executes in its own thread and event loop (medic serve and medic worker). glibc gives
each such thread its own malloc arena (up to 8 per core) and keeps what a finished run freed there
for later, so a long-lived medic serve's RSS climbed with the number of runs it had executed even
though the number of live Python objects stayed flat (measured: 72 runs, allocated blocks within
±1 %, RSS 228 → 282 MB; `malloc_trim` gave back 35 MB in 3 ms). Two calls fix that:

- `limit_malloc_arenas()` once at start-up, before run threads exist: threads share two arenas
  (`mallopt(M_ARENA_MAX, 2)`, what MALLOC_ARENA_MAX=2 does — set here so no launcher has to know);
- `release_after_run()` when a run's thread ends: `malloc_trim(0)` returns the free pages of every
  arena (a few ms, off the event loop; skipped while another thread is already trimming).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import threading
from functools import cache

__all__ = ["MALLOC_ARENAS", "limit_malloc_arenas", "release_after_run", "release_free_memory"]

log = logging.getLogger("medic.core.process_memory")
MALLOC_ARENAS = 2
_M_ARENA_MAX = -8  # glibc's malloc.h
_trimming = threading.Lock()


@cache
def _glibc() -> ctypes.CDLL | None:
    """The C library when it is glibc (has malloc_trim and mallopt), else None (musl, macOS)."""
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        libc = ctypes.CDLL(name)
    except OSError:
        return None
    if not all(hasattr(libc, symbol) for symbol in ("malloc_trim", "mallopt", "gnu_get_libc_version")):
        return None
    return libc


def limit_malloc_arenas(arenas: int = MALLOC_ARENAS) -> bool:
    """Cap glibc's malloc arenas for threads started from now on; True if glibc took it.
    An operator's own MALLOC_ARENA_MAX wins: then this changes nothing."""
    libc = _glibc()
    if libc is None or os.environ.get("MALLOC_ARENA_MAX"):
        return False
    accepted = bool(libc.mallopt(_M_ARENA_MAX, arenas))
    if not accepted:
        log.warning("glibc refused mallopt(M_ARENA_MAX, %d): run threads keep their own malloc arenas", arenas)
    return accepted


def release_free_memory() -> bool:
    """Return every arena's free pages to the OS now; True if glibc released any."""
    libc = _glibc()
    return libc is not None and bool(libc.malloc_trim(0))


def release_after_run() -> None:
    """Called as a run's thread ends: trim, unless another thread is trimming right now (its trim covers this run)."""
    if not _trimming.acquire(blocking=False):
        return
    try:
        release_free_memory()
    finally:
        _trimming.release()
