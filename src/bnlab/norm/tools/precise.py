"""Precise population statistics: recompute every batch-norm layer's running mean and
variance as the exact pooled statistics of its inputs over K batches (seed 001's remark
that a true average beats the exponential moving average; Wu & Johnson 2021).

``PreciseStats`` is the context manager (hooks in, hooks out in ``finally``);
``precise_bn(model, batches, num_batches=K)`` drives it over an iterable of batches.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from types import TracebackType
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle

from bnlab.norm.layers.modules import BATCH_NORM_TYPES
from bnlab.norm.ops.core import batch_stats, merge_moments

__all__ = ["PooledMoments", "PreciseStats", "precise_bn"]


@dataclass
class PooledMoments:
    """Running per-channel ``(count, mean, M2)`` of everything seen, merged exactly.

    ``M2 = sum (x - mean)^2``. Each batch is merged with ``core.merge_moments`` (Chan,
    Golub & LeVeque 1979, the merge SyncBatchNorm uses across processes). The result does
    not depend on how the data were split (up to float64 rounding), unlike an average of
    per-batch variances, which misses the spread of the batch means.

    >>> p = PooledMoments()
    >>> for part in (torch.tensor([[0.0], [2.0]]), torch.tensor([[4.0]])):
    ...     p.add(part)
    >>> p.count, p.mean.tolist(), p.unbiased_var().tolist()
    (3, [2.0], [4.0])
    """

    count: int = 0
    mean: Tensor | None = None  # (C,) float64
    m2: Tensor | None = None  # (C,) float64

    def add(self, x: Tensor) -> None:
        """Merge the values of ``x`` (``(N, C, *)``, channels in dim 1)."""
        n_b = x.numel() // x.shape[1] if x.shape[1] else 0
        if n_b == 0:
            return
        mean_b, var_b = batch_stats(x.detach())
        mean_b, m2_b = mean_b.double(), var_b.double() * n_b
        if self.mean is None or self.m2 is None:
            self.count, self.mean, self.m2 = n_b, mean_b, m2_b
            return
        counts = torch.tensor([self.count, n_b], dtype=torch.float64)
        _, self.mean, self.m2 = merge_moments(
            counts, torch.stack((self.mean, mean_b)), torch.stack((self.m2, m2_b))
        )
        self.count += n_b

    def unbiased_var(self) -> Tensor:
        """``M2 / (count - 1)``, the convention of ``running_var``.

        Raises:
            ValueError: fewer than 2 values seen.
        """
        if self.m2 is None or self.count < 2:
            raise ValueError(
                f"the pooled variance needs at least 2 values per channel; got {self.count}"
            )
        return self.m2 / (self.count - 1)


class PreciseStats:
    """Context manager that recomputes the running statistics of every batch-norm layer.

    On entry: each batch-norm layer that tracks running statistics (bnlab's, its
    variants, ``torch.nn``'s) gets a forward pre-hook that pools the moments of its input
    (:class:`PooledMoments`), its momentum is set to 0, the batch-norm layers are put in
    training mode (so downstream layers see batch-normalized inputs, as in training,
    Ioffe & Szegedy 2015, Alg. 2) and every other module in eval mode (no dropout noise).
    The body runs forward passes (without grad). On a clean exit, ``running_mean`` becomes
    the pooled mean and ``running_var`` the pooled unbiased variance of all inputs that
    layer saw. In ``finally``, whether or not the body raised: hooks removed, momentum,
    ``num_batches_tracked`` and every module's training flag restored; after an error
    the running statistics are exactly the ones before entry.

    A layer whose pooled input equals the population (the first batch-norm layer of a
    network, or any layer fed the same data) gets exactly the population statistics
    whatever the batch sizes; deeper layers see inputs normalized with each batch's own
    statistics, so their statistics depend on the batches as in training.

    Attributes (after exit):
        layers: qualified name -> :class:`PooledMoments` of the layers that were updated.
        skipped: names of layers that saw no input (left unchanged, with a warning).

    >>> net = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4))
    >>> with PreciseStats(net):
    ...     for _ in range(3):
    ...         _ = net(torch.randn(16, 3))
    >>> sorted(PreciseStats.layer_names(net))
    ['1']
    """

    def __init__(self, model: nn.Module) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module; got {type(model).__name__}")
        self.model = model
        self.layers: dict[str, PooledMoments] = {}
        self.skipped: list[str] = []
        self._bns: dict[str, nn.Module] = {
            name: m
            for name, m in model.named_modules()
            if isinstance(m, BATCH_NORM_TYPES) and getattr(m, "running_mean", None) is not None
        }
        self._handles: list[RemovableHandle] = []
        self._saved: dict[str, dict[str, Any]] = {}
        self._modes: dict[str, bool] = {}
        self._grad_ctx: torch.autograd.grad_mode.no_grad | None = None

    @staticmethod
    def layer_names(model: nn.Module) -> list[str]:
        """Names of the layers :class:`PreciseStats` would update in ``model``."""
        return [
            name
            for name, m in model.named_modules()
            if isinstance(m, BATCH_NORM_TYPES) and getattr(m, "running_mean", None) is not None
        ]

    def __enter__(self) -> PreciseStats:
        if not self._bns:
            raise ValueError(
                f"{type(self.model).__name__} has no batch-norm layer with running statistics; "
                "there is nothing to recompute"
            )
        try:
            self._modes = {name: m.training for name, m in self.model.named_modules()}
            for name, bn in self._bns.items():
                mean, var, tracked = _buffers(bn)
                self._saved[name] = {
                    "momentum": getattr(bn, "momentum", None),
                    "running_mean": mean.detach().clone(),
                    "running_var": var.detach().clone(),
                    "num_batches_tracked": None if tracked is None else tracked.detach().clone(),
                }
                self.layers[name] = PooledMoments()
                self._handles.append(bn.register_forward_pre_hook(self._hook(name)))
                # The layer's own update must not move the statistics during the pass.
                setattr(bn, "momentum", 0.0)  # noqa: B010 (nn.Module's typing)
            self.model.eval()
            for bn in self._bns.values():
                bn.train()
            self._grad_ctx = torch.no_grad()
            self._grad_ctx.__enter__()
        except BaseException:
            self._restore()
            raise
        return self

    def _hook(self, name: str) -> Callable[[nn.Module, tuple[Any, ...]], None]:
        def hook(module: nn.Module, args: tuple[Any, ...]) -> None:
            del module
            if args and isinstance(args[0], Tensor) and args[0].dim() >= 2:
                self.layers[name].add(args[0])

        return hook

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        try:
            if self._grad_ctx is not None:
                self._grad_ctx.__exit__(exc_type, exc, tb)
        finally:
            self._restore()
        if exc_type is None:
            self._write()

    def _restore(self) -> None:
        """Hooks out; momentum, buffers and modes back to their values at entry."""
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        with torch.no_grad():
            for name, saved in self._saved.items():
                bn = self._bns[name]
                setattr(bn, "momentum", saved["momentum"])  # noqa: B010
                mean, var, tracked = _buffers(bn)
                mean.copy_(saved["running_mean"])
                var.copy_(saved["running_var"])
                if tracked is not None and saved["num_batches_tracked"] is not None:
                    tracked.copy_(saved["num_batches_tracked"])
        for name, m in self.model.named_modules():
            if name in self._modes:
                m.training = self._modes[name]
        self._saved.clear()

    def _write(self) -> None:
        """Store the pooled statistics into the layers that saw at least 2 values."""
        self.skipped = [n for n, p in self.layers.items() if p.count < 2]
        if self.skipped:
            warnings.warn(
                f"precise statistics: layers {self.skipped} saw fewer than 2 values per "
                "channel during the pass and keep their old running statistics",
                RuntimeWarning,
                stacklevel=3,
            )
        with torch.no_grad():
            for name, pooled in self.layers.items():
                if name in self.skipped or pooled.mean is None:
                    continue
                mean, var, _ = _buffers(self._bns[name])
                mean.copy_(pooled.mean)
                var.copy_(pooled.unbiased_var())
        self.layers = {n: p for n, p in self.layers.items() if n not in self.skipped}


def _buffers(bn: nn.Module) -> tuple[Tensor, Tensor, Tensor | None]:
    """``(running_mean, running_var, num_batches_tracked)`` of a tracking batch-norm layer."""
    mean: Tensor = getattr(bn, "running_mean")  # noqa: B009 (nn.Module's typing)
    var: Tensor = getattr(bn, "running_var")  # noqa: B009
    return mean, var, getattr(bn, "num_batches_tracked", None)


def _default_forward(model: nn.Module, batch: Any) -> None:
    # A (input, target) pair or a dict from a data loader: the model takes the input.
    if isinstance(batch, (tuple, list)):
        batch = batch[0]
    model(batch)


def precise_bn(
    model: nn.Module,
    batches: Iterable[Any],
    num_batches: int | None = None,
    *,
    forward: Callable[[nn.Module, Any], Any] | None = None,
    progress: bool = False,
) -> dict[str, PooledMoments]:
    """Recompute every batch-norm layer's running statistics over ``num_batches`` batches.

    Runs :class:`PreciseStats` over the first ``num_batches`` items of ``batches`` (all of
    them when None). Afterwards each layer's ``running_mean`` is the pooled mean and
    ``running_var`` the pooled unbiased variance (``M2 / (n - 1)``) of its inputs, so for
    the first layer the result equals the statistics of the concatenated data whatever the
    batch sizes. The model's modes, momenta and counters are as before; on an error the
    model is exactly as before.

    Args:
        model: the network (changed in place: its running statistics).
        batches: an iterable of inputs, or of ``(input, target)`` pairs.
        num_batches: K, how many batches to use (None: all). Fewer available: a warning.
        forward: ``forward(model, batch)`` when the model needs more than ``model(x)``.
        progress: show a tqdm bar on stderr (only when stderr is a terminal).

    Returns:
        qualified layer name -> the :class:`PooledMoments` written into it.

    Raises:
        ValueError: ``num_batches < 1``, or the model has no batch-norm layer with
            running statistics.

    >>> net = nn.Sequential(nn.BatchNorm1d(2))
    >>> data = torch.randn(100, 2) * 3 + 1
    >>> _ = precise_bn(net, data.split(7))
    >>> bool(torch.allclose(net[0].running_mean, data.mean(0)))
    True
    """
    if isinstance(batches, Tensor):
        raise TypeError(
            "batches must be an iterable of batches, not one tensor (iterating it would give "
            "single examples); pass e.g. data.split(batch_size)"
        )
    if num_batches is not None and num_batches < 1:
        raise ValueError(f"num_batches must be >= 1 or None; got {num_batches}")
    step = forward or _default_forward
    estimator = PreciseStats(model)
    seen = 0
    bar = _progress_bar(num_batches, progress)
    try:
        with estimator:
            for batch in batches:
                if num_batches is not None and seen >= num_batches:
                    break
                step(model, batch)
                seen += 1
                if bar is not None:
                    bar.update(1)
    finally:
        if bar is not None:
            bar.close()
    if num_batches is not None and seen < num_batches:
        warnings.warn(
            f"precise_bn asked for {num_batches} batches but the data gave {seen}",
            RuntimeWarning,
            stacklevel=2,
        )
    return estimator.layers


def _progress_bar(total: int | None, enabled: bool) -> Any:
    import sys

    if not enabled or not sys.stderr.isatty():
        return None
    from tqdm import tqdm

    return tqdm(total=total, desc="precise BN", unit="batch", file=sys.stderr, leave=False)
