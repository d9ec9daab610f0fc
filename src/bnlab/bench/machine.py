"""How much of the machine other processes used while we timed something (Linux).

On a shared machine a timing is only as good as the quiet it was taken in. The CPU time
all processes spent (``/proc/stat``) minus this process's own (``os.times``), over the
wall time and the core count, is the share of the cores others took: the interference.
``wait_for_quiet`` polls until it is low, so a benchmark can time in the gaps.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

__all__ = ["Snapshot", "interference", "measure_quietly", "snapshot", "wait_for_quiet"]

T = TypeVar("T")

_CLOCK_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


@dataclass(frozen=True)
class Snapshot:
    """CPU seconds used by everything (None where unknown) and by us, at a wall time."""

    busy_s: float | None
    own_s: float
    wall_s: float


def _busy_seconds() -> float | None:
    """CPU seconds all processes spent since boot (every core), from ``/proc/stat``."""
    try:
        with open("/proc/stat", encoding="ascii") as f:
            fields = f.readline().split()
    except OSError:
        return None
    if not fields or fields[0] != "cpu":
        return None
    ticks = [int(v) for v in fields[1:9]]  # user nice system idle iowait irq softirq steal
    busy = sum(ticks) - ticks[3] - ticks[4]
    return busy / _CLOCK_TICKS


def snapshot() -> Snapshot:
    """The counters now."""
    t = os.times()
    return Snapshot(_busy_seconds(), t.user + t.system, time.perf_counter())


def interference(before: Snapshot, after: Snapshot) -> float | None:
    """Share of all cores that other processes used between two snapshots (0 = alone).

    None when the system counters are not available (not Linux).

    >>> s = snapshot(); interference(s, s) in (None, 0.0)
    True
    """
    if before.busy_s is None or after.busy_s is None:
        return None
    wall = after.wall_s - before.wall_s
    if wall <= 0:
        return 0.0
    others = (after.busy_s - before.busy_s) - (after.own_s - before.own_s)
    return max(0.0, others) / (wall * (os.cpu_count() or 1))


def wait_for_quiet(
    threshold: float = 0.05, settle_s: float = 1.0, timeout_s: float = 60.0
) -> float | None:
    """Sleep until others use under ``threshold`` of the cores for ``settle_s``.

    Returns the interference of the last quiet (or, after ``timeout_s``, last) window;
    None where it cannot be measured (then it returns at once).
    """
    deadline = time.perf_counter() + timeout_s
    while True:
        before = snapshot()
        time.sleep(settle_s)
        level = interference(before, snapshot())
        if level is None or level < threshold or time.perf_counter() >= deadline:
            return level


def measure_quietly(
    measure: Callable[[], T],
    *,
    quiet: bool,
    attempts: int = 3,
    max_interference: float = 0.05,
    wait_s: float = 60.0,
) -> tuple[T, float | None, int]:
    """Run ``measure``, waiting for a quiet machine and retrying when disturbed.

    Without ``quiet`` it runs once. With it, each attempt first waits (up to ``wait_s``)
    for other processes to use under ``max_interference`` of the cores; an attempt during
    which they used more is repeated, up to ``attempts`` times, and the least disturbed
    result is kept.

    Returns:
        ``(result, interference during it (None if unknown), attempts made)``.
    """
    best: tuple[T, float | None] | None = None
    made = 0
    for _ in range(max(1, attempts) if quiet else 1):
        made += 1
        if quiet:
            wait_for_quiet(max_interference, timeout_s=wait_s)
        before = snapshot()
        result = measure()
        level = interference(before, snapshot())
        if best is None or (level is not None and (best[1] is None or level < best[1])):
            best = (result, level)
        if level is None or level <= max_interference:
            break
    if best is None:  # unreachable: the loop runs at least once
        raise RuntimeError("measure_quietly made no attempt")
    return best[0], best[1], made
