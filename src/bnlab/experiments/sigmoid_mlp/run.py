"""sigmoid-mlp's training: the network of a config, the seed's loss, the layer-2 probe's
statistics, and ``run`` (training, then the single-example pitfall or its fix).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from bnlab.data import TrainBatches
from bnlab.experiments.base import RunContext
from bnlab.experiments.sigmoid_mlp.config import TEST_TAG, SigmoidMLPConfig
from bnlab.models.mlp import SigmoidMLP
from bnlab.models.mlp_stack import StackedSigmoidMLP
from bnlab.train import Hook, Trainer, every, predict_one_at_a_time
from bnlab.train.evaluate import eval_mode
from bnlab.train.group import GroupTrainer
from bnlab.train.io import torch_save_atomic
from bnlab.train.loop import FitResult

__all__ = ["build_model", "probe_statistics", "run", "run_group", "summed_cross_entropy"]


def build_model(
    config: SigmoidMLPConfig, input_dim: int = 784, num_classes: int = 10
) -> SigmoidMLP:
    """The network of ``config``, from the predetermined weights of ``config.seed``."""
    return SigmoidMLP(
        config.norm,
        weight_seed=config.seed,
        sizes=(input_dim, *config.hidden, num_classes),
        output_bias=config.output_bias,
        eps=config.bn_eps,
        decay=config.pop_decay,
        weight_std=config.weight_std,
        probe_layer=2,
    )


def summed_cross_entropy(logits: Tensor, labels: Tensor) -> Tensor:
    """The seed's loss: ``-reduce_sum(y_ * log(softmax(logits)))``, summed over the batch.

    Computed from ``log_softmax`` (the seed's ``log(softmax)`` can reach ``log(0)``); the
    value and gradient are the same wherever the seed's are finite.
    """
    return F.cross_entropy(logits, labels, reduction="sum")


def probe_statistics(probe: Tensor, neurons: int, percentiles: Sequence[float]) -> dict[str, float]:
    """Mean and percentiles over examples of the first ``neurons`` columns of ``probe``.

    Returns ``{"z_mean_i": ..., "z_p15_i": ..., ...}`` for ``i < neurons`` (the seed's
    ``np.mean(z2, axis=0)[:5]`` and BN2015 Fig. 1's 15/50/85th percentiles).

    >>> stats = probe_statistics(torch.arange(10.0).reshape(10, 1), 1, (50.0,))
    >>> stats["z_mean_0"], stats["z_p50_0"]
    (4.5, 4.5)
    """
    z = probe[:, :neurons].double()
    out: dict[str, float] = {}
    means = z.mean(dim=0).tolist()
    q = torch.tensor([p / 100.0 for p in percentiles], dtype=z.dtype)
    quantiles = torch.quantile(z, q, dim=0).tolist() if percentiles else []
    for i in range(neurons):
        out[f"z_mean_{i}"] = means[i]
        for p, row in zip(percentiles, quantiles, strict=True):
            out[f"z_p{p:g}_{i}"] = row[i]
    return out


@contextlib.contextmanager
def _population_frozen(model: torch.nn.Module, freeze: bool) -> Iterator[None]:
    """Restore every ``pop_*`` buffer on exit when ``freeze`` (an evaluation, no side effect)."""
    saved = (
        {name: buf.clone() for name, buf in model.named_buffers() if "pop_" in name}
        if freeze
        else {}
    )
    try:
        yield
    finally:
        if saved:
            buffers = dict(model.named_buffers())
            with torch.no_grad():
                for name, value in saved.items():
                    buffers[name].copy_(value)


def run(config: SigmoidMLPConfig, data: Any, ctx: RunContext) -> dict[str, float]:
    """Train one seed of one variant as the seed does; return the final metrics.

    Every ``eval_every`` batches (``i % 50 == 0``, after the step) logs a ``test`` record:
    the accuracy on the whole test set computed as the seed's training graph does (batch
    statistics of the 10,000 test images for the BN nets), its mean loss, and the mean and
    percentiles of the layer-2 sigmoid inputs of the first ``probe_neurons`` neurons.

    Then, by ``norm``: ``"batch"`` feeds the first ``single_image_count`` test images one at
    a time (batch statistics of one example: the pitfall); ``"population"`` saves the
    trained weights and population statistics, rebuilds the network in inference mode,
    restores them, and measures single-example and whole-test-set accuracy with population
    statistics.
    """
    return _run(config, data, ctx)


def _run(config: SigmoidMLPConfig, data: Any, ctx: RunContext) -> dict[str, float]:
    seed = _Seed(config, data, ctx)
    return seed.finish(seed.trainer.fit())


def _test_values(
    config: SigmoidMLPConfig, logits: Tensor, probe: Tensor, labels: Tensor
) -> dict[str, float]:
    """A ``test`` record from one network's test-set logits and layer-2 probe."""
    values = {
        "accuracy": (logits.argmax(dim=1) == labels).double().mean().item(),
        "loss": F.cross_entropy(logits, labels).item(),
    }
    values.update(probe_statistics(probe, config.probe_neurons, config.percentiles))
    return values


class _Seed:
    """One run's network, optimizer, sampler and trainer, and its measurements after
    training (:meth:`finish`); shared by :func:`run` and :func:`run_group`."""

    def __init__(
        self,
        config: SigmoidMLPConfig,
        data: Any,
        ctx: RunContext,
        test_hook: Callable[[int], dict[str, float]] | None = None,
    ) -> None:
        self.config, self.ctx = config, ctx
        test = data.test
        self.test_x, self.test_y = test.flat(), test.labels
        self.num_classes = data.num_classes
        self.model = build_model(config, self.test_x.shape[1], self.num_classes)
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=config.learning_rate)
        batches = TrainBatches(data.train, config.batch_size, seed=config.seed)
        measure = (lambda h: test_hook(h.step)) if test_hook else (lambda _h: self.measure_test())
        self.trainer = Trainer(
            self.model,
            self.optimizer,
            summed_cross_entropy,
            batches,
            config.num_steps,
            run=ctx.run,
            hooks=(Hook(TEST_TAG, measure, every(config.eval_every)),),
            checkpoint_every=config.checkpoint_every,
            log_every=config.log_every,
            progress=ctx.progress,
            desc=ctx.desc,
            is_main=ctx.is_main,
        )

    def measure_test(self) -> dict[str, float]:
        # The seed evaluates with its training graph: batch statistics of the test set
        # (its first BN net has no others), gradients off.
        freeze = not self.config.eval_updates_population
        with _population_frozen(self.model, freeze), torch.no_grad():
            self.model.train()
            logits, probe = self.model.forward_with_probe(self.test_x)
        return _test_values(self.config, logits, probe, self.test_y)

    def finish(self, fit: FitResult) -> dict[str, float]:
        """The final test record and the measurements after training; the final metrics."""
        config, ctx, model = self.config, self.ctx, self.model
        test_x, test_y = self.test_x, self.test_y
        final = self.measure_test()
        self.trainer.metrics.append(
            {"phase": "train", "tag": "final", "step": config.num_steps, **final}
        )
        self.trainer.metrics.flush()

        metrics: dict[str, float] = {
            "test_accuracy": final["accuracy"],
            "test_loss": final["loss"],
            "train_time_s": fit.elapsed_s,
        }

        n = min(config.single_image_count, len(test_x))
        images, labels = test_x[:n], test_y[:n]
        if config.norm == "batch":
            # The pitfall: this network has only batch statistics, so one example at a time
            # normalizes every layer-1 and layer-2 input to 0 and the output is constant.
            predictions = predict_one_at_a_time(model, images)
            metrics.update(_single_image_metrics(predictions, labels, "single_image"))
            _write_predictions(ctx, labels, predictions, "batch statistics, one at a time")
        elif config.norm == "population":
            metrics.update(
                _restore_and_infer(config, model, ctx, test_x, test_y, n, self.num_classes)
            )
        return metrics


