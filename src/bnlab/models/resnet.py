"""A ResNet-18-shaped network (He et al. 2016): torchvision's layout at a chosen width.

Used where bnlab must behave like torch's batch norm in a real model: the compatibility
tests (state_dict, fold_bn, torch's converters and fusers) and the compiled training
step of ``bnlab bench``. ``norm`` is the batch-norm class (torch's or bnlab's).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

__all__ = ["BasicBlock", "ResNet18"]

NormFactory = Callable[[int], nn.Module]


class BasicBlock(nn.Module):
    """torchvision's BasicBlock: conv-BN-ReLU-conv-BN, plus the input (a conv+BN
    downsample when the shape changes), then the block's one ReLU module again."""

    def __init__(self, cin: int, cout: int, stride: int, norm: NormFactory) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = norm(cout)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = norm(cout)
        self.downsample: nn.Module | None = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), norm(cout))

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class ResNet18(nn.Module):
    """ResNet-18: a 7x7 stem, 4 stages of 2 BasicBlocks, 20 batch-norm layers.

    Args:
        width: channels of the first stage (64 in the paper); stage ``i`` has
            ``width * 2**i``.
        num_classes: outputs of the final linear layer.
        norm: the batch-norm class, called with the channel count.

    Shape:
        input ``(N, 3, H, W)``; output ``(N, num_classes)``.

    >>> ResNet18(width=4)(torch.randn(2, 3, 32, 32)).shape
    torch.Size([2, 10])
    """

    def __init__(
        self, width: int = 64, num_classes: int = 10, norm: NormFactory = nn.BatchNorm2d
    ) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, width, 7, 2, 3, bias=False)
        self.bn1 = norm(width)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        stages, cin = [], width
        for i, stride in enumerate((1, 2, 2, 2)):
            cout = width * 2**i
            blocks = (BasicBlock(cin, cout, stride, norm), BasicBlock(cout, cout, 1, norm))
            stages.append(nn.Sequential(*blocks))
            cin = cout
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.fc = nn.Linear(cin, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))
