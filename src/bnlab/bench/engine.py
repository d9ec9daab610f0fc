"""The engine against a plain PyTorch loop: one run of an experiment, timed both ways.

*Engine* is what ``bnlab run`` does for one (variant, seed): :func:`runner.run_one` into a
fresh run directory, with everything that comes with it (config, environment and data
records, the metrics log, checkpoints, the experiment's measurements, and the config's
engine settings: channels-last model and fused Adam for deep-cnn, its thread count).
*Plain loop* is what one writes by hand for the same run: the same model builder in the
default memory format, plain ``torch.optim.Adam``/``SGD``, the same loss, batches, steps
and measurements at the same steps, no files. Both run on the config's thread count with
denormals flushed (the runner flushes them for these experiments). The two alternate over
several repeats; the ratio is engine/plain of the median wall times.

Also :func:`batched_seeds`: K sigmoid MLPs trained as separate models or as one batched
model (``torch.func.vmap`` over stacked parameters, or stacked weights through
``torch.baddbmm``), per model-step on one thread.
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
from bnlab.experiments import deep_cnn, runner, sigmoid_mlp
from bnlab.experiments.base import ExperimentSpec
from bnlab.experiments.registry import get_experiment
from bnlab.experiments.runner import data_provenance, run_one
from bnlab.train.env import process_git_revision
from bnlab.train.evaluate import evaluate, predict_one_at_a_time
from bnlab.train.rundir import RunDir

__all__ = [
    "ENGINE_CASES",
    "ENGINE_EXPERIMENTS",
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
    """One row: an experiment's variant at a shortened length (``overrides``, as ``--set``)."""

    experiment: str  # "deep-cnn" or "sigmoid-mlp" (the experiments with a plain loop here)
    variant: str
    overrides: Mapping[str, str] = field(default_factory=dict)
    seed: int = 0

    @property
    def label(self) -> str:
        return f"{self.experiment}/{self.variant}"


#: The experiments the engine rows read data for (the batched-seed row: sigmoid-mlp's).
ENGINE_EXPERIMENTS: tuple[str, ...] = ("deep-cnn", "sigmoid-mlp")

