"""Synchronized batch norm over torch.distributed, on CPU (gloo) as well as GPU (NCCL).

Batch statistics are merged exactly across the processes of a group, so k processes
normalize as one process would on the concatenated batch; ``convert_sync_batchnorm``
swaps the batch-norm layers of a model for this one. The math is in docs/distributed.md.
"""

from __future__ import annotations

import copy
import itertools
from typing import Any, NoReturn

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.autograd.function import FunctionCtx, once_differentiable

from bnlab.errors import BnlabError
from bnlab.norm.layers import safe
from bnlab.norm.layers.act import ActAfter, anatomy, unknown_subclass, warn_left
from bnlab.norm.layers.modules import _BatchNorm, check_any_rank
from bnlab.norm.layers.registry import register_norm
from bnlab.norm.ops import functional as F
from bnlab.norm.ops.core import merge_moments

__all__ = [
    "DistributedError",
    "SyncBatchNorm",
    "SyncBatchNormAct",
    "convert_sync_batchnorm",
    "merge_moments",
    "sync_batch_norm",
]


class DistributedError(BnlabError, RuntimeError):
    """A collective across processes failed: a peer died, stalled past the timeout, or the
    ranks disagree (for example on the channel count). Raised on every surviving rank."""


def _per_channel(v: Tensor, ndim: int) -> Tensor:
    """View a (C,) vector so that it broadcasts along dim 1 of an ``ndim``-D tensor."""
    return v.reshape(F.channel_shape(ndim, v.numel()))


def _world_size(group: dist.ProcessGroup | None) -> int:
    if not (dist.is_available() and dist.is_initialized()):
        return 1
    return int(dist.get_world_size(group))


def _collective_failed(what: str, group: dist.ProcessGroup | None, err: Exception) -> NoReturn:
    raise DistributedError(
        f"SyncBatchNorm: {what} across {_world_size(group)} processes failed: {err}\n"
        "A peer process probably died, stalled past the process-group timeout, or skipped "
        "this layer (every rank must run forward and backward of every SyncBatchNorm in "
        "the same order, even with an empty batch)."
    ) from err


def _all_gather_rows(row: Tensor, world: int, group: dist.ProcessGroup | None) -> Tensor:
    """Gather one 1-D row per rank into a ``(world, len(row))`` tensor (one collective)."""
    out = row.new_empty(world * row.numel())
    # all_gather_single replaces all_gather_into_tensor in recent torch; same semantics.
    gather = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor
    try:
        gather(out, row.contiguous(), group=group)
    except RuntimeError as err:
        _collective_failed("all-gather of batch statistics", group, err)
    return out.view(world, row.numel())


