"""Network builders for the experiments; the normalization layer is a parameter.

TF-faithful initializers live in :mod:`bnlab.models.init`.
"""

from __future__ import annotations

from bnlab.models.cifar import (
    BN_PLACEMENTS,
    LayerSummary,
    cifar_convnet,
    format_summary,
    summarize_model,
)
from bnlab.models.deep_cnn import (
    PLACEMENTS,
    Conv2dSame,
    DeepCNN,
    LowLevelBatchNorm,
    tf_same_padding,
)
from bnlab.models.fcn import ChannelsLastBatchNorm, ImageFCN
from bnlab.models.init import fans, glorot_uniform_, tf_init_, truncated_normal_, zeros_
from bnlab.models.mlp import (
    BatchNormWrapper,
    BatchStatNorm,
    SigmoidMLP,
    build_mlp,
    predetermined_weights,
)

__all__ = [
    "BN_PLACEMENTS",
    "PLACEMENTS",
    "BatchNormWrapper",
    "BatchStatNorm",
    "ChannelsLastBatchNorm",
    "Conv2dSame",
    "DeepCNN",
    "ImageFCN",
    "LayerSummary",
    "LowLevelBatchNorm",
    "SigmoidMLP",
    "build_mlp",
    "cifar_convnet",
    "fans",
    "format_summary",
    "glorot_uniform_",
    "predetermined_weights",
    "summarize_model",
    "tf_init_",
    "tf_same_padding",
    "truncated_normal_",
    "zeros_",
]
