"""Evaluation in inference mode: batched loss and accuracy, predictions, one-at-a-time inference.

Every function here puts the model in eval mode for the duration of the call and restores
each module's own ``training`` flag afterwards (even when the body raises), so a caller in
the middle of training is never left with a model in the wrong mode.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

import torch
from torch import Tensor, nn


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Put ``model`` in eval mode inside the block; restore every module's flag on exit.

    >>> net = nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2))
    >>> with eval_mode(net):
    ...     net.training
    False
    >>> net.training
    True
    """
    flags = [(module, module.training) for module in model.modules()]
    model.eval()
    try:
        yield model
    finally:
        for module, flag in flags:
            module.training = flag


def _check_pair(images: Tensor, labels: Tensor) -> None:
    if images.shape[0] != labels.shape[0]:
        raise ValueError(
            f"images and labels must have the same length; got {images.shape[0]} images "
            f"and {labels.shape[0]} labels"
        )


def _check_batch_size(batch_size: int) -> None:
    if batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer; got {batch_size}")


def predict(model: nn.Module, images: Tensor, *, batch_size: int = 1000) -> Tensor:
    """Return the model's outputs on ``images`` in inference mode, computed in chunks.

    In eval mode a network with batch norm treats every example independently, so the
    chunk size changes only memory use, not the result.

    Shape:
        images ``(N, ...)`` -> outputs ``(N, ...)``.
    """
    _check_batch_size(batch_size)
    with eval_mode(model), torch.inference_mode():
        chunks = [model(images[i : i + batch_size]) for i in range(0, images.shape[0], batch_size)]
    return torch.cat(chunks) if chunks else images.new_empty((0,))


def evaluate(
    model: nn.Module,
    images: Tensor,
    labels: Tensor,
    loss_fn: Callable[[Tensor, Tensor], Tensor],
    *,
    batch_size: int = 1000,
) -> dict[str, float]:
    """Return ``{"loss", "accuracy"}`` of ``model`` on a labelled set, in inference mode.

    ``loss = sum_b n_b * loss_fn(logits_b, labels_b) / N`` over chunks ``b`` of ``n_b``
    examples, which equals ``loss_fn`` on the whole set when ``loss_fn`` is a mean over
    examples. ``accuracy = mean(argmax(logits, 1) == labels)``.

    Args:
        labels: class indices, int64 ``(N,)``.
        loss_fn: ``(logits, labels) -> scalar``, a mean over the batch.
        batch_size: chunk size (memory only).

    Raises:
        ValueError: ``images`` and ``labels`` differ in length, or the set is empty.
    """
    _check_pair(images, labels)
    _check_batch_size(batch_size)
    n = images.shape[0]
    if n == 0:
        raise ValueError("cannot evaluate on an empty set; got 0 images")
    total_loss = torch.zeros((), dtype=torch.float64)
    correct = torch.zeros((), dtype=torch.int64)
    with eval_mode(model), torch.inference_mode():
        for start in range(0, n, batch_size):
            x = images[start : start + batch_size]
            y = labels[start : start + batch_size]
            logits = model(x)
            total_loss += loss_fn(logits, y).double() * x.shape[0]
            correct += (logits.argmax(dim=1) == y).sum()
    return {"loss": float(total_loss) / n, "accuracy": int(correct) / n}


def predict_one_at_a_time(model: nn.Module, images: Tensor) -> Tensor:
    """Return the predicted class of each image, feeding the images one at a time (batch of 1).

    This is the seeds' check that inference uses population statistics: with batch
    statistics a batch of one normalizes every feature to zero.

    Shape:
        images ``(N, ...)`` -> classes int64 ``(N,)``.
    """
    with eval_mode(model), torch.inference_mode():
        preds = [model(images[i : i + 1]).argmax(dim=1) for i in range(images.shape[0])]
    return torch.cat(preds) if preds else torch.empty(0, dtype=torch.int64)