class _SyncBatchNormFn(torch.autograd.Function):
    """Training-mode batch norm whose statistics span every process of a group.

    Forward: local (count, mean, M2) per channel -> one all-gather -> exact merge ->
    normalize with the global mean and biased variance. Backward: local Σdy and Σdy·x̂
    -> one all-reduce -> the usual batch-norm input gradient with global sums.
    """

    @staticmethod
    def forward(
        ctx: FunctionCtx,
        x: Tensor,
        weight: Tensor | None,
        bias: Tensor | None,
        eps: float,
        group: dist.ProcessGroup | None,
        world: int,
    ) -> tuple[Tensor, Tensor, Tensor]:
        channels = x.shape[1]
        local_n = x.numel() // channels if channels else 0
        if local_n > 0:
            # Local moments with the core's shifted, one-step-wider algorithm.
            mean_l, var_l = F.batch_stats(x)
            m2_l = var_l * local_n
        else:  # an empty shard still takes part in the collective, with weight zero
            mean_l = x.new_zeros(channels, dtype=F.stats_dtype(x.dtype))
            m2_l = torch.zeros_like(mean_l)
        # Pack (n, mean, M2) into one row so one all-gather carries everything. float64
        # keeps the count exact past 2^24 values per channel and costs nothing: the row
        # holds 2C + 1 numbers.
        row = torch.cat([mean_l.new_full((1,), float(local_n)), mean_l, m2_l]).double()
        rows = _all_gather_rows(row, world, group)
        counts, means, m2s = rows[:, 0], rows[:, 1 : 1 + channels], rows[:, 1 + channels :]
        n, mean64, m2 = merge_moments(counts, means, m2s)
        total = int(n.item())
        if total <= 1:
            # Same rule as torch.nn.functional.batch_norm; every rank sees the same total,
            # so all of them raise and none is left waiting in a collective.
            raise ValueError(
                "Expected more than 1 value per channel when training across "
                f"{world} processes, got {total} (input shape on this rank {tuple(x.shape)})"
            )
        sdt = F.stats_dtype(x.dtype)
        mean = mean64.to(sdt)
        var = (m2 / n).to(sdt)
        y = F.normalize(x, mean, var, weight, bias, eps)

        ctx.save_for_backward(x, mean, var, *(() if weight is None else (weight,)))
        ctx.eps = eps  # type: ignore[attr-defined]
        ctx.group = group  # type: ignore[attr-defined]
        ctx.total = total  # type: ignore[attr-defined]
        ctx.bias_dtype = None if bias is None else bias.dtype  # type: ignore[attr-defined]
        var_unbiased = (m2 / (n - 1)).to(sdt)  # Bessel's correction over all ranks' values
        ctx.mark_non_differentiable(mean, var_unbiased)
        return y, mean, var_unbiased

    @staticmethod
    @once_differentiable
    def backward(
        ctx: FunctionCtx, dy: Tensor, *_unused: Tensor
    ) -> tuple[Tensor | None, Tensor | None, Tensor | None, None, None, None]:
        x, mean, var, *maybe_weight = ctx.saved_tensors  # type: ignore[attr-defined]
        weight = maybe_weight[0] if maybe_weight else None
        group = ctx.group  # type: ignore[attr-defined]
        total: int = ctx.total  # type: ignore[attr-defined]
        eps: float = ctx.eps  # type: ignore[attr-defined]
        nd = x.dim()
        dims = F.reduce_dims(nd)
        cdt = F.compute_dtype(x.dtype)
        dyc = dy.to(cdt)
        # x - mean in two parts, as normalize() does: the mean rounded to the compute
        # dtype cancels exactly against x; the rounding remainder (mean_lo) is carried in
        # the per-channel coefficients, which are formed in the wider stats dtype.
        mean_hi = mean.to(cdt)
        mean_lo = mean - mean_hi.to(mean.dtype)
        invstd = torch.rsqrt(var + eps)
        centered = x.to(cdt) - _per_channel(mean_hi, nd)  # the one full-size temporary
        sum_dy = dyc.sum(dims).to(mean.dtype)
        sum_dy_centered = (dyc * centered).sum(dims).to(mean.dtype)
        # The two per-channel sums are everything the input gradient needs from the other
        # ranks; stacked, they cross the wire in a single all-reduce.
        local = torch.stack([sum_dy, invstd * (sum_dy_centered - mean_lo * sum_dy)])
        sums = local.clone()
        try:
            dist.all_reduce(sums, group=group)
        except RuntimeError as err:
            _collective_failed("all-reduce of gradient sums", group, err)
        # dx = scale * (dy - mean(dy) - xhat * mean(dy * xhat)), the means over all ranks'
        # values (Ioffe & Szegedy 2015, section 3), with scale = weight / sqrt(var + eps)
        # and xhat = (centered - mean_lo) * invstd, is affine in dy and centered per
        # channel: dx = a * dy + b * centered + c. Three in-place passes, no temporaries.
        scale = invstd if weight is None else invstd * weight.to(invstd.dtype)
        mean_dy, mean_dy_xhat = sums[0] / total, sums[1] / total
        a = scale
        b = -scale * invstd * mean_dy_xhat
        c = -scale * mean_dy - b * mean_lo
        dx = centered.mul_(_per_channel(b.to(cdt), nd)).add_(_per_channel(c.to(cdt), nd))
        dx.addcmul_(dyc, _per_channel(a.to(cdt), nd))

        need_x, need_w, need_b = ctx.needs_input_grad[:3]  # type: ignore[attr-defined]
        # Parameter gradients stay local (this rank's share of Σdy·x̂ and Σdy): summed over
        # ranks they are the single-process gradients, which is what DDP's all-reduce
        # (an average) expects, exactly as for torch.nn.SyncBatchNorm.
        bias_dtype = ctx.bias_dtype  # type: ignore[attr-defined]
        grad_w = local[1].to(weight.dtype) if need_w and weight is not None else None
        grad_b = local[0].to(bias_dtype) if need_b and bias_dtype is not None else None
        return (dx.to(x.dtype) if need_x else None), grad_w, grad_b, None, None, None


