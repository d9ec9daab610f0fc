"""Fully connected MNIST networks of seeds 001 and 002: the 784-100-100-10 sigmoid MLP with
predetermined N(0, 1) weights and the seed's hand-written batch norm (batch statistics only,
or the ``batch_norm_wrapper`` with population EMA), and the Model builder (784-32-32-10 ReLU).
"""

from __future__ import annotations

import itertools
from collections import OrderedDict
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from bnlab.errors import UnknownNameError
from bnlab.models.init import tf_init_
from bnlab.models.seed_norm import PopulationBatchNorm
from bnlab.norm.layers.registry import get_norm
from bnlab.norm.ops.functional import (
    batch_norm,
    batch_stats,
    normalize,
    update_running_stats,
)

__all__ = [
    "ACTIVATIONS",
    "SIGMOID_MLP_NORMS",
    "BatchNormWrapper",
    "BatchStatNorm",
    "SigmoidMLP",
    "build_mlp",
    "predetermined_weights",
]

#: How the sigmoid MLP normalizes the inputs of its hidden sigmoids (seed 001):
#: ``"none"`` (bias, no BN), ``"batch"`` (the seed's first BN net: batch statistics, always),
#: ``"population"`` (the seed's ``batch_norm_wrapper``: batch statistics and an EMA of them
#: while training, the EMA in inference).
SIGMOID_MLP_NORMS = ("none", "batch", "population")

# PyTorch's kernel: these layers see (60, 100) batches 40,000 times, where the fused numba
# kernel's per-call glue (and its threads) cost more than the arithmetic.
_BACKEND = "native"

#: Activation names accepted by :func:`build_mlp`.
ACTIVATIONS: dict[str, type[nn.Module]] = {"relu": nn.ReLU, "sigmoid": nn.Sigmoid, "tanh": nn.Tanh}


def predetermined_weights(
    seed: int, sizes: Sequence[int] = (784, 100, 100, 10), std: float = 1.0
) -> list[Tensor]:
    """The seed's "predetermined random weights": one ``N(0, std^2)`` matrix per layer.

    Seed 001 draws ``w1_initial = np.random.normal(size=(784, 100))`` etc. once and gives
    the SAME arrays to every network it compares. Here the draw is a function of ``seed``
    alone (a private ``torch.Generator``), so every variant run with the same seed starts
    from identical weights, whatever else consumed random numbers before.

    Args:
        seed: fixes the draw.
        sizes: layer widths ``(in, hidden..., out)``.
        std: standard deviation (the seed's ``np.random.normal`` default, 1).

    Returns:
        Matrices of shape ``(sizes[i], sizes[i + 1])`` (TF's ``(in, out)`` layout), float32.

    Raises:
        ValueError: fewer than two sizes, a size below 1, or ``std <= 0``.

    >>> [tuple(w.shape) for w in predetermined_weights(0)]
    [(784, 100), (100, 100), (100, 10)]
    >>> torch.equal(predetermined_weights(3)[0], predetermined_weights(3)[0])
    True
    """
    if len(sizes) < 2 or any(s < 1 for s in sizes):
        raise ValueError(f"sizes must hold at least two positive widths; got {tuple(sizes)}")
    if not std > 0:
        raise ValueError(f"std must be > 0; got {std}")
    gen = torch.Generator().manual_seed(int(seed))
    return [
        torch.randn(n_in, n_out, generator=gen) * std for n_in, n_out in itertools.pairwise(sizes)
    ]


