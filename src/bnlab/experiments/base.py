"""What an experiment is: a frozen config, named variants, a run function, report content.

An experiment module builds one :class:`ExperimentSpec` (conventionally ``SPEC``) and the
registry lists it. The engine (:mod:`bnlab.experiments.runner`) turns a spec, variant
names and seeds into run directories; the report reads those back through the same spec.
See ``docs/experiments.md`` for a walk-through.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, TypeVar

from bnlab.errors import BnlabError, UnknownNameError
from bnlab.report.results import ExperimentResults
from bnlab.report.spec import Block, Claim, Curve, Metric
from bnlab.train.rundir import RunDir

__all__ = [
    "ConfigError",
    "ExperimentSpec",
    "RunContext",
    "Variant",
    "apply_overrides",
    "check_config",
    "config_problem",
    "config_to_dict",
    "require",
]


class ConfigError(BnlabError, ValueError):
    """A config value that does not parse or that the config refuses (e.g. ``--set
    batch_size=0``); raised when the config is resolved, before any data loads."""


C = TypeVar("C")
D = TypeVar("D")


@dataclass(frozen=True)
class Variant(Generic[C]):
    """A named configuration of an experiment (``dataclasses.replace`` of a base config).

    Attributes:
        config: the frozen config (its ``seed`` field is set per run by the engine).
        description: one line for ``bnlab list`` and the report.
    """

    config: C
    description: str


@dataclass
class RunContext:
    """What an experiment's ``run`` function gets besides its config and data.

    Attributes:
        run: the run directory (metrics log, checkpoints, artefacts).
        experiment, variant, seed: the run's identity.
        progress: draw progress bars.
        is_main: whether this process writes files (rank 0 under data-parallel training).
    """

    run: RunDir
    experiment: str
    variant: str
    seed: int
    progress: bool = False
    is_main: bool = True

    @property
    def desc(self) -> str:
        """``"<experiment>/<variant>/seed-<k>"``: progress-bar label and error-message prefix."""
        return f"{self.experiment}/{self.variant}/seed-{self.seed}"


def config_to_dict(config: Any) -> dict[str, Any]:
    """Return a config dataclass as a JSON-ready dict (tuples become lists).

    Raises:
        TypeError: ``config`` is not a dataclass instance.
    """
    if not dataclasses.is_dataclass(config) or isinstance(config, type):
        raise TypeError(
            f"an experiment config must be a dataclass instance; got {type(config).__name__}"
        )
    return dict(json.loads(json.dumps(dataclasses.asdict(config))))


_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off")


def _parse(field: str, text: str, current: Any) -> Any:
    if isinstance(current, bool):
        if text.lower() in _TRUE:
            return True
        if text.lower() in _FALSE:
            return False
        raise ValueError(f"config field {field!r} is a bool; expected true or false, got {text!r}")
    for kind in (int, float):
        if isinstance(current, kind):
            try:
                return kind(text)
            except ValueError:
                raise ValueError(
                    f"config field {field!r} is {kind.__name__}; got {text!r}"
                ) from None
    if current is None or isinstance(current, str):
        return text
    raise ValueError(
        f"config field {field!r} of type {type(current).__name__} cannot be set from text"
    )


def apply_overrides(config: C, overrides: Mapping[str, str]) -> C:
    """Return ``config`` with fields replaced by ``overrides`` (``{"learning_rate": "0.01"}``).

    Each text value is converted to the type of the field's current value (int, float,
    bool, str); the config's own validation then runs again.

    Raises:
        UnknownNameError: a name that is not a field of the config (the valid ones listed).
        ConfigError: ``seed`` (the engine sets it per run), a value that does not convert, or
            one that the config rejects; the message names ``--set FIELD=VALUE``.
    """
    if not overrides:
        return config
    names = tuple(f.name for f in dataclasses.fields(config))  # type: ignore[arg-type]
    changes = {}
    for key, text in overrides.items():
        if key not in names:
            raise UnknownNameError(f"field of {type(config).__name__}", key, names)
        if key == "seed":
            # Every run would get the same seed: K "seeds" that are one run K times.
            raise ConfigError(
                f"--set seed={text} is not allowed: each run's seed comes from --seeds K "
                "(seeds 0..K-1, one run directory each); drop --set seed"
            )
        try:
            changes[key] = _parse(key, text, getattr(config, key))
        except ValueError as exc:
            raise ConfigError(f"--set {key}={text}: {exc}") from None
    try:
        return dataclasses.replace(config, **changes)  # type: ignore[type-var]
    except (ValueError, TypeError) as exc:
        shown = " ".join(f"--set {k}={overrides[k]}" for k in changes)
        raise ConfigError(f"{shown}: {exc}") from None


def _json_type_mismatch(default: Any, value: Any) -> str | None:
    """Why ``value`` (read from JSON) cannot be a value of a config field whose default is
    ``default``; ``None`` when it can (a float field may hold an integer; a tuple is a
    list in JSON; a field defaulting to None is not checked)."""
    if default is None:
        return None
    if isinstance(default, bool):
        ok = isinstance(value, bool)
    elif isinstance(default, int):
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif isinstance(default, float):
        ok = isinstance(value, int | float) and not isinstance(value, bool)
    elif isinstance(default, str):
        ok = isinstance(value, str)
    elif isinstance(default, tuple | list):
        ok = isinstance(value, list)
    else:
        return None
    if ok:
        return None
    shown = json.dumps(value)[:40] if value is None or isinstance(value, int | float | str) else ""
    return f"expected {type(default).__name__}, found {type(value).__name__} {shown}".rstrip()


#: The largest batch a config may ask for: more than any training split bnlab reads (MNIST
#: 55,000 images, CIFAR-10 50,000), so a larger one is a typo (``batch_size=1000000000``
#: would otherwise fail after the data load, or try to allocate terabytes).
MAX_BATCH_SIZE = 60_000
#: The most intra-op threads a run may ask for (``torch.set_num_threads`` takes any count).
MAX_THREADS = 256


def _name_rule(name: str) -> tuple[int, int | None, bool] | None:
    """``(low, high, strict_low)`` that a field's name implies, or ``None``:
    a learning rate and an epsilon (under a square root, or a divisor) must be > 0; an
    interval (``*_every``: steps between events; ``0`` would divide by zero, a negative
    one never fires) at least 1; a batch size within ``[1, MAX_BATCH_SIZE]``; threads
    within ``[1, MAX_THREADS]``."""
    if name == "learning_rate" or name.endswith("_learning_rate") or name.endswith("eps"):
        return (0, None, True)
    if name.endswith("_every"):
        return (1, None, False)
    if name == "batch_size" or name.endswith("_batch_size"):
        return (1, MAX_BATCH_SIZE, False)
    if name == "num_threads":
        return (1, MAX_THREADS, False)
    return None


def _value_type_mismatch(default: Any, value: Any) -> str | None:
    """Why ``value`` cannot be a value of a field whose default is ``default`` (a config
    built through the library API takes any object); ``None`` when it can."""
    if isinstance(default, tuple):
        return None if isinstance(value, tuple | list) else f"expected tuple, found {value!r}"
    return _json_type_mismatch(default, value)


def config_problem(config: Any) -> tuple[str, str] | None:
    """``(field, what is wrong)`` for the first field of ``config`` that breaks a rule
    every config follows, or ``None``: every field holds a value of its default's type
    (``int``, not ``bool``; a float field may hold an int), every float is finite, and a
    field's name implies a range (:func:`_name_rule`): a learning rate or an epsilon
    (``bn_eps``, ``adam_eps``) > 0, an interval (``checkpoint_every``, ``log_every``, ...)
    >= 1, a batch size in ``[1, MAX_BATCH_SIZE]``, ``num_threads`` in ``[1, MAX_THREADS]``.
    All of these would otherwise pass and fail after the data load, or train on NaN."""
    kind = type(config).__name__
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        where = f"{kind}.{f.name}"
        if f.default is not dataclasses.MISSING:
            reason = _value_type_mismatch(f.default, value)
            if reason is not None:
                return f.name, f"{where}: {reason}"
        if isinstance(value, float) and not math.isfinite(value):
            return f.name, f"{where} must be a finite number; got {value}"
        rule = _name_rule(f.name)
        if rule is None or isinstance(value, bool) or not isinstance(value, int | float):
            continue
        low, high, strict = rule
        if value < low or (strict and value == low):
            return f.name, f"{where} must be {'>' if strict else '>='} {low}; got {value}"
        if high is not None and value > high:
            return f.name, f"{where} must be <= {high}; got {value}"
    return None


def check_config(config: Any) -> None:
    """The checks of :func:`config_problem`, which every experiment's config passes
    besides its own ``__post_init__`` (the configs of bnlab's experiments run them there
    too, through :func:`require`; a plug-in's config gets them here).

    Raises:
        ConfigError: the first field that fails, named with its value.
    """
    problem = config_problem(config)
    if problem is not None:
        name, text = problem
        raise ConfigError(f"{text} (set it with --set {name}=VALUE)")


def require(
    config: Any,
    *,
    at_least_one: Sequence[str] = (),
    at_least_zero: Sequence[str] = (),
    positive: Sequence[str] = (),
    fraction: Sequence[str] = (),
    choices: Mapping[str, Sequence[str]] | None = None,
) -> None:
    """Range checks for a config's ``__post_init__``: the rules every config follows
    (:func:`config_problem`), then counts ``>= 1`` (``at_least_one``) or ``>= 0``, numbers
    ``> 0`` (``positive``), values in the open interval ``(0, 1)`` (``fraction``: decays,
    momenta) and names among ``choices``. The library API (``DeepCNNConfig(bn_eps=0)``)
    refuses what ``--set`` refuses.

    Raises:
        ValueError: the first field outside its range (``ConfigError`` once resolved).

    >>> from dataclasses import dataclass
    >>> @dataclass(frozen=True)
    ... class C:
    ...     width: int = 0
    >>> require(C(), at_least_one=("width",))
    Traceback (most recent call last):
    ...
    ValueError: C.width must be >= 1; got 0
    """
    problem = config_problem(config)
    if problem is not None:
        raise ValueError(problem[1])
    kind = type(config).__name__
    for names, test, words in (
        (at_least_one, lambda v: v >= 1, "must be >= 1"),
        (at_least_zero, lambda v: v >= 0, "must be >= 0"),
        (positive, lambda v: v > 0, "must be > 0"),
        (fraction, lambda v: 0 < v < 1, "must lie in (0, 1)"),
    ):
        for name in names:
            value = getattr(config, name)
            if isinstance(value, float) and not math.isfinite(value):
                raise ValueError(f"{kind}.{name} must be a finite number; got {value!r}")
            if not isinstance(value, int | float) or isinstance(value, bool) or not test(value):
                raise ValueError(f"{kind}.{name} {words}; got {value!r}")
    for name, valid in (choices or {}).items():
        value = getattr(config, name)
        if value not in valid:
            raise ValueError(f"{kind}.{name} must be one of {', '.join(valid)}; got {value!r}")


@dataclass(frozen=True)
class ExperimentSpec(Generic[C, D]):
    """One experiment: its configs, how to get its data, how to run a seed, what to report.

    Attributes:
        name: the CLI name (``"deep-cnn"``); also the directory under ``runs/``.
        title: a short human title.
        seed_file: the tutorial it reproduces (file name in ``shared/seeds``).
        summary: two or three sentences: network, training, what the seed shows.
        variants: name -> :class:`Variant`, in display order; every config is a frozen
            dataclass of the same type with an ``int`` field ``seed``.
        load_data: ``(data_dir, progress) -> data``, called once per invocation; raise a
            :class:`bnlab.errors.BnlabError` (e.g. ``bnlab.data.DataError``) when the data
            are missing, and ``bnlab reproduce`` records the experiment as not run.
        run: ``(config, data, ctx) -> final metrics``: trains one seed of one variant in
            ``ctx.run`` (resuming from its checkpoints) and returns ``{name: float}``.
        quick: ``config -> config`` with tiny step counts for ``--quick`` (code paths only).
        metrics: final metrics shown in the report's table.
        curves: plots drawn from ``metrics.jsonl``.
        claims: the seed's claims and their checks.
        extra_blocks: optional ``results -> [blocks]`` for anything else the report shows.
        notes: faithfulness notes (deviations from the seed and why), shown in the report.
        flush_denormal: run with denormal floats flushed to zero, as TensorFlow's CPU
            kernels do (also avoids 10x slower steps when activations vanish).
        cost_s: ``config -> seconds``: a rough wall time of one run on its
            ``num_threads`` threads of a quiet 2-core machine. Only orders the scheduler's
            work (longest first) and feeds the progress estimate; ``None``: 30 s.
        run_group: optional ``(configs, data, ctxs) -> [final metrics]``: trains several
            seeds of one variant together (``configs[k]`` into ``ctxs[k].run``, the configs
            differing only in ``seed``), each run bit for bit as ``run`` would train it
            (same records, checkpoints in ``run``'s format, artefacts). It may raise
            :class:`bnlab.train.group.GroupStateError` when the runs cannot train together
            (checkpoints at different steps); the engine then trains them one at a time, as
            it does after any other error of a group. ``None``: seeds train one at a time.
        group_cost_s: ``(config, K) -> seconds`` of a group of K seeds (default: K times
            :attr:`cost_s`); only for the scheduler's order and estimate.
    """

    name: str
    title: str
    seed_file: str
    summary: str
    variants: Mapping[str, Variant[C]]
    load_data: Callable[[Path | None, bool], D]
    run: Callable[[C, D, RunContext], dict[str, float]]
    quick: Callable[[C], C]
    metrics: tuple[Metric, ...] = ()
    curves: tuple[Curve, ...] = ()
    claims: tuple[Claim, ...] = ()
    extra_blocks: Callable[[ExperimentResults], list[Block]] | None = None
    notes: tuple[str, ...] = ()
    flush_denormal: bool = True
    cost_s: Callable[[C], float] | None = None
    run_group: Callable[[Sequence[C], D, Sequence[RunContext]], list[dict[str, float]]] | None = (
        None
    )
    group_cost_s: Callable[[C, int], float] | None = None

    def __post_init__(self) -> None:
        if not self.variants:
            raise ValueError(f"experiment {self.name!r} needs at least one variant")
        types = {type(v.config) for v in self.variants.values()}
        if len(types) != 1:
            raise TypeError(
                f"every variant of {self.name!r} must share one config type; got "
                f"{sorted(t.__name__ for t in types)}"
            )
        for vname, variant in self.variants.items():
            config = variant.config
            if not dataclasses.is_dataclass(config) or not type(config).__dataclass_params__.frozen:  # type: ignore[attr-defined]
                raise TypeError(f"{self.name}/{vname}: the config must be a frozen dataclass")
            if not isinstance(getattr(config, "seed", None), int):
                raise TypeError(f"{self.name}/{vname}: the config needs an int field 'seed'")

    def estimated_cost_s(self, config: C) -> float:
        """:attr:`cost_s` of ``config`` (30 s when the experiment gives none)."""
        return float(self.cost_s(config)) if self.cost_s is not None else 30.0

    def estimated_group_cost_s(self, config: C, count: int) -> float:
        """:attr:`group_cost_s` of ``count`` seeds of ``config`` (default ``count`` times
        :meth:`estimated_cost_s`)."""
        if self.group_cost_s is not None:
            return float(self.group_cost_s(config, count))
        return count * self.estimated_cost_s(config)

    def variant_names(self) -> tuple[str, ...]:
        """The variant names in display order."""
        return tuple(self.variants)

    def variant_descriptions(self) -> dict[str, str]:
        """Variant name -> one-line description (for the report and ``bnlab list``)."""
        return {name: v.description for name, v in self.variants.items()}

    def get_variant(self, name: str) -> Variant[C]:
        """The variant called ``name``.

        Raises:
            UnknownNameError: no such variant (the message lists the valid ones).
        """
        if name not in self.variants:
            raise UnknownNameError(f"variant of {self.name}", name, tuple(self.variants))
        return self.variants[name]

    def config_for(
        self,
        variant: str,
        seed: int,
        *,
        quick: bool = False,
        overrides: Mapping[str, str] | None = None,
    ) -> C:
        """The resolved config of one run: the variant's config with ``seed``, then the quick
        sizes (if ``quick``), then ``overrides`` (see :func:`apply_overrides`), checked by
        :func:`check_config`.

        Raises:
            UnknownNameError: an unknown variant or field name.
            ConfigError: an override that does not parse or that the config refuses.
        """
        config = dataclasses.replace(self.get_variant(variant).config, seed=seed)  # type: ignore[type-var]
        if quick:
            config = self.quick(config)
        config = apply_overrides(config, overrides or {})
        check_config(config)
        return config

    def stored_config_problem(self, stored: Mapping[str, Any]) -> str | None:
        """What is wrong with a run's ``config.json`` (``stored``, already of the right
        shape: see :data:`bnlab.train.runfiles.CONFIG`) as a config of this experiment;
        ``None`` when nothing is, or when it cannot be judged (a variant this bnlab does
        not know).

        Two checks: every field this experiment's config has holds a value of that field's
        type (fields of other bnlab versions are left alone), and ``quick: false`` is not
        paired with the ``--quick`` sizes (an edited flag would have the report judge a
        --quick run as a full one): of the fields :attr:`quick` changes, more hold the
        quick value than the full one.
        """
        variant = self.variants.get(str(stored.get("variant")))
        values = stored.get("config")
        if variant is None or not isinstance(values, Mapping):
            return None
        base = variant.config
        for f in dataclasses.fields(base):  # type: ignore[arg-type]
            if f.name not in values:
                continue
            reason = _json_type_mismatch(getattr(base, f.name), values[f.name])
            if reason is not None:
                return f"config.{f.name}: {reason}"
        if stored.get("quick") is not False:
            return None
        seeded = dataclasses.replace(base, seed=0)  # type: ignore[type-var]
        full, quick = config_to_dict(seeded), config_to_dict(self.quick(seeded))
        changed = [k for k in full if k != "seed" and full[k] != quick[k] and k in values]
        as_quick = [k for k in changed if values[k] == quick[k]]
        as_full = [k for k in changed if values[k] == full[k]]
        if len(as_quick) > len(as_full):
            sizes = ", ".join(f"{k} {values[k]}" for k in as_quick[:4])
            return (
                f"says quick: false, but its config has the --quick sizes ({sizes}): the flag "
                "was edited; rerun it with --quick or without, or remove it"
            )
        return None


def load_mnist_data(data_dir: Path | None, progress: bool) -> Any:
    """``load_data`` of every MNIST experiment: TF's split (55,000 / 5,000 / 10,000) from
    ``data_dir`` (any MNIST-format directory) or the default sources (see
    :func:`bnlab.data.load_mnist`, which raises a clear error when none has the files)."""
    from bnlab.data import load_mnist

    return load_mnist(data_dir, progress=progress)
