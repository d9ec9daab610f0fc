"""K sigmoid MLPs of one architecture trained as one stacked model (a "group run").

:class:`StackedSigmoidMLP` holds the parameters of K :class:`~bnlab.models.mlp.SigmoidMLP`
networks stacked along a leading model axis and runs each layer of all K at once
(``torch.baddbmm``/``torch.bmm``, one batch norm over ``K * C`` channels). Every operation
is laid out so that model ``k``'s slice computes exactly what the separate network computes
(the same kernels on the same operand layouts), which the tests check bit for bit.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence

import torch
from torch import Tensor, nn

from bnlab.models.mlp import SigmoidMLP

__all__ = ["StackedSigmoidMLP"]


class _StackedLinear(torch.autograd.Function):
    """``z[k] = x[k] @ w[k].T (+ b[k])`` with the backward of ``F.linear`` per model.

    ``F.linear`` on a 2-D input is ``addmm(b, x, w.t())``; its backward computes the weight
    gradient as ``(g.t() @ x)`` (``mm_mat2_backward`` for a column-major ``w.t()``), the
    input gradient as ``g @ w`` and the bias gradient as ``g.sum(0)``. The batched
    autograd of ``baddbmm`` would form ``x.T @ g`` instead, which rounds differently, so
    the backward is written out here with the same products per model.
    """

    @staticmethod
    def forward(ctx, x: Tensor, w: Tensor, b: Tensor | None) -> Tensor:
        ctx.save_for_backward(x, w)
        ctx.has_bias = b is not None
        wt = w.transpose(1, 2)
        return torch.bmm(x, wt) if b is None else torch.baddbmm(b, x, wt)

    @staticmethod
    def backward(ctx, g: Tensor) -> tuple[Tensor | None, Tensor | None, Tensor | None]:
        x, w = ctx.saved_tensors
        gx = torch.bmm(g, w) if ctx.needs_input_grad[0] else None
        gw = torch.bmm(g.transpose(1, 2), x) if ctx.needs_input_grad[1] else None
        gb = g.sum(1, keepdim=True) if ctx.has_bias and ctx.needs_input_grad[2] else None
        return gx, gw, gb


class _SigmoidPerModel(torch.autograd.Function):
    """``sigmoid`` of each model's slice by its own kernel call, forward and backward.

    ATen's elementwise loops run vector code over whole vectors and scalar code over the
    last few elements, and the two round ``exp`` differently. One call over the whole stack
    would put other elements in the scalar tail than each model's own call does, so the
    stack is computed slice by slice: each slice sees the loop a separate network sees.
    """

    @staticmethod
    def forward(ctx, z: Tensor) -> Tensor:
        out = torch.empty_like(z, memory_format=torch.contiguous_format)
        for k in range(z.shape[0]):
            torch.sigmoid(z[k], out=out[k])
        ctx.save_for_backward(out)
        return out

    @staticmethod
    def backward(ctx, g: Tensor) -> Tensor:
        (out,) = ctx.saved_tensors
        g = g.contiguous()
        grad = torch.empty_like(out)
        for k in range(out.shape[0]):
            torch.ops.aten.sigmoid_backward.grad_input(g[k], out[k], grad_input=grad[k])
        return grad


class StackedSigmoidMLP(nn.Module):
    """The parameters of K :class:`SigmoidMLP` networks stacked, trained as one model.

    Hidden layer ``i`` holds ``weight_i`` ``(K, out, in)`` (each model's ``dense.weight``),
    and either ``bias_i`` ``(K, 1, out)`` (``norm="none"``) or ``gamma_i``/``beta_i``
    ``(K, out)`` (batch norm), plus ``pop_mean_i``/``pop_variance_i`` buffers ``(K, out)``
    for ``norm="population"``; the output layer ``weight_out`` ``(K, classes, hidden)`` and
    ``bias_out`` ``(K, 1, classes)`` when the models have one. Only training mode is
    implemented (batch statistics; the population EMA moves as the separate layers move
    it): inference with population statistics runs on the separate networks after
    :meth:`push`.

    Args:
        models: K >= 1 networks of one architecture (norm, sizes, eps, decay, probe layer,
            output bias); their current parameters and buffers are copied in.

    Raises:
        ValueError: no models, or models of different architectures.

    Shape:
        ``forward_with_probe``: ``(K, N, in)`` or a shared ``(N, in)`` -> logits
        ``(K, N, classes)`` and the probe ``(K, N, hidden_probe)``.

    >>> nets = [SigmoidMLP("batch", weight_seed=s) for s in (0, 1)]
    >>> stacked = StackedSigmoidMLP(nets)
    >>> logits, probe = stacked.forward_with_probe(torch.rand(2, 4, 784))
    >>> tuple(logits.shape), tuple(probe.shape)
    ((2, 4, 10), (2, 4, 100))
    """

    def __init__(self, models: Sequence[SigmoidMLP]) -> None:
        super().__init__()
        if not models:
            raise ValueError("StackedSigmoidMLP needs at least one model; got none")
        first = models[0]
        for model in models[1:]:
            if _architecture(model) != _architecture(first):
                raise ValueError(
                    "StackedSigmoidMLP needs models of one architecture; got "
                    f"{_architecture(first)} and {_architecture(model)}"
                )
        self.num_models = len(models)
        self.norm = first.norm
        self.sizes = first.sizes
        self.probe_layer = first.probe_layer
        self.num_hidden = len(first.hidden)
        norms = [layer.norm for layer in first._layers]
        self.eps = float(getattr(norms[0], "eps", 0.0))
        self.momentum = float(getattr(norms[0], "momentum", 0.0))
        k = self.num_models
        for i in range(self.num_hidden):
            n_out, n_in = first._layers[i].dense.weight.shape
            self.register_parameter(f"weight_{i}", nn.Parameter(torch.empty(k, n_out, n_in)))
            if self.norm == "none":
                self.register_parameter(f"bias_{i}", nn.Parameter(torch.empty(k, 1, n_out)))
            else:
                self.register_parameter(f"gamma_{i}", nn.Parameter(torch.empty(k, n_out)))
                self.register_parameter(f"beta_{i}", nn.Parameter(torch.empty(k, n_out)))
            if self.norm == "population":
                self.register_buffer(f"pop_mean_{i}", torch.empty(k, n_out))
                self.register_buffer(f"pop_variance_{i}", torch.empty(k, n_out))
        n_cls, n_hid = first.logits.weight.shape
        self.weight_out = nn.Parameter(torch.empty(k, n_cls, n_hid))
        self.bias_out = (
            nn.Parameter(torch.empty(k, 1, n_cls)) if first.logits.bias is not None else None
        )
        self.pull(models)

    # -- the separate networks <-> the stack ------------------------------------------------
    def _pairs(self, model: SigmoidMLP) -> list[tuple[Tensor, Tensor]]:
        """(stacked tensor, that model's tensor) for every parameter and buffer."""
        pairs: list[tuple[Tensor, Tensor]] = []
        for i, layer in enumerate(model._layers):
            pairs.append((getattr(self, f"weight_{i}"), layer.dense.weight))
            if self.norm == "none":
                pairs.append((getattr(self, f"bias_{i}"), _tensor(layer.dense, "bias")))
            else:
                pairs.append((getattr(self, f"gamma_{i}"), _tensor(layer.norm, "gamma")))
                pairs.append((getattr(self, f"beta_{i}"), _tensor(layer.norm, "beta")))
            if self.norm == "population":
                pairs.append((getattr(self, f"pop_mean_{i}"), _tensor(layer.norm, "pop_mean")))
                pairs.append(
                    (getattr(self, f"pop_variance_{i}"), _tensor(layer.norm, "pop_variance"))
                )
        pairs.append((self.weight_out, model.logits.weight))
        if self.bias_out is not None:
            pairs.append((self.bias_out, _tensor(model.logits, "bias")))
        return pairs

    def _check_count(self, models: Sequence[SigmoidMLP]) -> None:
        if len(models) != self.num_models:
            raise ValueError(f"expected {self.num_models} models; got {len(models)}")

    @torch.no_grad()
    def pull(self, models: Sequence[SigmoidMLP]) -> None:
        """Copy every parameter and buffer of ``models`` into the stack (model k at k)."""
        self._check_count(models)
        for k, model in enumerate(models):
            for stacked, own in self._pairs(model):
                stacked[k].copy_(own.detach().reshape(stacked[k].shape))

    @torch.no_grad()
    def push(self, models: Sequence[SigmoidMLP]) -> None:
        """Copy model k's slice of every stacked parameter and buffer into ``models[k]``."""
        self._check_count(models)
        for k, model in enumerate(models):
            for stacked, own in self._pairs(model):
                own.copy_(stacked[k].reshape(own.shape))

    # -- forward ----------------------------------------------------------------------------
    def _norm(self, i: int, z: Tensor) -> Tensor:
        """Batch norm of every model's ``(N, C)`` slice with its own batch statistics.

        One ``torch.batch_norm`` call per model, on that model's slice: a single call over
        ``(N, K * C)`` channels reduces with other vector lanes and tails than each
        model's own call, so it would round differently.
        """
        gamma, beta = getattr(self, f"gamma_{i}"), getattr(self, f"beta_{i}")
        ys = [
            torch.batch_norm(z[k], gamma[k], beta[k], None, None, True, 0.0, self.eps, False)
            for k in range(self.num_models)
        ]
        if self.norm == "population":
            # BatchNormWrapper's update: the biased batch variance, decay as momentum.
            means, variances = getattr(self, f"pop_mean_{i}"), getattr(self, f"pop_variance_{i}")
            with torch.no_grad():
                for k in range(self.num_models):
                    var, mean = torch.var_mean(z[k], dim=0, correction=0)
                    for buf, batch in ((means[k], mean), (variances[k], var)):
                        buf.copy_(buf * (1.0 - self.momentum) + batch * self.momentum)
        return torch.stack(ys)

    def forward_with_probe(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """``(logits, sigmoid inputs of hidden layer probe_layer)`` of every model, in
        training mode (batch statistics), as each model's own ``forward_with_probe``."""
        if x.dim() == 2:
            x = x.unsqueeze(0).expand(self.num_models, *x.shape)
        h = x.reshape(self.num_models, x.shape[1], -1)
        probe: Tensor | None = None
        for i in range(self.num_hidden):
            bias = getattr(self, f"bias_{i}") if self.norm == "none" else None
            pre = _StackedLinear.apply(h, getattr(self, f"weight_{i}"), bias)
            if self.norm != "none":
                pre = self._norm(i, pre)
            if i + 1 == self.probe_layer:
                probe = pre
            h = _SigmoidPerModel.apply(pre)
        if probe is None:  # unreachable: probe_layer names a hidden layer
            raise RuntimeError("probe layer not reached")
        return _StackedLinear.apply(h, self.weight_out, self.bias_out), probe

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_with_probe(x)[0]

    @contextlib.contextmanager
    def population_frozen(self, freeze: bool = True) -> Iterator[None]:
        """Restore the population buffers on exit when ``freeze`` (a measurement in
        training mode that must not move the EMA)."""
        buffers = [b for n, b in self.named_buffers() if n.startswith("pop_")] if freeze else []
        saved = [b.clone() for b in buffers]
        try:
            yield
        finally:
            if saved:
                with torch.no_grad():
                    for buf, value in zip(buffers, saved, strict=True):
                        buf.copy_(value)

    def extra_repr(self) -> str:
        return f"models={self.num_models}, norm={self.norm!r}, sizes={self.sizes}"


def _tensor(module: nn.Module, name: str) -> Tensor:
    """``module.<name>``, which must be a tensor (a parameter or buffer)."""
    value = getattr(module, name, None)
    if not isinstance(value, Tensor):
        raise TypeError(f"{type(module).__name__}.{name} must be a tensor; got {type(value)}")
    return value


def _architecture(model: SigmoidMLP) -> tuple[object, ...]:
    norms = [layer.norm for layer in model._layers]
    return (
        model.norm,
        model.sizes,
        model.probe_layer,
        model.logits.bias is not None,
        tuple(getattr(n, "eps", None) for n in norms),
        tuple(getattr(n, "decay", None) for n in norms),
    )
