"""Safe statistics for bnlab's batch-norm modules: a per-layer policy for degenerate batches
(one value per channel, or none) and a guard that keeps non-finite batches out of the
running statistics. ``_BatchNorm.forward`` calls :func:`degenerate_forward`, then
:func:`guard_for` before and :func:`finish_guard` after the update; the knobs are the
layers' ``degenerate=`` and ``guard_nonfinite=`` arguments.

The guard has two forms with one outcome (the running statistics and
``num_batches_tracked`` as they were, ``refused_count`` one higher):

- eager on the CPU, where reading a value costs no device sync: checked on the host, and a
  refusal is warned at once with its step (``refused_steps``);
- everywhere else (CUDA, ``torch.compile``/``torch.export``, ``torch.jit.trace``, fake and
  meta tensors): decided on the device with ``torch.where``, no host sync and no graph
  break; the count is warned lazily, when the layer goes to ``eval()`` (or by the doctor).
"""

from __future__ import annotations

import math
import warnings
from typing import Any

import torch
from torch import Tensor, nn

from bnlab.norm.ops import _validation
from bnlab.norm.ops.functional import batch_norm, batch_stats, normalize

__all__ = [
    "DEGENERATE_POLICIES",
    "DegenerateBatchWarning",
    "NonFiniteBatchWarning",
    "check_policy",
    "degenerate_forward",
    "finish_guard",
    "guard_for",
    "is_degenerate",
    "label_layers",
    "refusals",
    "restore_if_nonfinite",
    "snapshot_running_stats",
    "warn_refusals",
]

#: policy -> what a degenerate training batch (<= 1 value per channel) does.
DEGENERATE_POLICIES: dict[str, str] = {
    "raise": "raise ValueError for one value per channel, as torch does (an empty batch "
    "gives an empty output and is counted, as in torch)",
    "population": "normalize with the running statistics (as in eval mode); no update",
    "skip": "normalize with the batch's own statistics (one value: output = bias, as "
    "TensorFlow does); no update, not counted",
}

_KEEP_STEPS = 100  # refused steps remembered per layer (the counter keeps counting)


class DegenerateBatchWarning(RuntimeWarning):
    """A layer met a batch with at most one value per channel and applied its policy."""


class NonFiniteBatchWarning(RuntimeWarning):
    """A layer refused to move its running statistics toward a NaN/Inf batch."""


def check_policy(policy: str) -> str:
    """``policy`` if it is a key of :data:`DEGENERATE_POLICIES`, else ValueError."""
    if policy not in DEGENERATE_POLICIES:
        raise ValueError(
            f"degenerate must be one of {', '.join(map(repr, DEGENERATE_POLICIES))}; got {policy!r}"
        )
    return policy


def is_degenerate(input: Tensor) -> bool:
    """Whether ``input`` holds at most one value per channel (dim 1): no batch variance."""
    return _validation.values_per_channel(input) <= 1


def layer_label(layer: nn.Module) -> str:
    """The name warnings use: ``layer_name`` (see :func:`label_layers`) or the class."""
    name = getattr(layer, "layer_name", None)
    return f"{name!r}" if name else f"{type(layer).__name__}({getattr(layer, 'num_features', '')})"


def label_layers(model: nn.Module) -> nn.Module:
    """Give every bnlab norm layer in ``model`` its qualified name (``layer_name``), so its
    warnings say which layer of the model refused or degraded a batch. Returns ``model``.

    >>> from bnlab.norm.layers.modules import BatchNorm1d
    >>> net = label_layers(nn.Sequential(nn.Linear(2, 2), BatchNorm1d(2)))
    >>> net[1].layer_name
    '1'
    """
    for name, m in model.named_modules():
        if hasattr(m, "guard_nonfinite"):
            m.layer_name = name
    return model


def refusals(model: nn.Module) -> dict[str, dict[str, Any]]:
    """Non-finite batches refused so far, per layer: ``{name: {"count", "steps"}}``.

    Only layers that refused at least one batch are listed; ``steps`` holds the layer's
    training-step numbers (``num_batches_tracked`` had the batch been counted), the last
    100 of them (eager CPU only: refusals decided on the device have no step).
    """
    found = {}
    for name, m in model.named_modules():
        count = getattr(m, "refused_batches", 0)
        if count:
            found[name] = {"count": count, "steps": list(m.refused_steps)}
    return found


