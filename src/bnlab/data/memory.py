"""Memory checked before a large allocation: a data file's header may declare gigabytes
(a gzip bomb, a corrupt size field); bnlab refuses it with one line instead of being
killed by the kernel, or swapping, halfway through the read."""

from __future__ import annotations

import os

from bnlab.data.errors import DataError

__all__ = ["InsufficientMemoryError", "available_memory", "check_memory"]


class InsufficientMemoryError(DataError, MemoryError):
    """Data that would not fit in the memory available (checked before allocating)."""


def available_memory() -> int | None:
    """Bytes of memory available to a new allocation without swapping (Linux's
    ``MemAvailable``; elsewhere the free physical pages), or ``None`` when unknown."""
    try:
        with open("/proc/meminfo", "rb") as handle:
            for line in handle:
                if line.startswith(b"MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def _gb(n: float) -> str:
    return f"{n / 2**30:.1f} GB"


def check_memory(need: int, what: str) -> None:
    """Refuse to allocate ``need`` bytes for ``what`` when they exceed the memory available.

    Raises:
        InsufficientMemoryError: one line naming ``what``, the need and what is available.
    """
    available = available_memory()
    if available is None or need <= available:
        return
    raise InsufficientMemoryError(
        f"{what} needs {_gb(need)} of memory, but {_gb(available)} are available; the file "
        "is corrupt or a gzip bomb if it is meant to be small, otherwise free memory or use "
        "a machine with more"
    )
