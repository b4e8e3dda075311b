"""The pre-activation Wide ResNet of Zagoruyko & Komodakis, as Moonshine uses it.

Seed 000, Table 2: ``conv1`` (3→16), three groups of n = (d−4)/6 blocks of
width 16k, 32k, 64k (the second and third start with stride 2), BN-ReLU,
global average pool, ``fc``. Module paths follow torchvision's habit:
``layer1.0`` … ``layer3.{n-1}``.
"""
from __future__ import annotations

import math

import torch
from torch import nn

__all__ = ["wrn", "WideResNet", "PreActBlock"]


class PreActBlock(nn.Module):
    """BN-ReLU-conv3×3-BN-ReLU-(dropout)-conv3×3 plus the shortcut (Moonshine Table 1, S).

    When the width or stride changes, the first BN-ReLU is shared by the branch
    and a 1×1 projection shortcut, as in the reference implementation.
    """

    def __init__(self, in_planes: int, out_planes: int, stride: int, dropout: float = 0.0):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.relu1 = nn.ReLU(inplace=True)
        self.conv1 = nn.Conv2d(in_planes, out_planes, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_planes)
        self.relu2 = nn.ReLU(inplace=True)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.conv2 = nn.Conv2d(out_planes, out_planes, 3, 1, 1, bias=False)
        self.equal_in_out = in_planes == out_planes and stride == 1
        self.shortcut = None if self.equal_in_out else nn.Conv2d(in_planes, out_planes, 1, stride, 0, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        o = self.relu1(self.bn1(x))
        y = self.conv1(o)
        y = self.conv2(self.dropout(self.relu2(self.bn2(y))))
        shortcut = x if self.shortcut is None else self.shortcut(o)
        return shortcut + y


class WideResNet(nn.Module):
    """WRN-d-k; see :func:`wrn`.

    >>> m = WideResNet(16, 2)
    >>> len(m.layer1), m.layer2[0].shortcut, m.fc
    (2, Conv2d(32, 64, kernel_size=(1, 1), stride=(2, 2), bias=False), Linear(in_features=128, out_features=10, bias=True))
    """

    def __init__(self, depth: int, width: int, num_classes: int = 10, dropout: float = 0.0):
        super().__init__()
        if depth < 10 or (depth - 4) % 6:
            raise ValueError(f"WRN depth must be 6n+4 with n >= 1 (10, 16, 22, 28, 40, ...), got {depth}")
        if width < 1:
            raise ValueError(f"WRN width must be a positive integer, got {width}")
        n = (depth - 4) // 6
        widths = [16, 16 * width, 32 * width, 64 * width]
        self.conv1 = nn.Conv2d(3, widths[0], 3, 1, 1, bias=False)
        for g in range(3):
            blocks = [
                PreActBlock(widths[g] if i == 0 else widths[g + 1], widths[g + 1], (1 if g == 0 else 2) if i == 0 else 1, dropout)
                for i in range(n)
            ]
            self.add_module(f"layer{g + 1}", nn.Sequential(*blocks))
        self.bn = nn.BatchNorm2d(widths[3])
        self.relu = nn.ReLU(inplace=True)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(widths[3], num_classes)
        self.num_features = widths[3]
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                # the reference's normal(0, sqrt(2 / (k*k*out))), i.e. He fan-out
                m.weight.data.normal_(0, math.sqrt(2.0 / (m.kernel_size[0] * m.kernel_size[1] * m.out_channels)))
            elif isinstance(m, nn.BatchNorm2d):
                m.weight.data.fill_(1)
                m.bias.data.zero_()
            elif isinstance(m, nn.Linear):
                m.bias.data.zero_()

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv1(x)
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.relu(self.bn(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(self.forward_features(x)).flatten(1)
        return self.fc(x)


def wrn(depth: int, width: int, num_classes: int = 10, dropout: float = 0.0) -> WideResNet:
    """Wide ResNet WRN-``depth``-``width`` (Moonshine Table 2; Zagoruyko & Komodakis 2016).

    WRN-40-2 on 10 classes has 2,243,546 trainable parameters (2,248,954 with
    BN running statistics, Moonshine Table 3's teacher).

    >>> sum(p.numel() for p in wrn(40, 2).parameters())
    2243546
    """
    return WideResNet(depth, width, num_classes, dropout)