def sync_batch_norm(
    x: Tensor,
    running_mean: Tensor | None,
    running_var: Tensor | None,
    weight: Tensor | None = None,
    bias: Tensor | None = None,
    *,
    training: bool = True,
    momentum: float = 0.1,
    eps: float = 1e-5,
    process_group: dist.ProcessGroup | None = None,
) -> Tensor:
    """Batch norm over dim 1 whose training statistics span all ranks of ``process_group``.

    In training mode with more than one process, every rank's output is
    ``(x - mean) / sqrt(var + eps) * weight + bias`` where ``mean`` and the biased ``var``
    are those of the concatenation of all ranks' inputs (per channel, over every dim but
    1), and the running statistics, when given, move towards the global mean and the
    unbiased global variance: ``running = (1 - momentum) * running + momentum * batch``
    (PyTorch's convention; momentum is the weight of the new batch). Otherwise (eval mode,
    no initialized process group, or a group of one) it is
    :func:`bnlab.norm.ops.functional.batch_norm`, which matches ``torch.nn.functional``'s.

    Every rank must call it, in the same order as the others; a rank may pass an empty
    batch (size 0 along dim 0). The input gradient accounts for all ranks; the weight
    and bias gradients are this rank's share (their sum over ranks is the gradient of
    the summed loss), which DDP averages like any other parameter gradient.

    Args:
        x: input ``(N, C, *)``, N may differ between ranks.
        running_mean, running_var: ``(C,)`` buffers updated in place, or None.
        weight, bias: ``(C,)`` affine parameters, or None.
        training: use (and sync) batch statistics; False uses the running statistics.
        momentum: weight of the new batch in the running-statistics update.
        eps: added to the variance for numerical stability.
        process_group: the group to synchronize over (default: the whole world).

    Returns:
        Tensor of the shape and dtype of ``x``.

    Raises:
        ValueError: fewer than 2 dims, or at most one value per channel across all ranks.
        DistributedError: a collective failed (a peer died or timed out).
    """
    if x.dim() < 2:
        raise ValueError(
            f"expected an input of at least 2 dims (N, C, *), got shape {tuple(x.shape)}"
        )
    world = _world_size(process_group)
    if not training or world == 1:
        return F.batch_norm(x, running_mean, running_var, weight, bias, training, momentum, eps)
    y, mean, var_unbiased = _SyncBatchNormFn.apply(x, weight, bias, eps, process_group, world)
    F.update_running_stats(running_mean, running_var, mean, var_unbiased, momentum)
    return y


