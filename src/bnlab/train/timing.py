"""Where a run's time goes: a ledger of named phases.

The engine opens a ledger around each run (:func:`recording`); the trainer charges its
training steps, each hook's measurements, metric writes and checkpoints to it
(:func:`timed`), and the engine writes the totals into ``result.json`` with the rest of the
run's wall time as ``"other"`` (model set-up, the final evaluations). Outside a ledger
:func:`timed` costs one context-variable read.

>>> with recording() as ledger:
...     with timed("steps"):
...         pass
...     with timed("steps"):
...         pass
>>> sorted(ledger.seconds), ledger.counts["steps"]
(['steps'], 2)
>>> with timed("nowhere"):  # no ledger open: nothing is recorded
...     pass
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from contextvars import ContextVar
from dataclasses import dataclass, field

__all__ = ["TimeLedger", "charge", "recording", "timed"]


@dataclass
class TimeLedger:
    """Seconds and entry counts per phase name, in the order phases first appeared."""

    seconds: dict[str, float] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=dict)

    def add(self, name: str, seconds: float) -> None:
        """Charge ``seconds`` to ``name``."""
        self.seconds[name] = self.seconds.get(name, 0.0) + seconds
        self.counts[name] = self.counts.get(name, 0) + 1

    def breakdown(self, wall_s: float) -> dict[str, float]:
        """``{phase: seconds}`` plus ``"other"``: the part of ``wall_s`` no phase claimed
        (never negative), rounded to milliseconds.

        >>> ledger = TimeLedger()
        >>> ledger.add("steps", 2.0)
        >>> ledger.breakdown(3.0)
        {'steps': 2.0, 'other': 1.0}
        """
        out = {name: round(s, 3) for name, s in self.seconds.items()}
        out["other"] = round(max(0.0, wall_s - sum(self.seconds.values())), 3)
        return out


_CURRENT: ContextVar[TimeLedger | None] = ContextVar("bnlab_time_ledger", default=None)


@contextlib.contextmanager
def recording() -> Iterator[TimeLedger]:
    """Open a fresh ledger for the block (nested blocks get their own)."""
    ledger = TimeLedger()
    token = _CURRENT.set(ledger)
    try:
        yield ledger
    finally:
        _CURRENT.reset(token)


def charge(name: str, seconds: float) -> None:
    """Charge ``seconds`` measured elsewhere to ``name`` in the open ledger (if any)."""
    ledger = _CURRENT.get()
    if ledger is not None:
        ledger.add(name, seconds)


@contextlib.contextmanager
def timed(name: str) -> Iterator[None]:
    """Charge the block's wall time to ``name`` in the open ledger (if any)."""
    ledger = _CURRENT.get()
    if ledger is None:
        yield
        return
    t0 = time.perf_counter()
    try:
        yield
    finally:
        ledger.add(name, time.perf_counter() - t0)
