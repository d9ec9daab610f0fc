"""Fused CPU batch-norm kernels (numba): training forward, backward and inference forward.

Array kernels live in ``_numba.py``; memory-schedule planning and the torch glue
(:func:`forward`, :func:`backward`) in ``fused.py``.
Nothing here is called directly: ``bnlab.norm.ops.library`` registers these as the PyTorch
operators behind the ``"fused"`` backend. Importing this package imports numba.
"""

from __future__ import annotations

from bnlab.norm.ops.kernels.fused import Plan, backward, forward, plan_for

__all__ = ["Plan", "backward", "forward", "plan_for"]
