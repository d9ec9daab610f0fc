"""The engine against a plain PyTorch loop: runs of an experiment, timed both ways.

*Engine* is what ``bnlab run`` does: for one (variant, seed) :func:`runner.run_one` into a
fresh run directory, or, for a group row, :func:`runner.run_group` of K seeds (how
``bnlab run``/``reproduce`` train sigmoid-mlp's seeds by default: one stacked model, each
run's files those of its single run), with everything that comes with it (config,
environment and data records, the metrics logs, checkpoints, the experiment's
measurements, and the config's engine settings: channels-last model and fused Adam for
deep-cnn, its thread count). *Plain loop* is what one writes by hand for the same run: the
same model builder in the default memory format, plain ``torch.optim.Adam``/``SGD``, the
same loss, batches, steps and measurements at the same steps, no files; for a group row
the K seeds' plain loops one after another. Both run on the config's thread count with
denormals flushed (the runner flushes them for these experiments). The two alternate over
several repeats; the ratio is engine/plain of the median wall times.

Also :func:`batched_seeds`: K sigmoid MLPs trained as separate models or stacked inexactly
(``torch.func.vmap`` over stacked parameters, or stacked weights through
``torch.baddbmm`` with one loss over the stack), per model-step on one thread: the most
stacking could save, against which the group rows show what the engine's exact group run
saves.
"""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from bnlab.bench.machine import measure_quietly
from bnlab.bench.timing import interleaved, paired_ratio
from bnlab.data import TrainBatches, write_fake_mnist
from bnlab.errors import BnlabError
from bnlab.experiments import deep_cnn, runner, sigmoid_mlp
from bnlab.experiments.base import ExperimentSpec
from bnlab.experiments.registry import get_experiment
from bnlab.experiments.runner import RunOutcome, data_provenance, run_one
from bnlab.train.env import process_git_revision
from bnlab.train.evaluate import evaluate, predict_one_at_a_time
from bnlab.train.rundir import RunDir

__all__ = [
    "ENGINE_CASES",
    "ENGINE_EXPERIMENTS",
    "GROUP_SEEDS",
    "QUICK_ENGINE_CASES",
    "EngineCase",
    "EngineRow",
    "PlainRun",
    "SeedBatch",
    "batched_seeds",
    "engine_benchmark",
    "engine_rows",
    "format_engine",
    "load_engine_data",
    "plain_run",
    "time_engine_case",
]


@dataclass(frozen=True)
class EngineCase:
    """One row: an experiment's variant at a shortened length (``overrides``, as ``--set``).

    With ``group == 1`` the row is one run of ``seed``: the engine's :func:`runner.run_one`
    against one plain loop. With ``group = K >= 2`` it is the seeds ``seed .. seed+K-1``
    (:attr:`seeds`) trained as ``bnlab run`` trains them by default: the engine's one
    :func:`runner.run_group` call against the K seeds' plain loops one after another
    (:meth:`members`). Only experiments that offer ``run_group`` take a group row.

    Raises:
        ValueError: ``group < 1``.
    """

    experiment: str  # "deep-cnn" or "sigmoid-mlp" (the experiments with a plain loop here)
    variant: str
    overrides: Mapping[str, str] = field(default_factory=dict)
    seed: int = 0  # the (first) seed
    group: int = 1  # seeds in the row; >= 2: trained as one group run by the engine

    def __post_init__(self) -> None:
        if self.group < 1:
            raise ValueError(f"group must be >= 1 (the number of seeds); got {self.group}")

    @property
    def seeds(self) -> tuple[int, ...]:
        """The row's seeds, in order: ``(seed,)``, or a group's ``seed .. seed+group-1``."""
        return tuple(range(self.seed, self.seed + self.group))

    def members(self) -> tuple[EngineCase, ...]:
        """One single-run case per seed (a group row's plain side runs each in turn)."""
        return tuple(dataclasses.replace(self, seed=s, group=1) for s in self.seeds)

    @property
    def label(self) -> str:
        """``experiment/variant``, with `` xK (group)`` for a group row."""
        base = f"{self.experiment}/{self.variant}"
        return base if self.group == 1 else f"{base} x{self.group} (group)"


#: The experiments the engine rows read data for (the batched-seed row: sigmoid-mlp's).
ENGINE_EXPERIMENTS: tuple[str, ...] = ("deep-cnn", "sigmoid-mlp")

#: The seeds a group row trains together: ``bnlab run``'s default three for sigmoid-mlp.
GROUP_SEEDS = 3

