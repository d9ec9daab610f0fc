"""The memory-bandwidth roofline: the least time a batch-norm pass can take on this machine.

Batch norm does a few flops per value, so its floor is the time to move the bytes it must
move, at the bandwidth a plain copy reaches in the same run. Minimum traffic, in passes
over the tensor (a pass = one read or one write of every value): training forward 2 (read
x, write y, statistics kept in cache between them), backward 3 (read x and dy, write dx),
inference 2 (read x, write y).
"""

from __future__ import annotations

__all__ = ["MODES", "PASSES", "copy_bandwidth", "roofline_seconds"]

#: Minimum passes over the tensor per benchmark mode.
PASSES: dict[str, int] = {
    "forward": 2,
    "backward": 3,
    "forward+backward": 5,
    "inference": 2,
}

MODES: tuple[str, ...] = tuple(PASSES)


def copy_bandwidth(nbytes: int, copy_seconds: float) -> float:
    """Bytes per second a copy of ``nbytes`` moved (it reads and writes them: 2 passes).

    Raises:
        ValueError: a non-positive ``copy_seconds``.

    >>> copy_bandwidth(1_000_000, 1e-4) / 1e9  # 2 MB in 0.1 ms
    20.0
    """
    if copy_seconds <= 0:
        raise ValueError(f"copy_seconds must be positive; got {copy_seconds}")
    return 2 * nbytes / copy_seconds


def roofline_seconds(mode: str, nbytes: int, bandwidth: float) -> float:
    """``PASSES[mode] * nbytes / bandwidth``: the bandwidth-bound time of ``mode``.

    Raises:
        ValueError: an unknown ``mode`` or a non-positive ``bandwidth``.

    >>> roofline_seconds("forward+backward", 1_000_000, 20e9) * 1e6  # microseconds
    250.0
    """
    if mode not in PASSES:
        raise ValueError(f"unknown mode {mode!r}; expected one of: {', '.join(PASSES)}")
    if bandwidth <= 0:
        raise ValueError(f"bandwidth must be positive; got {bandwidth}")
    return PASSES[mode] * nbytes / bandwidth
