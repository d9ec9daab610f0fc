"""Network builders for the experiments; the normalization layer is a parameter.

TF-faithful initializers live in :mod:`bnlab.models.init`.
"""

from __future__ import annotations

from bnlab.models.deep_cnn import (
    PLACEMENTS,
    Conv2dSame,
    DeepCNN,
    LowLevelBatchNorm,
    tf_same_padding,
)
from bnlab.models.init import fans, glorot_uniform_, tf_init_, truncated_normal_, zeros_

__all__ = [
    "PLACEMENTS",
    "Conv2dSame",
    "DeepCNN",
    "LowLevelBatchNorm",
    "fans",
    "glorot_uniform_",
    "tf_init_",
    "tf_same_padding",
    "truncated_normal_",
    "zeros_",
]