#: The rows of ``bnlab bench --engine``: each run shortened, its own evaluation schedule
#: kept (deep-cnn: validation every 100 batches, the training batch every 25; sigmoid-mlp:
#: the test set with batch statistics every 50 steps), checkpoints and logs as configured.
#: sigmoid-mlp has both kinds of row: one run (what each run costs, as with ``--no-group``
#: or torchrun) and the group of seeds 0-2 (what ``bnlab run`` does by default).
ENGINE_CASES: tuple[EngineCase, ...] = (
    EngineCase("deep-cnn", "bn", {"num_batches": "200"}),
    EngineCase("deep-cnn", "no-bn", {"num_batches": "200"}),
    EngineCase("sigmoid-mlp", "no-bn", {"num_steps": "4000"}),
    EngineCase("sigmoid-mlp", "bn", {"num_steps": "4000"}),
    EngineCase("sigmoid-mlp", "no-bn", {"num_steps": "4000"}, group=GROUP_SEEDS),
    EngineCase("sigmoid-mlp", "bn", {"num_steps": "4000"}, group=GROUP_SEEDS),
)

_QUICK_CNN = {
    "num_conv_layers": "3",
    "num_batches": "6",
    "batch_size": "16",
    "validate_every": "3",
    "train_acc_every": "2",
    "single_image_count": "4",
    "checkpoint_every": "3",
    "log_every": "3",
}
_QUICK_MLP = {
    "num_steps": "30",
    "eval_every": "10",
    "single_image_count": "4",
    "checkpoint_every": "10",
    "log_every": "10",
}
#: ``--quick``: the same rows with tiny networks and step counts (code paths only).
QUICK_ENGINE_CASES: tuple[EngineCase, ...] = (
    EngineCase("deep-cnn", "bn", _QUICK_CNN),
    EngineCase("deep-cnn", "no-bn", _QUICK_CNN),
    EngineCase("sigmoid-mlp", "no-bn", _QUICK_MLP),
    EngineCase("sigmoid-mlp", "bn", _QUICK_MLP),
    EngineCase("sigmoid-mlp", "no-bn", _QUICK_MLP, group=GROUP_SEEDS),
    EngineCase("sigmoid-mlp", "bn", _QUICK_MLP, group=GROUP_SEEDS),
)


# -- the plain loops ----------------------------------------------------------------------
@dataclass(frozen=True)
class PlainRun:
    """What a plain loop did: its per-step training losses, final metrics, loop time."""

    losses: list[float]
    metrics: dict[str, float]
    train_s: float  # the training loop with its in-loop measurements (as the trainer's time)


@contextlib.contextmanager
def _settings(num_threads: int | None, flush_denormal: bool) -> Iterator[None]:
    """The thread count and denormal flushing the runner gives a run (its own context
    managers), then restored."""
    with runner.threads(num_threads), runner.numerics(flush_denormal):
        yield


