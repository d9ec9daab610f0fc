"""What an experiment declares so the report can show it: metrics, curves, claims, blocks.

The report core knows nothing about any particular experiment. Each experiment's spec
lists the final metrics for its table (:class:`Metric`), the curves to plot
(:class:`Curve`), the seed's claims with a check (:class:`Claim`), and optionally extra
content blocks (:class:`Paragraph`, :class:`Table`, :class:`Figure`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from bnlab.report.reference import SeriesReference

if TYPE_CHECKING:
    from bnlab.report.results import ExperimentResults

__all__ = [
    "FORMATS",
    "Block",
    "Claim",
    "Curve",
    "Figure",
    "Metric",
    "Paragraph",
    "Reportable",
    "Table",
    "Verdict",
]

#: Value formats for tables: a fraction shown as a percentage, a plain float, seconds.
FORMATS = ("pct", "float", "seconds", "int")


@dataclass(frozen=True)
class Metric:
    """A final metric (a key of ``result.json``'s ``metrics``) shown as a table column.

    Attributes:
        key: the metric's key (e.g. ``"test_accuracy"``).
        label: the column header.
        fmt: one of :data:`FORMATS` (``"pct"``: a fraction in [0, 1] shown as percent).
    """

    key: str
    label: str
    fmt: str = "float"

    def __post_init__(self) -> None:
        if self.fmt not in FORMATS:
            raise ValueError(f"Metric fmt must be one of {FORMATS}; got {self.fmt!r}")


@dataclass(frozen=True)
class Curve:
    """A plot of one value of the metrics log against the step, one line per variant.

    The line is the mean over seeds, the band spans the minimum and maximum over seeds.

    Attributes:
        tag: the records' ``tag`` in ``metrics.jsonl`` (``"validation"``, ``"train"``, ...).
        key: the value plotted (``"accuracy"``, ``"loss"``, ...).
        title, ylabel: figure text.
        variants: the variants to draw (default: all, in the spec's order).
        phase: only records of this phase (default: all phases).
        smooth: moving-average window over steps, applied per seed (1: none).
        logy: logarithmic y axis.
        fmt: ``"pct"`` draws fractions as percentages.
        references: the same quantity from runs of the seed's own code, drawn dashed with
            their own min-max band beside bnlab's.
    """

    tag: str
    key: str
    title: str
    ylabel: str
    variants: tuple[str, ...] | None = None
    phase: str | None = None
    smooth: int = 1
    logy: bool = False
    fmt: str = "float"
    references: tuple[SeriesReference, ...] = ()

    def __post_init__(self) -> None:
        if self.smooth < 1:
            raise ValueError(f"Curve smooth must be >= 1; got {self.smooth}")
        if self.fmt not in FORMATS:
            raise ValueError(f"Curve fmt must be one of {FORMATS}; got {self.fmt!r}")


@dataclass(frozen=True)
class Verdict:
    """The outcome of checking a claim.

    A claim with a reference (runs of the seed's own code) is judged on the two
    distributions: ``outcome`` then says how bnlab compares with the original
    (``"holds: consistent with the original"``, ``"bnlab worse than the original"``, ...)
    and ``basis`` gives the test and the literal threshold beside it. A claim without one
    is judged on the literal threshold alone and ``outcome`` stays empty.

    Attributes:
        measured: what bnlab measured, in words and numbers (mean ± sd over seeds, n).
        holds: ``True``/``False``, or ``None`` when the runs needed are missing (or too
            few to decide).
        reference: what the seed's own code gives over its runs (mean ± sd [range], n);
            empty when no reference exists.
        outcome: the verdict in words when it is not plain holds / does not hold.
        basis: what the verdict rests on: the rule, the test's p, the seeds on each side,
            and the literal threshold's result.
    """

    measured: str
    holds: bool | None
    reference: str = ""
    outcome: str = ""
    basis: str = ""


@dataclass(frozen=True)
class Claim:
    """A claim of the seed and how to check it on the runs.

    Attributes:
        text: the claim, in the seed's words or close to them.
        check: computes the :class:`Verdict` from the experiment's results.
        criterion: the test applied, in words (e.g. "every seed below 15%").
        short: a few words for summary tables (default: ``text``).
    """

    text: str
    check: Callable[[ExperimentResults], Verdict]
    criterion: str = ""
    short: str = ""


@dataclass(frozen=True)
class Paragraph:
    """A paragraph of plain text (escaped in HTML)."""

    text: str


@dataclass(frozen=True)
class Table:
    """A table of already formatted cells."""

    columns: tuple[str, ...]
    rows: tuple[tuple[str, ...], ...]
    caption: str = ""

    def __post_init__(self) -> None:
        for row in self.rows:
            if len(row) != len(self.columns):
                raise ValueError(
                    f"every Table row needs {len(self.columns)} cells (one per column); "
                    f"got a row of {len(row)}: {row!r}"
                )


@dataclass(frozen=True)
class Figure:
    """A PNG image with a caption (embedded in the HTML, written beside the Markdown)."""

    png: bytes
    caption: str
    name: str  # file name stem for the Markdown copy, unique within the experiment


Block = Paragraph | Table | Figure


class Reportable(Protocol):
    """What the report reads from an experiment spec (``bnlab.experiments.ExperimentSpec``)."""

    @property
    def name(self) -> str: ...

    @property
    def title(self) -> str: ...

    @property
    def seed_file(self) -> str: ...

    @property
    def summary(self) -> str: ...

    @property
    def notes(self) -> Sequence[str]: ...

    @property
    def metrics(self) -> Sequence[Metric]: ...

    @property
    def curves(self) -> Sequence[Curve]: ...

    @property
    def claims(self) -> Sequence[Claim]: ...

    @property
    def extra_blocks(self) -> Callable[[ExperimentResults], list[Block]] | None: ...

    def variant_descriptions(self) -> Mapping[str, str]: ...