#: The rows of ``bnlab bench --engine``: each run shortened, its own evaluation schedule
#: kept (deep-cnn: validation every 100 batches, the training batch every 25; sigmoid-mlp:
#: the test set with batch statistics every 50 steps), checkpoints and logs as configured.
ENGINE_CASES: tuple[EngineCase, ...] = (
    EngineCase("deep-cnn", "bn", {"num_batches": "200"}),
    EngineCase("deep-cnn", "no-bn", {"num_batches": "200"}),
    EngineCase("sigmoid-mlp", "no-bn", {"num_steps": "4000"}),
    EngineCase("sigmoid-mlp", "bn", {"num_steps": "4000"}),
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
    """Run ``case`` as a plain loop, on the config's threads with denormals flushed.

    Raises:
        ValueError: an experiment or variant without a plain loop here.
        UnknownNameError, ConfigError: an unknown variant or a bad override.
    """
    plain = _plain_for(case)
    spec = get_experiment(case.experiment)
    config = spec.config_for(case.variant, case.seed, overrides=case.overrides)
    with _settings(getattr(config, "num_threads", None), spec.flush_denormal):
        return plain.loop(config, data)


# -- the engine ---------------------------------------------------------------------------
def _engine_run(
    case: EngineCase, data: Any, out_dir: Path
) -> tuple[float, dict[str, float], list[float]]:
    """``run_one`` of ``case`` into ``out_dir``: (wall s, final metrics, per-step losses)."""
    spec = get_experiment(case.experiment)
    t0 = time.perf_counter()
    outcome = run_one(
        spec,
        case.variant,
        case.seed,
        data,
        out_dir=out_dir,
        overrides=case.overrides,
        log=lambda _message: None,
    )
    wall = time.perf_counter() - t0
    records = RunDir(outcome.path).read_metrics()
    train = sorted(
        (r["step"], r["loss"]) for r in records if r["tag"] == "train" and r["phase"] == "train"
    )
    return wall, outcome.metrics, [loss for _, loss in train]


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
    """One case timed both ways: wall seconds per repeat, in the order they ran."""

    case: EngineCase
    steps: int
    num_threads: int | None
    engine_settings: dict[str, Any]
    engine: list[float]  # whole run (run_one) per repeat
    plain: list[float]  # whole plain run per repeat
    engine_train: list[float]  # the trainer's time (train_time_s): loop + in-loop measurements
    plain_train: list[float]
    engine_losses: list[float]
    plain_losses: list[float]
    engine_metrics: dict[str, float]
    plain_metrics: dict[str, float]
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
        """The largest per-step difference of the training losses (engine vs plain)."""
        if len(self.engine_losses) != len(self.plain_losses):
            return float("nan")
        pairs = zip(self.engine_losses, self.plain_losses, strict=True)
        return max((abs(a - b) for a, b in pairs), default=0.0)

    def as_dict(self) -> dict[str, Any]:
        common = sorted(set(self.engine_metrics) & set(self.plain_metrics) - {"train_time_s"})
        return {
            "experiment": self.case.experiment,
            "variant": self.case.variant,
            "seed": self.case.seed,
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
            "final_loss": {"engine": self.engine_losses[-1], "plain": self.plain_losses[-1]},
            "loss_max_abs_diff": self.loss_max_abs_diff(),
            "final_metrics": {
                "engine": {k: self.engine_metrics[k] for k in common},
                "plain": {k: self.plain_metrics[k] for k in common},
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
    each engine run into a fresh temporary directory (removed after it, outside the
    timing). With ``warmup``, one untimed run of each at two steps comes first (kernels,
    oneDNN's primitives for both layouts, the allocator).

    Raises:
        ValueError: ``repeats < 1``, or a case without a plain loop (:func:`plain_run`).
    """
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1; got {repeats}")
    plain_loop = _plain_for(case)
    spec: ExperimentSpec[Any, Any] = get_experiment(case.experiment)
    config = spec.config_for(case.variant, case.seed, overrides=case.overrides)
    process_git_revision()  # once per process, as `bnlab run` does before its first run

    def engine_once(c: EngineCase) -> tuple[float, dict[str, float], list[float]]:
        with tempfile.TemporaryDirectory(prefix="bnlab-bench-engine-") as tmp:
            gc.collect()
            return _engine_run(c, data, Path(tmp))

    def plain_once(c: EngineCase) -> tuple[float, PlainRun]:
        gc.collect()
        t0 = time.perf_counter()
        result = plain_run(c, data)
        return time.perf_counter() - t0, result

    if warmup:
        short = dataclasses.replace(case, overrides={**case.overrides, plain_loop.steps_field: "2"})
        engine_once(short)
        plain_once(short)
    engine: list[float] = []
    plain: list[float] = []
    engine_train: list[float] = []
    plain_train: list[float] = []
    engine_result: tuple[list[float], dict[str, float]] = ([], {})
    plain_result = PlainRun([], {}, 0.0)
    for r in range(repeats):
        for which in ("engine", "plain") if r % 2 == 0 else ("plain", "engine"):
            if which == "engine":
                wall, metrics, losses = engine_once(case)
                engine.append(wall)
                engine_train.append(metrics.get("train_time_s", float("nan")))
                engine_result = (losses, metrics)
            else:
                wall, plain_result = plain_once(case)
                plain.append(wall)
                plain_train.append(plain_result.train_s)
    return EngineRow(
        case=case,
        steps=int(getattr(config, plain_loop.steps_field)),
        num_threads=getattr(config, "num_threads", None),
        engine_settings=_engine_settings(config),
        engine=engine,
        plain=plain,
        engine_train=engine_train,
        plain_train=plain_train,
        engine_losses=engine_result[0],
        plain_losses=plain_result.losses,
        engine_metrics=engine_result[1],
        plain_metrics=plain_result.metrics,
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
    """The engine rows and the batched-seed row of ``bnlab bench``, JSON-ready.

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
class SeedBatch:
    """K sigmoid MLPs (weight seeds ``0..K-1``), each on its own batch, stepped three ways.

    * ``separate``: K models and K ``torch.optim.SGD`` optimizers, one after the other;
    * ``vmap``: one model's code over parameters stacked by ``torch.func.stack_module_state``,
      ``vmap(grad(loss))`` through ``functional_call``, then the SGD update on the stacks;
    * ``bmm``: the weights as ``(K, in, out)`` tensors, each layer one ``torch.baddbmm``,
      the K summed losses added (each model's gradient is its own) and one SGD.

    All three start from the same weights and compute the same updates, so their weights
    stay equal up to float rounding (:meth:`weights`).

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
        """One step of seed 0's model alone: what each of the engine's runs trains."""
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
    60; the three candidates in interleaved rounds (:func:`~bnlab.bench.timing.interleaved`).

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


# -- the table ----------------------------------------------------------------------------
def format_engine(engine: Mapping[str, Any]) -> str:
    """The engine rows (:meth:`EngineRow.as_dict`) and the batched-seed row as text."""
    head = (
        f"{'experiment/variant':22s} {'steps':>6s} {'engine s':>9s} {'plain s':>9s} "
        f"{'engine/plain':>12s} {'train e/p':>9s} {'loss diff':>9s}"
    )
    lines = [
        f"engine (bnlab run, one run) vs a plain PyTorch loop, median of "
        f"{engine['rows'][0]['repeats'] if engine['rows'] else 0} alternating repeats:",
        head,
        "-" * len(head),
    ]
    for row in engine["rows"]:
        lines.append(
            f"{row['experiment'] + '/' + row['variant']:22s} {row['steps']:6d} "
            f"{row['engine']['median_s']:9.2f} {row['plain']['median_s']:9.2f} "
            f"{row['ratio']:12.3f} {row['train_ratio']:9.3f} {row['loss_max_abs_diff']:9.1e}"
        )
    lines.append(
        "wall s per run (median); engine/plain < 1: the engine is faster; train e/p: the "
        "training loop alone;\nloss diff: the largest per-step |engine - plain| training "
        "loss; threads as configured, denormals flushed on both sides"
    )
    seeds = engine.get("batched_seeds")
    if seeds:
        ms = {name: t["median_s"] * 1e3 for name, t in seeds["times"].items()}
        lines.append(
            f"batched seeds (sigmoid MLP, K={seeds['k']}, {seeds['num_threads']} thread), ms per "
            f"model-step: one model alone {ms.get('single', float('nan')):.3f}, "
            f"K models in turn {ms['separate']:.3f}, vmap {ms['vmap']:.3f}, bmm {ms['bmm']:.3f}; "
            + ", ".join(f"{name} {value:.2f}x" for name, value in seeds["ratios"].items())
        )
    return "\n".join(lines)
