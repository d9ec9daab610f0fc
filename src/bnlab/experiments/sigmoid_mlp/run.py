"""sigmoid-mlp's training: the network of a config, the seed's loss, the layer-2 probe's
statistics, and ``run`` (training, then the single-example pitfall or its fix).
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from bnlab.data import TrainBatches
from bnlab.experiments.base import RunContext
from bnlab.experiments.sigmoid_mlp.config import TEST_TAG, SigmoidMLPConfig
from bnlab.models.mlp import SigmoidMLP
from bnlab.train import Hook, Trainer, every, predict_one_at_a_time
from bnlab.train.evaluate import eval_mode
from bnlab.train.io import torch_save_atomic

__all__ = ["build_model", "probe_statistics", "run", "summed_cross_entropy"]


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
    test = data.test
    test_x, test_y = test.flat(), test.labels
    input_dim, num_classes = test_x.shape[1], data.num_classes
    model = build_model(config, input_dim, num_classes)
    optimizer = torch.optim.SGD(model.parameters(), lr=config.learning_rate)
    batches = TrainBatches(data.train, config.batch_size, seed=config.seed)

    def measure_test() -> dict[str, float]:
        # The seed evaluates with its training graph: batch statistics of the test set
        # (its first BN net has no others), gradients off.
        freeze = not config.eval_updates_population
        with _population_frozen(model, freeze), torch.no_grad():
            model.train()
            logits, probe = model.forward_with_probe(test_x)
        values = {
            "accuracy": (logits.argmax(dim=1) == test_y).double().mean().item(),
            "loss": F.cross_entropy(logits, test_y).item(),
        }
        values.update(probe_statistics(probe, config.probe_neurons, config.percentiles))
        return values

    trainer = Trainer(
        model,
        optimizer,
        summed_cross_entropy,
        batches,
        config.num_steps,
        run=ctx.run,
        hooks=(Hook(TEST_TAG, lambda _h: measure_test(), every(config.eval_every)),),
        checkpoint_every=config.checkpoint_every,
        log_every=config.log_every,
        progress=ctx.progress,
        desc=ctx.desc,
        is_main=ctx.is_main,
    )
    fit = trainer.fit()
    final = measure_test()
    trainer.metrics.append({"phase": "train", "tag": "final", "step": config.num_steps, **final})
    trainer.metrics.flush()

    metrics: dict[str, float] = {
        "test_accuracy": final["accuracy"],
        "test_loss": final["loss"],
        "train_time_s": fit.elapsed_s,
    }

    n = min(config.single_image_count, len(test))
    images, labels = test_x[:n], test_y[:n]
    if config.norm == "batch":
        # The pitfall: this network has only batch statistics, so one example at a time
        # normalizes every layer-1 and layer-2 input to 0 and the output is constant.
        predictions = predict_one_at_a_time(model, images)
        metrics.update(_single_image_metrics(predictions, labels, "single_image"))
        _write_predictions(ctx, labels, predictions, "batch statistics, one at a time")
    elif config.norm == "population":
        metrics.update(_restore_and_infer(config, model, ctx, test_x, test_y, n, num_classes))
    return metrics


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