def _warn_once(layer: Any, input: Tensor, policy: str) -> None:
    if getattr(layer, "_degenerate_warned", False):
        return
    layer._degenerate_warned = True
    warnings.warn(
        f"batch norm {layer_label(layer)} got a training batch of shape "
        f"{tuple(input.shape)} ({_validation.values_per_channel(input)} value(s) per "
        f"channel); policy {policy!r}: {DEGENERATE_POLICIES[policy]}. Warned once per layer.",
        DegenerateBatchWarning,
        stacklevel=4,
    )


def degenerate_forward(layer: Any, input: Tensor) -> Tensor | None:
    """Apply ``layer.degenerate`` to a training batch with at most one value per channel.

    Returns the output, or None to let the layer run as usual (policy ``"raise"`` on an
    empty batch: torch's behaviour).

    Raises:
        ValueError: policy ``"raise"`` and one value per channel; policy
            ``"population"`` on a layer without running statistics.
    """
    policy = layer.degenerate
    if policy == "raise":
        _validation.check_one_value_per_channel(input)
        return None
    if policy == "population":
        if layer.running_mean is None or layer.running_var is None:
            raise ValueError(
                f"batch norm {layer_label(layer)}: degenerate='population' needs running "
                "statistics, but the layer has track_running_stats=False; use "
                "degenerate='skip' or 'raise'"
            )
        _warn_once(layer, input, policy)
        return batch_norm(
            input,
            layer.running_mean,
            layer.running_var,
            layer.weight,
            layer.bias,
            False,
            0.0,
            layer.eps,
            backend=layer.backend,
        )
    _warn_once(layer, input, policy)  # "skip"
    if input.numel() == 0:
        return batch_norm(input, None, None, layer.weight, layer.bias, True, 0.0, layer.eps)
    mean, var = batch_stats(input)  # one value: mean = x, biased variance 0
    return normalize(input, mean, var, layer.weight, layer.bias, layer.eps)


def snapshot_running_stats(layer: Any, active: bool) -> tuple[Tensor, ...] | None:
    """Copy ``layer``'s running statistics before an update that the guard must watch.

    Returns the state :func:`restore_if_nonfinite` needs, or None when the guard is off
    for this call (``active`` False, ``layer.guard_nonfinite`` False, or no running
    statistics). The copies live in buffers allocated once per layer (again when the
    running buffers are replaced, e.g. by ``.to()``), so a step costs one small copy.
    """
    if not (active and layer.guard_nonfinite):
        return None
    buffers = getattr(layer, "_buffers", {})
    mean, var = buffers.get("running_mean"), buffers.get("running_var")
    if mean is None or var is None:
        return None
    shadow = layer.__dict__.get("_guard_shadow")
    if shadow is None or shadow[3] is not mean or shadow[4] is not var:
        # Normal tensors even inside torch.inference_mode() (writable in and out of it).
        with torch.inference_mode(False):
            saved = torch.empty(mean.numel() + var.numel(), dtype=mean.dtype, device=mean.device)
            shadow = (saved, torch.empty_like(saved), torch.zeros_like(saved), mean, var)
        layer.__dict__["_guard_shadow"] = shadow
    torch.cat((mean, var), out=shadow[0])
    return shadow


def restore_if_nonfinite(layer: Any, shadow: tuple[Tensor, ...] | None) -> None:
    """Undo the update since :func:`snapshot_running_stats` if it left a NaN/Inf behind.

    If either running buffer holds a non-finite value, the copies are put back, the batch
    is uncounted (``num_batches_tracked`` back by one), ``refused_batches`` grows by one,
    the step joins ``refused_steps``, and a :class:`NonFiniteBatchWarning` names the layer
    and step. ``shadow`` None (guard off) does nothing. One host sync per call.
    """
    if shadow is None:
        return
    saved, now, zeros, mean, var = shadow
    torch.cat((mean, var), out=now)
    # x * 0 is 0 for every finite x and NaN for NaN/Inf, so the dot product with zeros is
    # 0 exactly when every value is finite; unlike a sum of the values it cannot overflow.
    if math.isfinite(float(torch.dot(now, zeros))):
        return
    with torch.no_grad():  # through .data: the batch-norm op saved these for its backward
        mean.data.copy_(saved[: mean.numel()])
        var.data.copy_(saved[mean.numel() :])
        tracked = layer.num_batches_tracked
        count = layer.refused_count.add_(1)
        step = int(tracked) if tracked is not None else int(count)
        if tracked is not None:
            tracked.sub_(1)
    layer.refused_steps.append(step)
    del layer.refused_steps[:-_KEEP_STEPS]
    layer._refusals_warned = int(count)
    warnings.warn(
        f"batch norm {layer_label(layer)} refused a non-finite batch at step {step} "
        f"({int(count)} refused so far): its running statistics are unchanged; "
        "the output still carries the NaN/Inf. Look for an overflow upstream (e.g. a "
        "mixed-precision step) or a learning rate that diverges.",
        NonFiniteBatchWarning,
        stacklevel=2,
    )