def run_group(
    configs: Sequence[SigmoidMLPConfig], data: Any, ctxs: Sequence[RunContext]
) -> list[dict[str, float]]:
    """Train several seeds of one variant as one stacked model; each run's final metrics.

    ``configs[k]`` (differing from the others only in ``seed``) trains into ``ctxs[k].run``
    exactly as :func:`run` would, bit for bit: its own initial weights and batch order,
    its own metrics log, ``test`` records and checkpoints (the single-run format), its own
    measurements after training. The K networks train as one
    :class:`~bnlab.models.mlp_stack.StackedSigmoidMLP` (every kernel call laid out as the
    separate network's, see there); the test set is measured for all K at once. After
    training each network is measured on its own, as :func:`run` does. Time is charged
    evenly: ``train_time_s`` is each run's share (see :class:`GroupTrainer`).

    Raises:
        ValueError: configs that differ in more than ``seed``, or a count that differs
            from ``ctxs``.
        GroupStateError: the runs' checkpoints are at different steps (train them alone).
    """
    if len(configs) != len(ctxs) or not configs:
        raise ValueError(f"expected one context per config; got {len(configs)} and {len(ctxs)}")
    shapes = {dataclasses.replace(c, seed=0) for c in configs}
    if len(shapes) != 1:
        raise ValueError("the configs of a group must differ only in their seed")
    config = configs[0]
    cache: dict[int, list[dict[str, float]]] = {}
    stacked: list[StackedSigmoidMLP] = []  # the stack, built below from the members' models
    test_x, test_y = data.test.flat(), data.test.labels

    def measure_all(step: int) -> list[dict[str, float]]:
        # One stacked forward over the shared test set for every member's hook at `step`.
        if step not in cache:
            cache.clear()
            stack = stacked[0]
            with stack.population_frozen(not config.eval_updates_population), torch.no_grad():
                logits, probe = stack.forward_with_probe(test_x)
            cache[step] = [
                _test_values(config, logits[k], probe[k], test_y) for k in range(len(configs))
            ]
        return cache[step]

    def member(k: int) -> Callable[[int], dict[str, float]]:
        return lambda step: measure_all(step)[k]

    seeds = [
        _Seed(c, data, ctx, member(k)) for k, (c, ctx) in enumerate(zip(configs, ctxs, strict=True))
    ]
    models = [s.model for s in seeds]
    stack = StackedSigmoidMLP(models)
    stacked.append(stack)
    optimizer = torch.optim.SGD(stack.parameters(), lr=config.learning_rate)

    def step(xs: list[Tensor], ys: list[Tensor]) -> Tensor:
        logits = stack(torch.stack(xs))
        # Each run's own loss call: the same summation as its single run's.
        losses = [summed_cross_entropy(logits[k], y) for k, y in enumerate(ys)]
        optimizer.zero_grad(set_to_none=True)
        torch.stack(losses).sum().backward()
        optimizer.step()
        return torch.stack([loss.detach() for loss in losses])

    desc = f"{ctxs[0].experiment}/{ctxs[0].variant}/seeds-{','.join(str(c.seed) for c in configs)}"
    group = GroupTrainer(
        [s.trainer for s in seeds],
        step,
        sync=lambda: stack.push(models),
        load=lambda: stack.pull(models),
        progress=ctxs[0].progress,
        desc=desc,
    )
    fits = group.fit()
    return [s.finish(fit) for s, fit in zip(seeds, fits, strict=True)]


