"""Wall-clock timing for noisy, shared machines: interleaved rounds and medians.

Candidates are timed in rounds, one sample of each per round, so a slow patch of time
(another process on the same cores) hits all of them alike; each reports the median of its
samples. Short calls are repeated inside a sample so a sample lasts about a millisecond.
"""

from __future__ import annotations

import gc
import statistics
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

__all__ = ["STATS", "Timing", "interleaved", "paired_ratio"]

#: A sample should last at least this long (seconds) so timer overhead stays negligible.
_MIN_SAMPLE_S = 1e-3
_MAX_INNER = 2000


#: The statistics a :class:`Timing` offers: the median (the default everywhere) and the
#: minimum (the least-disturbed sample: on a shared machine, the best estimate of the
#: time without the other jobs).
STATS: tuple[str, ...] = ("median", "min")


@dataclass(frozen=True)
class Timing:
    """Per-call times (seconds) of one candidate: median, quartiles, minimum."""

    median: float
    q25: float
    q75: float
    samples: int
    calls_per_sample: int
    min: float = float("nan")
    #: The per-call time of each round, in round order (for ratios paired by round).
    rounds: tuple[float, ...] = field(default=(), repr=False, compare=False)

    def stat(self, name: str) -> float:
        """The statistic ``name`` (one of :data:`STATS`)."""
        if name == "median":
            return self.median
        if name == "min":
            return self.min
        raise ValueError(f"unknown statistic {name!r}; expected one of: {', '.join(STATS)}")

    def as_dict(self) -> dict[str, float | int]:
        return {
            "median_s": self.median,
            "q25_s": self.q25,
            "q75_s": self.q75,
            "min_s": self.min,
            "samples": self.samples,
            "calls_per_sample": self.calls_per_sample,
        }


def _inner_count(fn: Callable[[], object]) -> int:
    """How many calls make one sample of at least ``_MIN_SAMPLE_S``."""
    start = time.perf_counter()
    fn()
    one = time.perf_counter() - start
    if one >= _MIN_SAMPLE_S:
        return 1
    return int(min(_MAX_INNER, max(1, round(_MIN_SAMPLE_S / max(one, 1e-7)))))


def interleaved(
    candidates: Mapping[str, Callable[[], object]],
    *,
    min_rounds: int = 5,
    max_rounds: int = 50,
    budget_s: float = 2.0,
    warmup: int = 2,
) -> dict[str, Timing]:
    """Time every candidate in interleaved rounds; the median per call of each.

    Each round calls every candidate ``calls_per_sample`` times in a row (chosen so a
    sample lasts about 1 ms) and records the time per call; the order of the candidates
    rotates from round to round, so none is always the one that runs after a given other.
    Rounds continue until ``budget_s`` has passed (at least ``min_rounds``, at most
    ``max_rounds``). The garbage collector is paused while timing.

    Args:
        candidates: name -> a function of no arguments (its result is ignored).
        min_rounds, max_rounds: bounds on the number of samples per candidate.
        budget_s: the time the rounds may take, after warm-up.
        warmup: untimed calls of each candidate first (compilation, caches, allocator).

    Returns:
        name -> :class:`Timing`.

    Raises:
        ValueError: no candidates, or ``min_rounds`` outside ``1..max_rounds``.

    >>> t = interleaved({"sum": lambda: sum(range(100))}, min_rounds=3, max_rounds=3)
    >>> t["sum"].samples
    3
    """
    if not candidates:
        raise ValueError("interleaved() needs at least one candidate to time")
    if not 1 <= min_rounds <= max_rounds:
        raise ValueError(
            f"need 1 <= min_rounds <= max_rounds; got min_rounds={min_rounds}, "
            f"max_rounds={max_rounds}"
        )
    for fn in candidates.values():
        for _ in range(warmup):
            fn()
    inner = {name: _inner_count(fn) for name, fn in candidates.items()}
    samples: dict[str, list[float]] = {name: [] for name in candidates}
    order = list(candidates)
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        start = time.perf_counter()
        rounds = 0
        while rounds < max_rounds and (
            rounds < min_rounds or time.perf_counter() - start < budget_s
        ):
            # Rotate the order every round: whichever candidate runs first after
            # another one finds the caches full of that one's tensors (measured: up to
            # 15% slower at identical work), so no candidate may always hold one place.
            shift = rounds % len(order)
            for name in order[shift:] + order[:shift]:
                fn = candidates[name]
                n = inner[name]
                t0 = time.perf_counter()
                for _ in range(n):
                    fn()
                samples[name].append((time.perf_counter() - t0) / n)
            rounds += 1
    finally:
        if was_enabled:
            gc.enable()
    result = {}
    for name, values in samples.items():
        q = statistics.quantiles(values, n=4) if len(values) > 1 else [values[0]] * 3
        result[name] = Timing(
            statistics.median(values),
            q[0],
            q[2],
            len(values),
            inner[name],
            min(values),
            tuple(values),
        )
    return result


def paired_ratio(numerator: Timing, denominator: Timing, scale: float = 1.0) -> float:
    """The median over rounds of ``numerator / (scale * denominator)``, round by round.

    Two candidates timed in the same rounds see the same state of the machine in each
    round; the ratio within a round cancels a slow patch that the ratio of two medians
    keeps (on a shared machine the speed of every candidate drifts by 2x in minutes).
    Falls back to the ratio of medians when the rounds are unknown or differ in number.

    >>> a = Timing(2.0, 2.0, 2.0, 3, 1, 1.0, (1.0, 2.0, 4.0))
    >>> b = Timing(1.0, 1.0, 1.0, 3, 1, 0.5, (0.5, 1.0, 2.0))
    >>> paired_ratio(a, b)
    2.0
    """
    if numerator.rounds and len(numerator.rounds) == len(denominator.rounds):
        pairs = zip(numerator.rounds, denominator.rounds, strict=True)
        ratios = [a / (scale * b) for a, b in pairs]
        return statistics.median(ratios)
    return numerator.median / (scale * denominator.median)
