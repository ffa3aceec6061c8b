"""Give memory freed by closed sessions back to the operating system.

OpenSSL allocates a connection's buffers with malloc; after thousands of sessions close
(a reconnect storm, abandoned handshakes), glibc keeps the freed pages in its arenas, so
RSS stays at the storm's peak although nothing is live. ``malloc_trim(0)`` returns those
pages. Endpoints call ``release_freed_memory`` after sweeps that closed sessions, at most
every few seconds, because trimming walks the heap.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import time
from collections.abc import Callable

_libc: ctypes.CDLL | None
try:
    _libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    _trim: Callable[[int], int] | None = _libc.malloc_trim
except (OSError, AttributeError):  # not glibc: nothing to do
    _libc, _trim = None, None

_MIN_INTERVAL = 5.0
_last_trim = 0.0


def release_freed_memory(
    *, force: bool = False, clock: Callable[[], float] = time.monotonic
) -> bool:
    """Trim the C heap if it has not been trimmed in the last few seconds."""
    global _last_trim
    now = clock()
    if _trim is None or (not force and now - _last_trim < _MIN_INTERVAL):
        return False
    _last_trim = now
    _trim(0)
    return True