def _single_image_metrics(predictions: Tensor, labels: Tensor, prefix: str) -> dict[str, float]:
    counts = torch.bincount(predictions, minlength=1)
    return {
        f"{prefix}_accuracy": (predictions == labels).double().mean().item(),
        f"{prefix}_distinct_classes": float(len(torch.unique(predictions))),
        f"{prefix}_majority_class": float(int(counts.argmax())),
        f"{prefix}_majority_share": float(counts.max()) / max(1, len(predictions)),
    }


def _write_predictions(ctx: RunContext, labels: Tensor, predictions: Tensor, how: str) -> None:
    if ctx.is_main:
        ctx.run.write_artefact(
            "first_test_predictions.json",
            json.dumps(
                {"how": how, "labels": labels.tolist(), "predictions": predictions.tolist()}
            ).encode(),
        )


def _restore_and_infer(
    config: SigmoidMLPConfig,
    trained: SigmoidMLP,
    ctx: RunContext,
    test_x: Tensor,
    test_y: Tensor,
    n: int,
    num_classes: int,
) -> dict[str, float]:
    """The seed's part 2 ending: save, rebuild with ``is_training=False``, restore, predict."""
    if ctx.is_main:
        path = ctx.run.artefacts / "model.pt"  # the seed's saver.save(sess, 'temp-bn-save')
        torch_save_atomic(trained.state_dict(), path)
        state = torch.load(path, map_location="cpu", weights_only=True)
    else:
        state = trained.state_dict()
    # build_graph(is_training=False): a fresh network in inference mode, whose every
    # variable (weights, gamma, beta, population statistics) is then restored.
    model = build_model(config, test_x.shape[1], num_classes)
    model.eval()
    model.load_state_dict(state)
    predictions = predict_one_at_a_time(model, test_x[:n])
    _write_predictions(ctx, test_y[:n], predictions, "population statistics, one at a time")
    with eval_mode(model), torch.inference_mode():
        logits = model(test_x)
    out = _single_image_metrics(predictions, test_y[:n], "single_image")
    out["inference_test_accuracy"] = (logits.argmax(dim=1) == test_y).double().mean().item()
    out["inference_test_loss"] = F.cross_entropy(logits, test_y).item()
    return out