class BatchStatNorm(nn.Module):
    """Batch norm that only ever uses the statistics of the batch it is given (seed 001, part 1).

    ``y = gamma * (x - mean_B) / sqrt(var_B + eps) + beta`` with ``mean_B`` and the biased
    ``var_B`` over the batch (``tf.nn.moments(z, [0])``), in training AND inference: the
    seed's first BN network has no population statistics at all. Fed one example, every
    feature normalizes to 0 (``var_B = 0``) and the output is ``beta`` whatever the input:
    the pitfall the seed demonstrates. Unlike ``bnlab.norm.BatchNorm1d`` (which refuses a
    batch of one) it therefore accepts one example and computes exactly that.

    Args:
        num_features: features C.
        eps: added to the variance (the seed's 1e-3).

    Shape:
        ``(N, C)`` -> ``(N, C)``.

    >>> bn = BatchStatNorm(3)
    >>> bn.eval()(torch.randn(1, 3)).tolist()  # one example: beta, whatever the input
    [[0.0, 0.0, 0.0]]
    """

    def __init__(self, num_features: int, eps: float = 1e-3) -> None:
        super().__init__()
        if num_features < 1:
            raise ValueError(f"num_features must be >= 1; got {num_features}")
        self.num_features = num_features
        self.eps = eps
        self.gamma = nn.Parameter(torch.ones(num_features))  # the seed's scale
        self.beta = nn.Parameter(torch.zeros(num_features))

    def forward(self, x: Tensor) -> Tensor:
        _check_features(self, x)
        if x.shape[0] == 1:
            # One example: mean_B = x and var_B = 0, so the output is beta. bnlab's
            # batch_norm refuses this on purpose; this module exists to show it happening.
            mean, var = batch_stats(x)
            return normalize(x, mean, var, self.gamma, self.beta, self.eps)
        return batch_norm(
            x, None, None, self.gamma, self.beta, True, 0.0, self.eps, backend=_BACKEND
        )

    def extra_repr(self) -> str:
        return f"{self.num_features}, eps={self.eps}, statistics=batch (always)"


class BatchNormWrapper(PopulationBatchNorm):
    """The seed-001 ``batch_norm_wrapper``: batch norm with population statistics by EMA.

    Training: normalize with the batch mean and biased variance (``tf.nn.moments``), then
    ``pop_mean = decay * pop_mean + (1 - decay) * mean_B`` and the same for ``pop_variance``
    with the BIASED ``var_B`` (as the seed's ``tf.assign`` ops do; ``bnlab.norm.BatchNorm1d``
    tracks the unbiased one). Inference: normalize with ``pop_mean`` and ``pop_variance``.
    ``pop_mean`` (init 0) and ``pop_variance`` (init 1) are buffers, not parameters: the
    optimizer never sees them (``trainable=False`` in the seed).

    This is :class:`~bnlab.models.deep_cnn.LowLevelBatchNorm`'s update rule on the fast
    ``bnlab.norm.batch_norm`` path: the sigmoid MLP takes 10,000-40,000 tiny steps, where
    per-operation overhead dominates.

    Args:
        num_features: features C.
        eps: added to the variance (the seed's 1e-3).
        decay: weight of the old population value (the seed's 0.999).

    Shape:
        ``(N, C)`` -> ``(N, C)``.

    >>> bn = BatchNormWrapper(2, decay=0.5)
    >>> _ = bn(torch.tensor([[0.0, 2.0], [2.0, 6.0]]))
    >>> bn.pop_mean.tolist(), bn.pop_variance.tolist()
    ([0.5, 2.0], [1.0, 2.5])
    >>> [name for name, _ in bn.named_parameters()]
    ['gamma', 'beta']
    """

    def __init__(self, num_features: int, eps: float = 1e-3, decay: float = 0.999) -> None:
        super().__init__(num_features, eps, decay)

    def forward(self, x: Tensor) -> Tensor:
        _check_features(self, x)
        if not self.training:
            return batch_norm(
                x,
                self.pop_mean,
                self.pop_variance,
                self.gamma,
                self.beta,
                False,
                0.0,
                self.eps,
                backend=_BACKEND,
            )
        y = batch_norm(x, None, None, self.gamma, self.beta, True, 0.0, self.eps, backend=_BACKEND)
        with torch.no_grad():
            var, mean = torch.var_mean(x, dim=0, correction=0)
        update_running_stats(self.pop_mean, self.pop_variance, mean, var, self.momentum)
        return y


def _check_features(module: BatchStatNorm | BatchNormWrapper, x: Tensor) -> None:
    if x.dim() != 2 or x.shape[1] != module.num_features:
        raise ValueError(
            f"{type(module).__name__}({module.num_features}) expects (N, {module.num_features}) "
            f"input; got shape {tuple(x.shape)}"
        )


class _SigmoidLayer(nn.Module):
    """One hidden layer of :class:`SigmoidMLP`: ``dense``, ``norm`` (maybe Identity), sigmoid."""

    def __init__(self, dense: nn.Linear, norm: nn.Module) -> None:
        super().__init__()
        self.dense = dense
        self.norm = norm
        self.act = nn.Sigmoid()

    def forward(self, x: Tensor) -> Tensor:
        return self.act(self.norm(self.dense(x)))


