"""Reference runs of the seeds' own code: measured figures shipped with bnlab as data.

``bnlab/report/reference_runs/seed-<id>-tf1.jsonl`` holds one JSON object per run of a seed's
original TensorFlow 1 program (run as written under ``tensorflow.compat.v1``, several
random seeds; ``scripts/reference/`` has the programs and the command that re-measures
them). A claim is judged against the distribution of these runs, not against the one run
a tutorial printed. :class:`Reference` selects one number per run; :class:`SeriesReference`
one curve per run (e.g. validation accuracy against the step), for a band in a plot.
"""

from __future__ import annotations

import functools
import json
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

__all__ = [
    "REFERENCE_FILES",
    "Reference",
    "SeriesReference",
    "load_reference",
    "reference_values",
]

#: The shipped reference files, by the seed they measure.
REFERENCE_FILES = {
    "000": "seed-000-tf1.jsonl",
    "001": "seed-001-tf1.jsonl",
    "002": "seed-002-tf1.jsonl",
}

Record = dict[str, Any]


@functools.cache
def _load(file: str) -> tuple[Record, ...]:
    text = resources.files("bnlab.report").joinpath("reference_runs", file).read_text("utf-8")
    records: list[Record] = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ValueError(f"reference {file}, line {number}: not JSON ({exc})") from None
        if not isinstance(record, dict):
            raise ValueError(f"reference {file}, line {number}: expected an object")
        records.append(record)
    return tuple(records)


def load_reference(file: str) -> tuple[Record, ...]:
    """The runs of a shipped reference file (``"seed-000-tf1.jsonl"``), in file order.

    Raises:
        FileNotFoundError: no such file among the shipped references.
        ValueError: a line that is not a JSON object.
    """
    try:
        return _load(file)
    except FileNotFoundError:
        raise FileNotFoundError(
            f"no shipped reference {file!r}; shipped: {sorted(REFERENCE_FILES.values())}"
        ) from None


def _dig(record: Mapping[str, Any], path: tuple[str, ...]) -> Any:
    value: Any = record
    for key in path:
        if not isinstance(value, Mapping) or key not in value:
            return None
        value = value[key]
    return value


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) else None


@dataclass(frozen=True)
class Reference:
    """One number per run of a seed's own code: the distribution a claim is judged against.

    Attributes:
        file: the shipped reference file (see :data:`REFERENCE_FILES`).
        key: the value's path in each record (``("val", "500")``), or a function of the
            record returning the value (``None`` to skip that run).
        where: only records whose fields equal these (``{"version": "layers"}``).
        label: what the numbers are, for the report (``"tf.layers version, after batch 500"``).

    >>> ref = Reference("seed-000-tf1.jsonl", ("val", "500"), {"version": "layers"})
    >>> len(ref.values()) >= 5
    True
    """

    file: str
    key: tuple[str, ...] | Callable[[Record], float | None]
    where: Mapping[str, Any] = field(default_factory=dict)
    label: str = ""

    def records(self) -> list[Record]:
        """The records selected by :attr:`where`."""
        return [
            r
            for r in load_reference(self.file)
            if all(r.get(k) == v for k, v in self.where.items())
        ]

    def values(self) -> list[float]:
        """The finite values, one per selected run that has one (file order)."""
        out = []
        for record in self.records():
            raw = self.key(record) if callable(self.key) else _dig(record, self.key)
            value = _number(raw)
            if value is not None:
                out.append(value)
        return out


@dataclass(frozen=True)
class SeriesReference:
    """One curve per run of a seed's own code, in bnlab's step numbering (for plots).

    Attributes:
        file, where: as :class:`Reference`.
        series: record -> ``{step: value}`` with ``step`` counting optimizer updates, as
            bnlab's metrics logs do (a seed that measures after batch ``i`` gives step
            ``i + 1``).
        label: the legend entry (``"seed's own TF1 code, tf.layers"``).
        variant: the bnlab variant it is the reference of (its colour in the plot).
    """

    file: str
    series: Callable[[Record], Mapping[int, float]]
    where: Mapping[str, Any] = field(default_factory=dict)
    label: str = "the seed's own code"
    variant: str = ""

    def curves(self) -> tuple[list[int], list[list[float]]]:
        """Steps every selected run has, and each run's values there (``([], [])`` if none)."""
        runs = [
            self.series(r)
            for r in load_reference(self.file)
            if all(r.get(k) == v for k, v in self.where.items())
        ]
        runs = [r for r in runs if r]
        if not runs:
            return [], []
        steps = sorted(set.intersection(*(set(r) for r in runs)))
        return steps, [[float(r[s]) for s in steps] for r in runs]


def reference_values(file: str, key: tuple[str, ...], **where: Any) -> list[float]:
    """Shorthand: ``Reference(file, key, where).values()``.

    >>> len(reference_values("seed-000-tf1.jsonl", ("final_test",), version="nn")) >= 5
    True
    """
    return Reference(file, key, where).values()