class SyncBatchNorm(_BatchNorm):
    r"""Batch norm whose training statistics span every process of a torch.distributed group.

    Drop-in for ``torch.nn.SyncBatchNorm`` (same constructor and ``state_dict`` keys, and,
    like it, an instance of ``torch.nn``'s batch-norm base) that also runs on CPU tensors
    with the gloo backend. Not a subclass of ``torch.nn.SyncBatchNorm`` itself:
    ``DistributedDataParallel`` refuses those on CPU. In training mode with k > 1
    processes, each rank normalizes its shard with the mean and biased variance of the
    concatenated batch of all ranks,

    ``y = (x - E[x]) / sqrt(Var[x] + eps) * weight + bias``,

    merged exactly from per-rank (count, mean, M2) with one all-gather (counts may
    differ, a rank may have an empty batch); the backward pass all-reduces the two
    per-channel sums Σdy and Σdy·x̂ in one collective. Running statistics follow
    ``running = (1 - momentum) * running + momentum * batch`` with the unbiased global
    variance (cumulative average when ``momentum`` is None), identically on every rank.
    In eval mode, with no initialized process group, or in a group of one, it is plain
    bnlab batch norm. Weight and bias gradients are this rank's share of the
    single-process gradient; DistributedDataParallel averages them like any other.

    Every rank must call every SyncBatchNorm layer, forward and backward, in the same
    order; a rank that skips one (or dies) makes the others fail with
    :class:`DistributedError` after the process group's timeout.

    Args:
        num_features: C, the channel count (dim 1 of the input).
        eps: added to the variance before the square root (default 1e-5).
        momentum: weight of the new batch in the running update (default 0.1), or None
            for a cumulative moving average.
        affine: learn per-channel ``weight`` (init 1) and ``bias`` (init 0).
        track_running_stats: keep ``running_mean``/``running_var``/``num_batches_tracked``
            and use them in eval mode.
        process_group: the group to synchronize over (default: the whole world).
        device, dtype: where and in what dtype parameters and buffers live.
        bias: keyword-only; with ``affine``, False learns ``weight`` but no ``bias``.
        decay: keyword-only, TF/Keras style (``momentum = 1 - decay``).
        backend: keyword-only, the ``bnlab.norm.ops.dispatch`` backend for the
            unsynchronized path (eval mode, one process).

    Shape:
        input ``(N, C, *)`` with at least 2 dims; output the same. N may differ between
        ranks, and be 0.

    Raises:
        ValueError: at call time, an input with fewer than 2 dims or a channel count
            other than C, or at most one value per channel across all ranks in training.
        DistributedError: a collective failed (a peer died, stalled or skipped the layer).

    >>> bn = SyncBatchNorm(3)
    >>> bn(torch.randn(8, 3, 4, 4)).shape  # no process group: plain batch norm
    torch.Size([8, 3, 4, 4])
    """

    def __init__(
        self,
        num_features: int,
        eps: float = 1e-5,
        momentum: float | None = 0.1,
        affine: bool = True,
        track_running_stats: bool = True,
        process_group: dist.ProcessGroup | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        *,
        bias: bool = True,
        decay: float | None = None,
        backend: str = "auto",
    ) -> None:
        super().__init__(
            num_features,
            eps,
            momentum,
            affine,
            track_running_stats,
            device,
            dtype,
            bias=bias,
            decay=decay,
            backend=backend,
        )
        self.process_group = process_group

    def _check_input_dim(self, input: Tensor) -> None:
        check_any_rank("SyncBatchNorm", input)

    def forward(self, input: Tensor) -> Tensor:
        world = _world_size(self.process_group)
        # Synchronize in training mode only: eval without running statistics normalizes
        # each rank by its own batch, as torch.nn.SyncBatchNorm does.
        if not (self.training and world > 1):
            return super().forward(input)
        self._check_input(input)
        # No per-rank "more than one value" check: a rank may hold 1 or 0 samples; the
        # Function checks the total across ranks, and raises before any state changes.
        y, mean, var_unbiased = _SyncBatchNormFn.apply(
            input, self.weight, self.bias, self.eps, self.process_group, world
        )
        momentum = self._step_momentum()
        if self.track_running_stats:
            # The non-finite guard, as on the one-process path. Every rank holds the same
            # global statistics, so every rank makes the same decision.
            guard, rm, rv = safe.guard_for(self, input, True, self.running_mean, self.running_var)
            F.update_running_stats(rm, rv, mean, var_unbiased, momentum)
            safe.finish_guard(self, guard)
        return y


class SyncBatchNormAct(ActAfter, SyncBatchNorm):
    """``act(drop(SyncBatchNorm(x)))``: what :func:`convert_sync_batchnorm` makes of a batch
    norm + activation layer (timm's or bnlab's ``BatchNormAct2d``).

    Args: those of :class:`SyncBatchNorm`, plus keyword-only ``act`` (default
    ``nn.ReLU()``) and ``drop`` (default ``nn.Identity()``).

    >>> SyncBatchNormAct(3, act=nn.SiLU())(torch.randn(4, 3, 2, 2)).shape
    torch.Size([4, 3, 2, 2])
    """


