"""Keep freed memory in the process: glibc's allocator settings for training loops.

A training step allocates and frees the same activation-sized buffers every step. glibc
serves blocks above its ``mmap`` threshold (dynamic, from 128 KiB) with fresh ``mmap``
pages and gives them back on ``free``, and trims the heap top above its trim threshold, so
every step touches new pages: each first touch is a page fault and a page zeroed by the
kernel. The deep CNN took 1,000-1,800 minor page faults per step (64 x 8 x 28 x 28
activations are 1.6 MB each) and the sigmoid MLP's test-set pass 2,900; with the settings
below, none. What that buys in time depends on what shares the machine: about 7% of
a deep-CNN step with a convolution loop busy on the other core, within the noise on an
idle machine (measured 2026-12-06, recorded in d1bfe46). PyTorch's CPU
tuning guide recommends jemalloc or tcmalloc for this; the three ``mallopt`` settings
below give the same effect with glibc alone: blocks up to 128 MiB come from the heap,
freed memory stays in the heap up to 512 MiB, and the heap grows 64 MiB at a time.
Numbers do not change, only where memory comes from.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys

__all__ = ["MALLOC_SETTINGS", "keep_freed_memory", "tuned"]

# glibc's mallopt parameter numbers (malloc.h) and the values set.
_M_TRIM_THRESHOLD, _M_TOP_PAD, _M_MMAP_THRESHOLD = -1, -2, -3
#: ``mallopt`` settings applied by :func:`keep_freed_memory`, in bytes.
MALLOC_SETTINGS: dict[str, int] = {
    "M_MMAP_THRESHOLD": 128 << 20,
    "M_TRIM_THRESHOLD": 512 << 20,
    "M_TOP_PAD": 64 << 20,
}
_PARAMS = {
    "M_MMAP_THRESHOLD": _M_MMAP_THRESHOLD,
    "M_TRIM_THRESHOLD": _M_TRIM_THRESHOLD,
    "M_TOP_PAD": _M_TOP_PAD,
}
_applied: bool | None = None


def keep_freed_memory() -> bool:
    """Apply :data:`MALLOC_SETTINGS` to this process once; return whether they are in force.

    A process-wide, one-way setting (glibc's dynamic threshold cannot be switched back
    on): the experiment engine calls it for every run, and it costs a process that frees
    a large peak only that the memory stays reserved (up to 512 MiB) for reuse. False,
    and nothing changed, off Linux/glibc (macOS, Windows, musl) or when ``mallopt``
    refuses a value.
    """
    global _applied
    if _applied is not None:
        return _applied
    _applied = False
    if not sys.platform.startswith("linux"):
        return False
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc
        return False
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    _applied = all(mallopt(_PARAMS[key], value) == 1 for key, value in MALLOC_SETTINGS.items())
    return _applied


def tuned() -> bool:
    """Whether :func:`keep_freed_memory` has put :data:`MALLOC_SETTINGS` in force here."""
    return bool(_applied)