class SigmoidMLP(nn.Module):
    """The seed-001 network: 784-100-100-10 with sigmoid hidden layers and softmax output.

    Hidden layer ``i``: ``z_i = h_{i-1} W_i (+ b_i)``, then (with a norm) ``BN(z_i)``, then
    the sigmoid. ``norm`` (see :data:`SIGMOID_MLP_NORMS`):

    - ``"none"``: ``z_i = h W_i + b_i`` (zero-initialized bias) straight into the sigmoid;
    - ``"batch"``: no pre-BN bias (BN's beta replaces it, BN2015 Section 3.2), then
      :class:`BatchStatNorm` (batch statistics in training and inference, as the seed's
      first BN net);
    - ``"population"``: no pre-BN bias, then the seed's ``batch_norm_wrapper``
      (:class:`BatchNormWrapper`: batch statistics and ``pop = decay * pop + (1 - decay) *
      batch`` while training, population statistics in inference).

    Every weight matrix starts from :func:`predetermined_weights` (``N(0, 1)``), so networks
    built with the same ``weight_seed`` start identically. The sigmoid inputs of hidden
    layer ``probe_layer`` (the seed's ``z2`` / ``BN2``) are available from
    :meth:`forward_with_probe`.

    Args:
        norm: one of :data:`SIGMOID_MLP_NORMS`.
        weight_seed: seed of the predetermined weights.
        sizes: ``(784, 100, 100, 10)``: input, hidden widths, classes.
        output_bias: give the softmax layer a bias (the seed's second version declares
            ``b3`` but never adds it).
        eps: BN epsilon (the seed's 1e-3); decay: the wrapper's EMA decay (0.999).
        weight_std: standard deviation of the predetermined weights.
        probe_layer: 1-based hidden layer whose sigmoid inputs are probed (the seed's 2).

    Raises:
        UnknownNameError: an unknown ``norm``.
        ValueError: bad sizes or ``probe_layer`` out of range.

    Shape:
        ``(N, 784)`` (or ``(N, 1, 28, 28)``, flattened) -> logits ``(N, 10)``.

    >>> net = SigmoidMLP("batch", weight_seed=0)
    >>> logits, z2 = net.forward_with_probe(torch.rand(4, 784))
    >>> tuple(logits.shape), tuple(z2.shape)
    ((4, 10), (4, 100))
    """

    def __init__(
        self,
        norm: str = "none",
        *,
        weight_seed: int = 0,
        sizes: Sequence[int] = (784, 100, 100, 10),
        output_bias: bool = True,
        eps: float = 1e-3,
        decay: float = 0.999,
        weight_std: float = 1.0,
        probe_layer: int = 2,
    ) -> None:
        super().__init__()
        if norm not in SIGMOID_MLP_NORMS:
            raise UnknownNameError("sigmoid-MLP norm", norm, SIGMOID_MLP_NORMS)
        if len(sizes) < 3:
            raise ValueError(
                f"sizes needs an input, at least one hidden width and an output; got {tuple(sizes)}"
            )
        if not 1 <= probe_layer <= len(sizes) - 2:
            raise ValueError(
                f"probe_layer must name a hidden layer, 1..{len(sizes) - 2}; got {probe_layer}"
            )
        self.norm = norm
        self.sizes = tuple(int(s) for s in sizes)
        self.probe_layer = probe_layer
        weights = predetermined_weights(weight_seed, self.sizes, weight_std)
        hidden: list[_SigmoidLayer] = []
        for i, (n_in, n_out) in enumerate(zip(self.sizes[:-2], self.sizes[1:-1], strict=True)):
            dense = nn.Linear(n_in, n_out, bias=norm == "none")
            if norm == "batch":
                bn: nn.Module = BatchStatNorm(n_out, eps=eps)
            elif norm == "population":
                bn = BatchNormWrapper(n_out, eps=eps, decay=decay)
            else:
                bn = nn.Identity()
            hidden.append(_SigmoidLayer(dense, bn))
            with torch.no_grad():
                dense.weight.copy_(weights[i].t())  # TF (in, out) -> torch (out, in)
                if dense.bias is not None:
                    dense.bias.zero_()
        self.hidden = nn.ModuleList(hidden)
        self._layers = hidden  # the same modules, typed (ModuleList yields plain Modules)
        self.logits = nn.Linear(self.sizes[-2], self.sizes[-1], bias=output_bias)
        with torch.no_grad():
            self.logits.weight.copy_(weights[-1].t())
            if self.logits.bias is not None:
                self.logits.bias.zero_()

    def forward_with_probe(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Return ``(logits, sigmoid inputs of hidden layer probe_layer)``.

        The probe is ``z = h W + b`` without BN, ``BN(h W)`` with it: exactly what enters
        the sigmoid (the seed's ``z2`` and ``BN2``).
        """
        h = x.reshape(x.shape[0], -1)
        probe: Tensor | None = None
        for i, layer in enumerate(self._layers, start=1):
            pre = layer.norm(layer.dense(h))
            if i == self.probe_layer:
                probe = pre
            h = layer.act(pre)
        if probe is None:  # unreachable: probe_layer is checked in __init__
            raise RuntimeError("probe layer not reached")
        return self.logits(h), probe

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_with_probe(x)[0]

    def extra_repr(self) -> str:
        return f"norm={self.norm!r}, sizes={self.sizes}, probe_layer={self.probe_layer}"


def build_mlp(
    input_dim: int = 784,
    output_dim: int = 10,
    hidden_dims: Sequence[int] = (32, 32),
    *,
    use_batchnorm: bool = True,
    activation: str = "relu",
    norm: str = "bn",
    bn_eps: float = 1e-3,
    bn_decay: float = 0.99,
) -> nn.Sequential:
    """The seed-002 ``Model`` network: ``[dense -> (BN) -> activation] * len(hidden) -> dense``.

    Each hidden layer is ``tf.layers.dense`` (glorot-uniform kernel, zero bias, the bias is
    kept even before BN, as the seed's code does), then with ``use_batchnorm``
    ``tf.layers.batch_normalization`` (here the ``norm`` registry layer with TF's epsilon
    1e-3 and decay 0.99), then the activation. The output layer gives logits (the softmax
    is in the loss).

    Args:
        input_dim, output_dim: 784 and 10 for MNIST.
        hidden_dims: widths of the hidden layers (the seed's ``[32, 32]``).
        use_batchnorm: insert a norm layer after each hidden dense layer.
        activation: a key of :data:`ACTIVATIONS` (the seed's ``tf.nn.relu``).
        norm: a :func:`bnlab.norm.get_norm` name used when ``use_batchnorm``.
        bn_eps, bn_decay: TF's batch-norm epsilon and decay (momentum ``1 - decay``).

    Returns:
        ``nn.Sequential`` with children ``flatten``, ``layer0``, ``layer1``, ... (each
        ``dense``, [``norm``], ``act``) and ``logits``, initialized from the current torch RNG.

    Raises:
        UnknownNameError: an unknown ``activation`` or ``norm``.
        ValueError: a non-positive size.

    >>> net = build_mlp(use_batchnorm=True)
    >>> [name for name, _ in net.named_children()]
    ['flatten', 'layer0', 'layer1', 'logits']
    >>> net(torch.rand(5, 784)).shape
    torch.Size([5, 10])
    """
    if activation not in ACTIVATIONS:
        raise UnknownNameError("activation", activation, tuple(ACTIVATIONS))
    dims = [input_dim, *hidden_dims, output_dim]
    if any(d < 1 for d in dims):
        raise ValueError(f"every layer size must be >= 1; got {dims}")
    # The seed feeds flat (N, 784) rows; MNIST splits hold (N, 1, 28, 28) images.
    layers: list[tuple[str, nn.Module]] = [("flatten", nn.Flatten())]
    width = input_dim
    for i, h_dim in enumerate(hidden_dims):
        parts: list[tuple[str, nn.Module]] = [("dense", nn.Linear(width, h_dim))]
        if use_batchnorm:
            parts.append(
                ("norm", get_norm(norm, h_dim, spatial_dims=0, eps=bn_eps, decay=bn_decay))
            )
        parts.append(("act", ACTIVATIONS[activation]()))
        layers.append((f"layer{i}", nn.Sequential(OrderedDict(parts))))
        width = h_dim
    layers.append(("logits", nn.Linear(width, output_dim)))
    net = nn.Sequential(OrderedDict(layers))
    tf_init_(net)  # glorot-uniform kernels, zero biases (tf.layers.dense defaults)
    return net