def convert_sync_batchnorm(
    module: nn.Module, process_group: dist.ProcessGroup | None = None
) -> nn.Module:
    """A new model in which every batch-norm layer of ``module`` is a SyncBatchNorm.

    The new model holds the very Parameter and buffer objects of ``module`` (as
    ``torch.nn.SyncBatchNorm.convert_sync_batchnorm`` does), so an optimizer built before
    the conversion trains the converted model; ``module`` itself keeps its layers.
    Plain batch-norm layers (every ``torch.nn`` batch norm, bnlab's
    ``BatchNorm1d/2d/3d``) become :class:`SyncBatchNorm` with the same
    ``num_features``, ``eps``, ``momentum``, ``affine``, ``track_running_stats`` (and a
    bnlab layer's ``backend``), the same parameter values and ``requires_grad``, the same
    buffers (running statistics, ``num_batches_tracked``) and the same train/eval mode.
    Batch norm + activation layers (timm's and bnlab's ``BatchNormAct2d``) become
    :class:`SyncBatchNormAct` with the same ``drop`` and ``act`` modules. Existing
    SyncBatchNorm layers get ``process_group``. Variants that normalize differently
    (ghost batch norm, batch renorm, frozen batch norm) are left as they are, and so is
    any subclass that overrides ``forward`` in a way bnlab does not know (a
    :class:`~bnlab.norm.layers.act.RewriteWarning` names it).

    Args:
        module: a model, or a single batch-norm layer.
        process_group: the group the new layers synchronize over (default: whole world).

    Returns:
        The converted model (a SyncBatchNorm if ``module`` itself is batch norm).

    >>> net = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU())
    >>> synced = convert_sync_batchnorm(net)
    >>> type(synced[1]).__name__, type(net[1]).__name__, synced[1].weight is net[1].weight
    ('SyncBatchNorm', 'BatchNorm2d', True)
    """
    if not isinstance(module, nn.Module):
        raise TypeError(f"expected a torch.nn.Module; got {type(module).__name__}")
    # Copy the modules, not the tensors: the memo maps every Parameter/buffer to itself.
    shared: dict[int, Any] = {
        id(t): t for t in itertools.chain(module.parameters(), module.buffers())
    }
    left: dict[str, str] = {}
    converted = _convert(copy.deepcopy(module, shared), process_group, left)
    warn_left("convert_sync_batchnorm", left)
    return converted


def _convert(
    module: nn.Module, group: dist.ProcessGroup | None, left: dict[str, str], name: str = ""
) -> nn.Module:
    """Swap batch-norm layers in an already copied tree (in place; returns the root)."""
    if isinstance(module, SyncBatchNorm):
        module.process_group = group
        return module
    if isinstance(module, nn.modules.batchnorm._BatchNorm):
        shape = anatomy(module)
        if shape is None:
            left[name] = unknown_subclass(module)
        elif not _normalizes_plainly(module):
            pass  # a bnlab variant (ghost batches, batch renorm): documented, not synced
        else:
            return _to_sync(module, group, shape.tail is not None)
        return module
    for child_name, child in module.named_children():
        new = _convert(child, group, left, f"{name}.{child_name}" if name else child_name)
        if new is not child:
            module.add_module(child_name, new)
    return module


def _normalizes_plainly(module: nn.Module) -> bool:
    """Whether a known batch-norm layer's training normalization is the plain one.

    Every torch.nn batch norm qualifies (as in ``torch.nn.SyncBatchNorm``'s converter);
    a bnlab batch-norm class qualifies when it keeps the base ``_batch_norm``. Variants
    that override it (ghost batches, batch renorm) normalize differently, and swapping
    them for SyncBatchNorm would silently change the model.
    """
    if isinstance(module, _BatchNorm):
        return type(module)._batch_norm is _BatchNorm._batch_norm
    return True


def _to_sync(bn: Any, group: dist.ProcessGroup | None, act: bool) -> SyncBatchNorm:
    """A SyncBatchNorm (with ``act``, a :class:`SyncBatchNormAct` keeping ``bn``'s drop and
    act modules) that takes over ``bn``'s configuration, parameters and buffers."""
    ref = bn.weight if bn.weight is not None else bn.running_mean
    tail = {"act": bn.act, "drop": bn.drop} if act else {}
    new = (SyncBatchNormAct if act else SyncBatchNorm)(
        bn.num_features,
        bn.eps,
        bn.momentum,
        bn.affine,
        bn.track_running_stats,
        process_group=group,
        device=None if ref is None else ref.device,
        dtype=None if ref is None else ref.dtype,
        bias=bn.bias is not None or not bn.affine,
        backend=getattr(bn, "backend", "auto"),
        **tail,
    )
    # The same Parameter and buffer objects (as torch's converter): optimizers keep working.
    if bn.affine:
        new.weight = bn.weight
        if bn.bias is not None:
            new.bias = bn.bias
    if bn.track_running_stats:
        new.running_mean = bn.running_mean
        new.running_var = bn.running_var
        new.num_batches_tracked = bn.num_batches_tracked
    new.train(bn.training)
    if hasattr(bn, "qconfig"):
        new.qconfig = bn.qconfig
    return new


def _sync_bn_factory(num_features: int, spatial_dims: int, **kwargs: Any) -> nn.Module:
    del spatial_dims  # SyncBatchNorm accepts any (N, C, *) input
    return SyncBatchNorm(num_features, **kwargs)


register_norm(
    "sync-bn",
    _sync_bn_factory,
    "bnlab batch norm with statistics synchronized across torch.distributed processes",
)