_Guard = tuple[bool, Any]


def guard_for(
    layer: Any, input: Tensor, tracking: bool, mean: Tensor | None, var: Tensor | None
) -> tuple[_Guard | None, Tensor | None, Tensor | None]:
    """Start the non-finite guard for one forward of ``layer`` on ``input``.

    ``mean``/``var`` are the running statistics the forward would update. Returns
    ``(guard, mean, var)``: what :func:`finish_guard` needs (None when there is nothing to
    guard: ``tracking`` False, ``layer.guard_nonfinite`` False, no running statistics),
    and the tensors the kernel must update instead: the buffers themselves on the host
    path, copies of them on the device path (the buffers take the copies only if finite).
    """
    if not (tracking and layer.guard_nonfinite) or mean is None or var is None:
        return None, mean, var
    # Plain eager CPU, where reading a value costs no device sync: the host check.
    # (is_compiling first: under dynamo it is constant True and the rest is not traced.)
    if (
        type(input) is Tensor
        and input.is_cpu
        and not torch.compiler.is_compiling()
        and not torch._C._is_tracing()
    ):
        shadow = snapshot_running_stats(layer, True)
        return (None if shadow is None else (True, shadow)), mean, var
    # Copies, not the buffers: restoring a buffer afterwards would modify a tensor that
    # autograd saved for backward.
    new_mean, new_var = mean.clone(), var.clone()
    return (False, (new_mean, new_var)), new_mean, new_var


def finish_guard(layer: Any, guard: _Guard | None) -> None:
    """Complete the guard :func:`guard_for` started, after the running-statistics update."""
    if guard is None:
        return
    on_host, state = guard
    if on_host:
        restore_if_nonfinite(layer, state)
    else:
        _commit_if_finite(layer, *state)


def _commit_if_finite(layer: Any, new_mean: Tensor, new_var: Tensor) -> None:
    """The guard without a host sync: the buffers take the update only if all of it is finite."""
    mean, var = layer.running_mean, layer.running_var
    with torch.no_grad():
        ok = torch.isfinite(torch.cat((new_mean, new_var))).all()
        mean.copy_(torch.where(ok, new_mean, mean))
        var.copy_(torch.where(ok, new_var, var))
        refused = (~ok).to(torch.long)
        if layer.num_batches_tracked is not None:
            layer.num_batches_tracked.sub_(refused)
        if torch.compiler.is_exporting() or type(refused) is not Tensor:
            return  # an exported program keeps buffer updates only; fake tensors count nothing
        if layer.refused_count.device != refused.device:  # the layer moved (eager only)
            layer.refused_count = layer.refused_count.to(refused.device)
        layer.refused_count.add_(refused)


def warn_refusals(layer: Any) -> None:
    """Warn once about refusals not warned yet (those decided on the device).

    Called when a layer goes to ``eval()``; reads the count (one sync). Does nothing
    while compiling or when the count has not grown since the last warning.
    """
    count_buffer = getattr(layer, "refused_count", None)
    if type(count_buffer) is not Tensor or count_buffer.is_meta:
        return  # no count, or a fake/meta one (shape inference): nothing to read
    if torch.compiler.is_compiling():
        return
    count = int(count_buffer)
    if count <= getattr(layer, "_refusals_warned", 0):
        return
    layer._refusals_warned = count
    warnings.warn(
        f"batch norm {layer_label(layer)} refused {count} non-finite batch(es) so far: its "
        "running statistics kept their last finite values. Look for an overflow upstream "
        "(e.g. a mixed-precision step) or a learning rate that diverges.",
        NonFiniteBatchWarning,
        stacklevel=3,
    )
