"""Norm layers by name: one registry feeds model builders, experiments and the CLI.

``get_norm("bn", 64, spatial_dims=2)`` builds a layer; ``register_norm`` adds a name
(variants register theirs when their module is imported by ``bnlab.norm``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import nn

from bnlab.errors import UnknownNameError
from bnlab.norm.layers.modules import BatchNorm1d, BatchNorm2d, BatchNorm3d
from bnlab.norm.ops.core import resolve_momentum

__all__ = ["NormFactory", "available_norms", "get_norm", "register_norm"]

# factory(num_features, spatial_dims, **kwargs) -> module taking (N, C, *spatial) input.
NormFactory = Callable[..., nn.Module]

SPATIAL_DIMS = (0, 1, 2, 3)  # (N, C), (N, C, L), (N, C, H, W), (N, C, D, H, W)

_NORMS: dict[str, tuple[NormFactory, str]] = {}


def register_norm(
    name: str, factory: NormFactory, description: str, *, replace: bool = False
) -> None:
    """Make ``get_norm(name, ...)`` build layers with ``factory``.

    Args:
        name: the registry name (lower case, e.g. ``"ghost"``).
        factory: ``factory(num_features, spatial_dims, **kwargs) -> nn.Module``;
            ``spatial_dims`` is 0, 1, 2 or 3 (already checked).
        description: one line for ``available_norms()`` and ``bnlab list``.
        replace: allow overwriting an existing name (otherwise that is an error).

    Raises:
        ValueError: an empty name or description, or a taken name without ``replace``.
    """
    if not name or not isinstance(name, str):
        raise ValueError(f"norm name must be a non-empty string; got {name!r}")
    if not description:
        raise ValueError(f"norm {name!r} needs a one-line description")
    if not callable(factory):
        raise TypeError(f"factory for norm {name!r} must be callable; got {type(factory)}")
    if name in _NORMS and not replace:
        raise ValueError(f"norm {name!r} is already registered; pass replace=True to overwrite")
    _NORMS[name] = (factory, description)


def available_norms() -> dict[str, str]:
    """Registered names mapped to their one-line descriptions, in registration order."""
    return {name: description for name, (_, description) in _NORMS.items()}


def get_norm(name: str, num_features: int, *, spatial_dims: int = 2, **kwargs: Any) -> nn.Module:
    """A norm layer for ``num_features`` channels, by registry name.

    Args:
        name: a key of :func:`available_norms` (``"bn"``, ``"torch-bn"``, ``"none"``, ...).
        num_features: C, the number of channels.
        spatial_dims: 0 for ``(N, C)`` input, 1 for ``(N, C, L)``, 2 for ``(N, C, H, W)``,
            3 for ``(N, C, D, H, W)``.
        **kwargs: passed to the layer (e.g. ``eps=1e-3, decay=0.99``).

    Raises:
        UnknownNameError: ``name`` is not registered (the message lists the valid names).
        ValueError: ``spatial_dims`` is not 0-3.

    >>> get_norm("bn", 16, eps=1e-3)
    BatchNorm2d(16, eps=0.001, momentum=0.1, affine=True, bias=True, track_running_stats=True)
    """
    if name not in _NORMS:
        raise UnknownNameError("norm", name, tuple(_NORMS))
    if spatial_dims not in SPATIAL_DIMS:
        raise ValueError(
            f"spatial_dims must be 0 (N, C), 1 (N, C, L), 2 (N, C, H, W) or 3 "
            f"(N, C, D, H, W); got {spatial_dims!r}"
        )
    factory, _ = _NORMS[name]
    return factory(num_features, spatial_dims, **kwargs)


def _bnlab_bn(num_features: int, spatial_dims: int, **kwargs: Any) -> nn.Module:
    cls = (BatchNorm1d, BatchNorm1d, BatchNorm2d, BatchNorm3d)[spatial_dims]
    return cls(num_features, **kwargs)


def _torch_bn(num_features: int, spatial_dims: int, **kwargs: Any) -> nn.Module:
    # torch.nn has no decay argument: accept it here too, by the layers' one rule.
    decay = kwargs.pop("decay", None)
    if decay is not None:
        kwargs["momentum"] = resolve_momentum(kwargs.get("momentum"), decay)
    cls = (nn.BatchNorm1d, nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)[spatial_dims]
    return cls(num_features, **kwargs)


def _identity(num_features: int, spatial_dims: int, **kwargs: Any) -> nn.Module:
    # No normalization: layer options meant for a norm (eps, momentum, ...) are ignored
    # so a model builder can switch norms without changing its keyword arguments.
    del num_features, spatial_dims, kwargs
    return nn.Identity()


register_norm("bn", _bnlab_bn, "bnlab batch norm (BatchNorm1d/2d/3d; decay= and backend= accepted)")
register_norm("torch-bn", _torch_bn, "torch.nn batch norm (BatchNorm1d/2d/3d), for comparison")
register_norm("none", _identity, "no normalization (nn.Identity; norm options are ignored)")