def _plain_deep_cnn(config: deep_cnn.DeepCNNConfig, data: Any) -> PlainRun:
    """The deep-cnn run by hand: NCHW model, ``torch.optim.Adam``, the seed's schedule."""
    torch.manual_seed(config.seed)
    plain = dataclasses.replace(config, channels_last=False)
    model = deep_cnn.build_model(plain, image_size=data.train.images.shape[-1])
    optimizer = torch.optim.Adam(
        model.parameters(), lr=config.learning_rate, betas=(0.9, 0.999), eps=config.adam_eps
    )
    loss_fn = deep_cnn.sigmoid_cross_entropy
    batches = TrainBatches(data.train, config.batch_size, seed=config.seed)
    val, test = data.validation, data.test
    chunk = config.eval_batch_size
    losses: list[float] = []
    t0 = time.perf_counter()
    model.train()
    for batch_i in range(config.num_batches):
        x, y = batches.next_batch()
        loss = loss_fn(model(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
        if batch_i % config.validate_every == 0:
            evaluate(model, val.images, val.labels, loss_fn, batch_size=chunk)
        elif batch_i % config.train_acc_every == 0:
            evaluate(model, x, y, loss_fn, batch_size=chunk)
    train_s = time.perf_counter() - t0
    final_val = evaluate(model, val.images, val.labels, loss_fn, batch_size=chunk)
    final_test = evaluate(model, test.images, test.labels, loss_fn, batch_size=chunk)
    n = min(config.single_image_count, len(test))
    images, labels = test.images[:n], test.labels[:n]
    single = predict_one_at_a_time(model, images)
    model.eval()
    with torch.inference_mode():
        batched = torch.cat(
            [model(images[i : i + chunk]).argmax(dim=1) for i in range(0, n, chunk)]
        )
    return PlainRun(
        losses,
        {
            "validation_accuracy": final_val["accuracy"],
            "validation_loss": final_val["loss"],
            "test_accuracy": final_test["accuracy"],
            "test_loss": final_test["loss"],
            "single_image_accuracy": (single == labels).double().mean().item(),
            "batched_first_n_accuracy": (batched == labels).double().mean().item(),
        },
        train_s,
    )


def _plain_sigmoid_mlp(config: sigmoid_mlp.SigmoidMLPConfig, data: Any) -> PlainRun:
    """The sigmoid-mlp run by hand: ``torch.optim.SGD``, the test set with batch statistics
    (and the layer-2 sigmoid-input statistics) every ``eval_every`` steps."""
    test_x, test_y = data.test.flat(), data.test.labels
    model = sigmoid_mlp.build_model(config, test_x.shape[1], data.num_classes)
    optimizer = torch.optim.SGD(model.parameters(), lr=config.learning_rate)
    batches = TrainBatches(data.train, config.batch_size, seed=config.seed)
    q = torch.tensor([p / 100.0 for p in config.percentiles], dtype=torch.float64)

    def measure_test() -> dict[str, Any]:
        with torch.no_grad():  # training mode: batch statistics of the test set, as the seed
            logits, probe = model.forward_with_probe(test_x)
        z = probe[:, : config.probe_neurons].double()
        return {
            "accuracy": (logits.argmax(dim=1) == test_y).double().mean().item(),
            "loss": F.cross_entropy(logits, test_y).item(),
            "z_mean": z.mean(dim=0).tolist(),
            "z_percentiles": torch.quantile(z, q, dim=0).tolist(),
        }

    losses: list[float] = []
    t0 = time.perf_counter()
    model.train()
    for step in range(config.num_steps):
        x, y = batches.next_batch()
        loss = sigmoid_mlp.summed_cross_entropy(model(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
        if step % config.eval_every == 0:
            measure_test()
    train_s = time.perf_counter() - t0
    final = measure_test()
    metrics = {"test_accuracy": final["accuracy"], "test_loss": final["loss"]}
    if config.norm == "batch":
        n = min(config.single_image_count, len(test_y))
        single = predict_one_at_a_time(model, test_x[:n])
        metrics["single_image_accuracy"] = (single == test_y[:n]).double().mean().item()
    return PlainRun(losses, metrics, train_s)


@dataclass(frozen=True)
class _Plain:
    loop: Callable[[Any, Any], PlainRun]
    steps_field: str  # the config field that counts the optimizer steps
    variants: tuple[str, ...] | None  # the variants the loop reproduces (None: all)


_PLAIN: dict[str, _Plain] = {
    "deep-cnn": _Plain(_plain_deep_cnn, "num_batches", None),
    # bn-population also saves, rebuilds and restores the network: not a plain loop's work.
    "sigmoid-mlp": _Plain(_plain_sigmoid_mlp, "num_steps", ("no-bn", "bn")),
}


def _plain_for(case: EngineCase) -> _Plain:
    plain = _PLAIN.get(case.experiment)
    if plain is None:
        raise ValueError(
            f"no plain loop for experiment {case.experiment!r}; expected one of: "
            f"{', '.join(_PLAIN)}"
        )
    if plain.variants is not None and case.variant not in plain.variants:
        raise ValueError(
            f"no plain loop for {case.label}; the {case.experiment} variants with one are: "
            f"{', '.join(plain.variants)}"
        )
    return plain


def plain_run(case: EngineCase, data: Any) -> PlainRun:
    """Run ``case`` (one seed) as a plain loop, on the config's threads with denormals
    flushed.

    Raises:
        ValueError: a group case (its plain side is the plain run of each of
            :meth:`EngineCase.members`), or an experiment or variant without a plain loop
            here.
        UnknownNameError, ConfigError: an unknown variant or a bad override.
    """
    if case.group != 1:
        raise ValueError(
            f"plain_run runs one seed; {case.label} has {case.group} (run each of its members())"
        )
    plain = _plain_for(case)
    spec = get_experiment(case.experiment)
    config = spec.config_for(case.variant, case.seed, overrides=case.overrides)
    with _settings(getattr(config, "num_threads", None), spec.flush_denormal):
        return plain.loop(config, data)


@dataclass(frozen=True)
class _Timed:
    """One timed pass of one side of a row, over the row's seeds (in order)."""

    wall_s: float  # the whole pass: one run, a group run, or K plain loops in turn
    train_s: float  # the training loops' time, summed over the seeds
    losses: list[list[float]]  # per seed: the per-step training losses
    metrics: list[dict[str, float]]  # per seed: the final metrics


def _plain_pass(case: EngineCase, data: Any) -> _Timed:
    """The plain loop of each of the row's seeds, one after another, timed as one."""
    gc.collect()
    t0 = time.perf_counter()
    runs = [plain_run(member, data) for member in case.members()]
    wall = time.perf_counter() - t0
    return _Timed(
        wall, sum(r.train_s for r in runs), [r.losses for r in runs], [r.metrics for r in runs]
    )


# -- the engine ---------------------------------------------------------------------------
def _engine_run(case: EngineCase, data: Any, out_dir: Path) -> _Timed:
    """The engine's pass of ``case`` into ``out_dir``: ``run_one`` of its seed, or one
    ``runner.run_group`` of a group row's seeds.

    Raises:
        BnlabError: the group did not train as one group (``run_group`` fell back to
            training its runs one at a time; the message quotes its log).
    """
    spec = get_experiment(case.experiment)
    messages: list[str] = []
    gc.collect()
    t0 = time.perf_counter()
    if case.group == 1:
        outcomes = [
            run_one(
                spec,
                case.variant,
                case.seed,
                data,
                out_dir=out_dir,
                overrides=case.overrides,
                log=lambda _message: None,
            )
        ]
    else:
        outcomes = runner.run_group(
            spec,
            case.variant,
            case.seeds,
            data,
            out_dir=out_dir,
            overrides=case.overrides,
            log=messages.append,
        )
    wall = time.perf_counter() - t0
    if case.group > 1:
        _check_grouped(case, outcomes, messages)
    metrics = [outcome.metrics for outcome in outcomes]
    return _Timed(
        wall,
        sum(m.get("train_time_s", float("nan")) for m in metrics),
        [_train_losses(outcome.path) for outcome in outcomes],
        metrics,
    )


def _train_losses(path: Path) -> list[float]:
    """A run directory's per-step training losses, in step order (its metrics log)."""
    records = RunDir(path).read_metrics()
    train = sorted(
        (r["step"], r["loss"]) for r in records if r["tag"] == "train" and r["phase"] == "train"
    )
    return [loss for _, loss in train]


def _check_grouped(case: EngineCase, outcomes: Sequence[RunOutcome], messages: list[str]) -> None:
    """Refuse a group row whose runs did not train as one group.

    The observable is the runner's time charge: the runs of a group each get the same
    share of its wall time (``wall_time_s``, as in ``result.json``); runs trained one at a
    time each get their own. ``run_group`` falls back to that after any error of the group.
    """
    shares = {outcome.wall_time_s for outcome in outcomes}
    statuses = {outcome.status for outcome in outcomes}
    if len(outcomes) != case.group or statuses != {"done"} or len(shares) != 1:
        said = "; ".join(messages) or "no message"
        raise BnlabError(
            f"{case.label}: the engine did not train seeds {list(case.seeds)} as one group "
            f"(statuses {sorted(statuses)}, {len(shares)} distinct wall-time shares; "
            f"run_group said: {said})"
        )


# -- timing -------------------------------------------------------------------------------
def _spread(times: Sequence[float]) -> dict[str, Any]:
    return {
        "min_s": min(times),
        "median_s": statistics.median(times),
        "max_s": max(times),
        "times_s": list(times),
    }


@dataclass
class EngineRow:
    """One case timed both ways: wall seconds per repeat, in the order they ran.

    A group row's times are of the whole pass (the K seeds' group run, the K plain loops);
    its losses and metrics are per seed, in :attr:`EngineCase.seeds` order (one entry for
    a single-run row), from the last repeat of each side.
    """

    case: EngineCase
    steps: int  # optimizer steps per run
    num_threads: int | None
    engine_settings: dict[str, Any]
    engine: list[float]  # whole pass (run_one, or run_group of the seeds) per repeat
    plain: list[float]  # whole plain pass (the seeds' plain loops in turn) per repeat
    engine_train: list[float]  # the trainers' time (train_time_s, summed over the seeds)
    plain_train: list[float]
    engine_losses: list[list[float]]  # per seed, per step
    plain_losses: list[list[float]]
    engine_metrics: list[dict[str, float]]  # per seed: the final metrics
    plain_metrics: list[dict[str, float]]
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def ratio(self) -> float:
        """Engine / plain, the ratio of the two medians (< 1: the engine is faster)."""
        return statistics.median(self.engine) / statistics.median(self.plain)

    @property
    def train_ratio(self) -> float:
        """The same for the training loop alone (setup and final measurements left out)."""
        return statistics.median(self.engine_train) / statistics.median(self.plain_train)

    @property
    def paired_ratio(self) -> float:
        """The median of the per-repeat ratios (each repeat ran both, back to back)."""
        return statistics.median(e / p for e, p in zip(self.engine, self.plain, strict=True))

    def loss_max_abs_diff(self) -> float:
        """The largest per-step difference of the training losses, engine vs plain, over
        every seed (each seed's engine run against its own plain loop); NaN when a seed's
        step counts differ or a side lacks a seed."""
        if len(self.engine_losses) != len(self.plain_losses):
            return float("nan")
        worst = 0.0
        for engine, plain in zip(self.engine_losses, self.plain_losses, strict=True):
            if len(engine) != len(plain):
                return float("nan")
            pairs = zip(engine, plain, strict=True)
            worst = max(worst, max((abs(a - b) for a, b in pairs), default=0.0))
        return worst

    def as_dict(self) -> dict[str, Any]:
        """The row as JSON: ``final_loss`` and ``final_metrics`` are lists, one per seed."""
        common = [
            sorted(set(e) & set(p) - {"train_time_s"})
            for e, p in zip(self.engine_metrics, self.plain_metrics, strict=True)
        ]
        return {
            "label": self.case.label,
            "experiment": self.case.experiment,
            "variant": self.case.variant,
            "seed": self.case.seed,
            "seeds": list(self.case.seeds),
            "group": self.case.group,
            "overrides": dict(self.case.overrides),
            "steps": self.steps,
            "num_threads": self.num_threads,
            "flush_denormal": True,
            "engine_settings": self.engine_settings,
            "repeats": len(self.engine),
            "engine": _spread(self.engine),
            "plain": _spread(self.plain),
            "engine_train": _spread(self.engine_train),
            "plain_train": _spread(self.plain_train),
            "ratio": self.ratio,
            "paired_ratio": self.paired_ratio,
            "train_ratio": self.train_ratio,
            "final_loss": {
                "engine": [losses[-1] for losses in self.engine_losses],
                "plain": [losses[-1] for losses in self.plain_losses],
            },
            "loss_max_abs_diff": self.loss_max_abs_diff(),
            "final_metrics": {
                side: [{k: m[k] for k in keys} for m, keys in zip(metrics, common, strict=True)]
                for side, metrics in (
                    ("engine", self.engine_metrics),
                    ("plain", self.plain_metrics),
                )
            },
            **self.extra,
        }


def _engine_settings(config: Any) -> dict[str, Any]:
    """The config's engine fields that the plain loop does not copy (speed only)."""
    names = ("channels_last", "fused_adam", "checkpoint_every", "log_every")
    return {name: getattr(config, name) for name in names if hasattr(config, name)}


def time_engine_case(
    case: EngineCase, data: Any, *, repeats: int = 3, warmup: bool = True
) -> EngineRow:
    """Time ``case`` through the engine and as a plain loop, alternating, ``repeats`` times.

    Repeat ``r`` runs the engine first when ``r`` is even, the plain loop first when odd,
    each engine pass into a fresh temporary directory (removed after it, outside the
    timing), ``gc.collect()`` before each pass. With ``warmup``, one untimed pass of each at
    two steps comes first (kernels, oneDNN's primitives for both layouts, the allocator).
    A group row (``case.group >= 2``) goes through the same protocol: its engine pass is
    one ``runner.run_group`` of the seeds, its plain pass the seeds' plain loops in turn.

    Raises:
        ValueError: ``repeats < 1``, a case without a plain loop (:func:`plain_run`), or a
            group row of an experiment without ``run_group``.
        BnlabError: a group row's runs did not train as one group.
    """
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1; got {repeats}")
    plain_loop = _plain_for(case)
    spec: ExperimentSpec[Any, Any] = get_experiment(case.experiment)
    if case.group > 1 and spec.run_group is None:
        raise ValueError(
            f"{case.label}: {case.experiment} has no group run (run_group); use group=1"
        )
    config = spec.config_for(case.variant, case.seed, overrides=case.overrides)
    process_git_revision()  # once per process, as `bnlab run` does before its first run

    def engine_once(c: EngineCase) -> _Timed:
        with tempfile.TemporaryDirectory(prefix="bnlab-bench-engine-") as tmp:
            return _engine_run(c, data, Path(tmp))

    if warmup:
        short = dataclasses.replace(case, overrides={**case.overrides, plain_loop.steps_field: "2"})
        engine_once(short)
        _plain_pass(short, data)
    passes: dict[str, list[_Timed]] = {"engine": [], "plain": []}
    for r in range(repeats):
        for which in ("engine", "plain") if r % 2 == 0 else ("plain", "engine"):
            timed = engine_once(case) if which == "engine" else _plain_pass(case, data)
            passes[which].append(timed)
    engine, plain = passes["engine"], passes["plain"]
    return EngineRow(
        case=case,
        steps=int(getattr(config, plain_loop.steps_field)),
        num_threads=getattr(config, "num_threads", None),
        engine_settings=_engine_settings(config),
        engine=[t.wall_s for t in engine],
        plain=[t.wall_s for t in plain],
        engine_train=[t.train_s for t in engine],
        plain_train=[t.train_s for t in plain],
        engine_losses=engine[-1].losses,
        plain_losses=plain[-1].losses,
        engine_metrics=engine[-1].metrics,
        plain_metrics=plain[-1].metrics,
    )


def load_engine_data(
    experiments: Sequence[str], *, data_dir: str | Path | None = None, fake_dir: Path | None = None
) -> dict[str, Any]:
    """Each experiment's data, loaded once per distinct ``load_data`` (as ``bnlab run``).

    With ``fake_dir`` (``--quick``, tests) a small fake MNIST is written there and read
    instead of the real one.

    Raises:
        BnlabError: the data are missing (the message says where bnlab looked).
    """
    if fake_dir is not None:
        data_dir = write_fake_mnist(fake_dir)
    loaded: dict[int, Any] = {}
    out: dict[str, Any] = {}
    for name in experiments:
        load = get_experiment(name).load_data
        if id(load) not in loaded:
            loaded[id(load)] = load(Path(data_dir) if data_dir is not None else None, False)
        out[name] = loaded[id(load)]
    return out


def engine_rows(
    cases: Sequence[EngineCase],
    data: Mapping[str, Any],
    *,
    repeats: int = 3,
    quiet: bool = False,
    on_row: Callable[[EngineRow], None] | None = None,
) -> list[EngineRow]:
    """Time every case (:func:`time_engine_case`) on ``data[case.experiment]``.

    With ``quiet`` each row waits for a quiet machine and is repeated when others
    disturbed it (:func:`~bnlab.bench.machine.measure_quietly`); each row records the
    interference it was measured under.
    """
    rows = []
    for case in cases:
        row, level, attempts = measure_quietly(
            lambda c=case: time_engine_case(c, data[c.experiment], repeats=repeats),  # type: ignore[misc]
            quiet=quiet,
        )
        row.extra |= {"interference": level, "attempts": attempts}
        rows.append(row)
        if on_row is not None:
            on_row(row)
    return rows


def engine_benchmark(
    *,
    quick: bool = False,
    data_dir: str | Path | None = None,
    repeats: int = 3,
    quiet: bool = False,
    cases: Sequence[EngineCase] | None = None,
    data: Mapping[str, Any] | None = None,
    on_row: Callable[[EngineRow], None] | None = None,
) -> dict[str, Any]:
    """The engine rows (single runs and group runs) and the batched-seed row of
    ``bnlab bench``, JSON-ready.

    Args:
        quick: :data:`QUICK_ENGINE_CASES` on a small fake MNIST, 2 rounds of batched seeds.
        data_dir: the MNIST directory (default: bnlab's sources, as ``bnlab run``).
        repeats: engine/plain pairs per row.
        quiet, on_row: as :func:`engine_rows`.
        cases: the rows (default :data:`ENGINE_CASES`, or the quick ones).
        data: experiment name -> its data, loaded already (:func:`load_engine_data` of
            :data:`ENGINE_EXPERIMENTS`); default: loaded here.

    Returns:
        ``{"rows": [EngineRow dicts], "batched_seeds": {...}, "data": provenance,
        "repeats", "flush_denormal"}``.

    Raises:
        BnlabError: the MNIST files are missing (not with ``quick``).
    """
    if cases is None:
        cases = QUICK_ENGINE_CASES if quick else ENGINE_CASES
    with tempfile.TemporaryDirectory(prefix="bnlab-bench-data-") as tmp:
        if data is None:
            fake = Path(tmp) / "mnist" if quick else None
            names = sorted({c.experiment for c in cases} | {"sigmoid-mlp"})
            data = load_engine_data(names, data_dir=data_dir, fake_dir=fake)
        rows = engine_rows(cases, data, repeats=repeats, quiet=quiet, on_row=on_row)
        if quick:
            seeds = batched_seeds(data["sigmoid-mlp"], budget_s=0.0, min_rounds=2, max_rounds=2)
        else:
            seeds, level, attempts = measure_quietly(
                lambda: batched_seeds(data["sigmoid-mlp"]), quiet=quiet
            )
            seeds |= {"interference": level, "attempts": attempts}
        provenance = data_provenance(data["sigmoid-mlp"])
    return {
        "rows": [row.as_dict() for row in rows],
        "batched_seeds": seeds,
        "data": provenance,
        "repeats": repeats,
        "flush_denormal": True,
    }


# -- batched seeds ------------------------------------------------------------------------
# What stacking the seeds could save at most: the training step alone, stacked without the
# engine's exactness (``bmm``: one cross-entropy call over the stack, one sigmoid call per
# layer; model k's values equal its separate network's only up to rounding). The engine's
# group run (sigmoid_mlp.run_group) keeps every per-model call that exactness needs; the
# group rows of the engine table measure it, with everything else a run does.
class SeedBatch:
    """K sigmoid MLPs (weight seeds ``0..K-1``), each on its own batch, stepped three ways.

    * ``separate``: K models and K ``torch.optim.SGD`` optimizers, one after the other;
    * ``vmap``: one model's code over parameters stacked by ``torch.func.stack_module_state``,
      ``vmap(grad(loss))`` through ``functional_call``, then the SGD update on the stacks;
    * ``bmm``: the weights as ``(K, in, out)`` tensors, each layer one ``torch.baddbmm``,
      one summed loss over the whole stack (each model's gradient is still its own) and
      one SGD.

    All three start from the same weights and compute the same updates, so their weights
    stay equal up to float rounding (:meth:`weights`), not bit for bit: an upper bound on
    the saving, not the engine's group run
    (:class:`~bnlab.models.mlp_stack.StackedSigmoidMLP`, exact per model).

    Args:
        config: the seed's MLP; only ``norm="none"`` (BN's batch statistics under vmap
            would need a functional batch norm).
        images: ``(K, B, 784)``; labels: ``(K, B)``.
    """

    def __init__(self, config: sigmoid_mlp.SigmoidMLPConfig, images: Tensor, labels: Tensor):
        if config.norm != "none":
            raise ValueError(f"SeedBatch batches the MLP without BN; got norm={config.norm!r}")
        if images.dim() != 3 or labels.shape != images.shape[:2]:
            raise ValueError(
                f"expected images (K, B, D) and labels (K, B); got {tuple(images.shape)} "
                f"and {tuple(labels.shape)}"
            )
        self.k = images.shape[0]
        self.images, self.labels = images, labels
        self.lr = config.learning_rate
        dims = (images.shape[2], 10)  # MNIST pixels, classes
        self.models: list[nn.Module] = [
            sigmoid_mlp.build_model(dataclasses.replace(config, seed=s), *dims)
            for s in range(self.k)
        ]
        self.optimizers = [torch.optim.SGD(m.parameters(), lr=self.lr) for m in self.models]
        # torch.func: stacked copies of the same parameters, and a weightless model skeleton.
        params, _ = torch.func.stack_module_state(self.models)
        self.params = {name: p.detach().clone() for name, p in params.items()}
        self.skeleton = sigmoid_mlp.build_model(config, *dims).to("meta")

        def loss(p: dict[str, Tensor], x: Tensor, y: Tensor) -> Tensor:
            logits = torch.func.functional_call(self.skeleton, p, (x,))
            return sigmoid_mlp.summed_cross_entropy(logits, y)

        self._grads = torch.func.vmap(torch.func.grad(loss))
        # baddbmm: (K, in, out) weights and (K, 1, out) biases, TF's layout.
        self.stacked: list[Tensor] = []
        for group in zip(*(_linears(m) for m in self.models), strict=True):
            weights = torch.stack([lin.weight.detach().t() for lin in group])
            biases = torch.stack([lin.bias.detach()[None, :] for lin in group])
            self.stacked += [weights.requires_grad_(True), biases.requires_grad_(True)]
        self.bmm_optimizer = torch.optim.SGD(self.stacked, lr=self.lr)

    def step_single(self) -> None:
        """One step of seed 0's model alone: what a single run (``--no-group``) trains."""
        loss = sigmoid_mlp.summed_cross_entropy(self.models[0](self.images[0]), self.labels[0])
        self.optimizers[0].zero_grad(set_to_none=True)
        loss.backward()
        self.optimizers[0].step()

    def step_separate(self) -> None:
        for model, opt, x, y in zip(
            self.models, self.optimizers, self.images, self.labels, strict=True
        ):
            loss = sigmoid_mlp.summed_cross_entropy(model(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

    def step_vmap(self) -> None:
        grads = self._grads(self.params, self.images, self.labels)
        with torch.no_grad():
            for name, p in self.params.items():
                p.sub_(grads[name], alpha=self.lr)

    def step_bmm(self) -> None:
        h = self.images
        n = len(self.stacked) // 2
        for i in range(n):
            z = torch.baddbmm(self.stacked[2 * i + 1], h, self.stacked[2 * i])
            h = torch.sigmoid(z) if i < n - 1 else z
        loss = F.cross_entropy(h.reshape(-1, h.shape[-1]), self.labels.reshape(-1), reduction="sum")
        self.bmm_optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.bmm_optimizer.step()

    def weights(self, how: str) -> list[Tensor]:
        """The stacked ``(K, in, out)`` weight matrices (biases left out) after ``how``."""
        if how == "separate":
            groups = zip(*(_linears(m) for m in self.models), strict=True)
            return [torch.stack([lin.weight.detach().t() for lin in group]) for group in groups]
        if how == "vmap":
            names = [n for n in self.params if n.endswith("weight")]
            return [self.params[n].transpose(1, 2) for n in names]
        if how == "bmm":
            return [t.detach() for t in self.stacked[0::2]]
        raise ValueError(f"unknown way {how!r}; expected one of: separate, vmap, bmm")


def _linears(model: nn.Module) -> list[nn.Linear]:
    """The MLP's dense layers in order (hidden ones, then the logits)."""
    return [m for m in model.modules() if isinstance(m, nn.Linear)]


def _seed_batches(data: Any, k: int, batch_size: int) -> tuple[Tensor, Tensor]:
    """The first training batch of each seed's own order (``TrainBatches(seed=s)``)."""
    pairs = [TrainBatches(data.train, batch_size, seed=s).next_batch() for s in range(k)]
    images = torch.stack([x.reshape(x.shape[0], -1) for x, _ in pairs])
    return images, torch.stack([y for _, y in pairs])


def batched_seeds(
    data: Any,
    *,
    k: int = 3,
    num_threads: int = 1,
    budget_s: float = 5.0,
    min_rounds: int = 10,
    max_rounds: int = 500,
) -> dict[str, Any]:
    """Per model-step time of K sigmoid MLPs trained separately, under vmap, and by bmm.

    One thread, denormals flushed (as the runner runs sigmoid-mlp), the seed's batch of
    60; the candidates (and one model alone) in interleaved rounds
    (:func:`~bnlab.bench.timing.interleaved`). ``bmm``/``single`` is the most that
    stacking the seeds' training step could save per model (:class:`SeedBatch`); the
    engine's exact group run is measured by the group rows (:data:`ENGINE_CASES`).

    Returns:
        ``{"k", "batch", "num_threads", "times": {way: per model-step Timing dict},
        "ratios": {"vmap/separate", "bmm/separate"}}``.
    """
    config = sigmoid_mlp.SigmoidMLPConfig()
    images, labels = _seed_batches(data, k, config.batch_size)
    with _settings(num_threads, flush_denormal=True):
        seeds = SeedBatch(config, images, labels)
        timings = interleaved(
            {
                "single": seeds.step_single,
                "separate": seeds.step_separate,
                "vmap": seeds.step_vmap,
                "bmm": seeds.step_bmm,
            },
            min_rounds=min_rounds,
            max_rounds=max_rounds,
            budget_s=budget_s,
            warmup=3,
        )
    per_model = {
        name: {
            key: value / (1 if name == "single" else k) if key.endswith("_s") else value
            for key, value in t.as_dict().items()
        }
        for name, t in timings.items()
    }
    return {
        "k": k,
        "batch": config.batch_size,
        "num_threads": num_threads,
        "times": per_model,
        # Per model-step: a batched step trains k models, the single step one.
        "ratios": {
            **{
                f"{way}/separate": paired_ratio(timings[way], timings["separate"])
                for way in ("vmap", "bmm")
            },
            **{
                f"{way}/single": paired_ratio(timings[way], timings["single"]) / k
                for way in ("vmap", "bmm")
            },
        },
    }


# -- the table ---------------------------------------------------------------------------
def format_engine(engine: Mapping[str, Any]) -> str:
    """The engine rows (:meth:`EngineRow.as_dict`) and the batched-seed row as text."""
    head = (
        f"{'row':30s} {'steps':>6s} {'engine s':>9s} {'plain s':>9s} "
        f"{'engine/plain':>12s} {'train e/p':>9s} {'loss diff':>9s}"
    )
    lines = [
        "engine (bnlab run: one run, or one group run of a row's K seeds) vs plain PyTorch "
        f"loops (the K in turn), median of "
        f"{engine['rows'][0]['repeats'] if engine['rows'] else 0} alternating repeats:",
        head,
        "-" * len(head),
    ]
    for row in engine["rows"]:
        lines.append(
            f"{row['label']:30s} {row['steps']:6d} "
            f"{row['engine']['median_s']:9.2f} {row['plain']['median_s']:9.2f} "
            f"{row['ratio']:12.3f} {row['train_ratio']:9.3f} {row['loss_max_abs_diff']:9.1e}"
        )
    lines.append(
        "wall s per pass (median): one run, or all K seeds of a group row; steps: per run; "
        "engine/plain < 1: the engine is faster;\ntrain e/p: the training loops alone; "
        "loss diff: the largest per-step |engine - plain| training loss, over a row's "
        "seeds;\nthreads as configured, denormals flushed on both sides"
    )
    seeds = engine.get("batched_seeds")
    if seeds:
        ms = {name: t["median_s"] * 1e3 for name, t in seeds["times"].items()}
        lines.append(
            f"batched seeds, the most stacking could save (sigmoid MLP, K={seeds['k']}, "
            f"{seeds['num_threads']} thread, the step alone, not exact per model; the "
            f"engine's exact group run: the group rows), ms per model-step: one model alone "
            f"{ms.get('single', float('nan')):.3f}, K models in turn {ms['separate']:.3f}, "
            f"vmap {ms['vmap']:.3f}, bmm {ms['bmm']:.3f}; "
            + ", ".join(f"{name} {value:.2f}x" for name, value in seeds["ratios"].items())
        )
    return "\n".join(lines)
