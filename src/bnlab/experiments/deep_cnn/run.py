"""deep-cnn's training: the network and optimizer of a config, the seed's loss, and
``run`` (one seed of one variant into its run directory).
"""

from __future__ import annotations

import json
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from bnlab.data import TrainBatches
from bnlab.experiments.base import RunContext
from bnlab.experiments.deep_cnn.config import DeepCNNConfig
from bnlab.models.deep_cnn import DeepCNN
from bnlab.train import Hook, HookContext, Trainer, evaluate, every
from bnlab.train import distributed as data_parallel
from bnlab.train.evaluate import predict, predict_one_at_a_time

__all__ = ["build_model", "make_optimizer", "run", "sigmoid_cross_entropy"]


def build_model(config: DeepCNNConfig, image_size: int = 28) -> torch.nn.Module:
    """The network of ``config`` (initialized from the current torch RNG state), in the
    channels-last memory format when ``config.channels_last`` (its inputs need no change:
    a one-channel NCHW image batch is already channels-last)."""
    model = DeepCNN(
        num_conv_layers=config.num_conv_layers,
        filters_per_depth=config.filters_per_depth,
        dense_units=config.dense_units,
        image_size=image_size,
        norm=config.norm,
        placement=config.placement,
        lowlevel=config.lowlevel,
        bn_eps=config.bn_eps,
        bn_decay=config.bn_decay,
        conv_init=config.conv_init,
        conv_init_std=config.conv_init_std,
    )
    if not config.channels_last:
        return model
    # Module.to takes memory_format at run time; torch's stubs leave it out of the overloads.
    return model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]


def make_optimizer(model: torch.nn.Module, config: DeepCNNConfig) -> torch.optim.Adam:
    """The seed's ``tf.train.AdamOptimizer(learning_rate)`` (TF1's epsilon) over ``model``."""
    return torch.optim.Adam(
        model.parameters(),
        lr=config.learning_rate,
        betas=(0.9, 0.999),
        eps=config.adam_eps,
        fused=config.fused_adam,
    )


def sigmoid_cross_entropy(logits: Tensor, labels: Tensor) -> Tensor:
    """The seed's loss: ``reduce_mean(sigmoid_cross_entropy_with_logits(logits, one_hot))``.

    A mean over the batch and the 10 classes, each class an independent sigmoid.
    """
    targets = F.one_hot(labels, logits.shape[1]).to(logits.dtype)
    return F.binary_cross_entropy_with_logits(logits, targets)


def run(config: DeepCNNConfig, data: Any, ctx: RunContext) -> dict[str, float]:
    """Train one seed of one variant as the seed does; return the final metrics.

    Logs ``validation`` (full validation set, every ``validate_every`` batches and at the
    end) and ``train_batch`` (the batch just trained, in inference mode) records; the
    per-step training loss is logged by the trainer. Final metrics: validation and test
    loss and accuracy, accuracy of the first ``single_image_count`` test images fed one at
    a time and batched, and their prediction agreement.
    """
    torch.manual_seed(config.seed)
    model = build_model(config, image_size=data.train.images.shape[-1])
    # Under torchrun: DDP (+ SyncBatchNorm with --sync-bn) around `model`, which stays the
    # network to evaluate; one process: `model` itself. Before the optimizer (new BN params).
    dp = data_parallel.current()
    train_model = dp.wrap(model)
    optimizer = make_optimizer(model, config)
    batches = dp.shard(TrainBatches(data.train, config.batch_size, seed=config.seed))
    val, test = data.validation, data.test

    def validation() -> dict[str, float]:
        return evaluate(
            model, val.images, val.labels, sigmoid_cross_entropy, batch_size=config.eval_batch_size
        )

    def train_batch(h: HookContext) -> dict[str, float]:
        return evaluate(
            model, h.inputs, h.targets, sigmoid_cross_entropy, batch_size=config.eval_batch_size
        )

    trainer = Trainer(
        train_model,
        optimizer,
        sigmoid_cross_entropy,
        batches,
        config.num_batches,
        run=ctx.run,
        hooks=(
            Hook("validation", lambda _: validation(), every(config.validate_every)),
            Hook(
                "train_batch",
                train_batch,
                every(config.train_acc_every, unless_every=config.validate_every),
            ),
        ),
        checkpoint_every=config.checkpoint_every,
        log_every=config.log_every,
        progress=ctx.progress,
        desc=ctx.desc,
        is_main=ctx.is_main,
    )
    fit = trainer.fit()

    final_val = validation()
    final_test = evaluate(
        model, test.images, test.labels, sigmoid_cross_entropy, batch_size=config.eval_batch_size
    )
    trainer.metrics.append(
        {"phase": "train", "tag": "validation", "step": config.num_batches, **final_val}
    )
    trainer.metrics.append(
        {"phase": "train", "tag": "test", "step": config.num_batches, **final_test}
    )
    trainer.metrics.flush()

    n = min(config.single_image_count, len(test))
    images, labels = test.images[:n], test.labels[:n]
    one_at_a_time = predict_one_at_a_time(model, images)
    batched = predict(model, images, batch_size=config.eval_batch_size).argmax(dim=1)
    if ctx.is_main:
        ctx.run.write_artefact(
            "first_test_predictions.json",
            json.dumps(
                {
                    "labels": labels.tolist(),
                    "one_at_a_time": one_at_a_time.tolist(),
                    "batched": batched.tolist(),
                }
            ).encode(),
        )
    return {
        "validation_accuracy": final_val["accuracy"],
        "validation_loss": final_val["loss"],
        "test_accuracy": final_test["accuracy"],
        "test_loss": final_test["loss"],
        "single_image_accuracy": (one_at_a_time == labels).double().mean().item(),
        "batched_first_n_accuracy": (batched == labels).double().mean().item(),
        "single_batched_agreement": (one_at_a_time == batched).double().mean().item(),
        "train_time_s": fit.elapsed_s,
    }
