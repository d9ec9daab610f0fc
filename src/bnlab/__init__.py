"""bnlab: batch normalization done right, on PyTorch.

The public API is re-exported here explicitly; implementation lives in the layer
packages (``bnlab.norm``, ``bnlab.data``, ...). See ``docs/architecture.md``.
"""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["__version__"]
