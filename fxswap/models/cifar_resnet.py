"""The CIFAR ResNets of He et al. (2016, §4.2), as LIT uses them (seed 001, Table 6).

Three stages of n = (d−2)/6 basic blocks of width 16, 32, 64 (post-activation:
conv-BN-ReLU-conv-BN, add, ReLU); the shortcut where the shape changes is
He et al.'s option A: subsample and pad the new channels with zeros, so it has
no parameters. ResNet-20 has 0.27M parameters, ResNet-110 1.7M.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["cifar_resnet", "CifarResNet", "BasicBlock", "PadShortcut"]


class PadShortcut(nn.Module):
    """Option-A shortcut: stride-2 subsampling and zero channels on both sides."""

    def __init__(self, in_planes: int, out_planes: int, stride: int):
        super().__init__()
        self.stride = stride
        self.pad = out_planes - in_planes

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x[:, :, :: self.stride, :: self.stride]
        return F.pad(x, (0, 0, 0, 0, self.pad // 2, self.pad - self.pad // 2))


class BasicBlock(nn.Module):
    def __init__(self, in_planes: int, planes: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu1 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.relu2 = nn.ReLU(inplace=True)
        self.shortcut = PadShortcut(in_planes, planes, stride) if (stride != 1 or in_planes != planes) else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.bn2(self.conv2(self.relu1(self.bn1(self.conv1(x)))))
        return self.relu2(out + self.shortcut(x))


class CifarResNet(nn.Module):
    """ResNet-d for CIFAR; see :func:`cifar_resnet`.

    >>> m = CifarResNet(8)
    >>> len(m.layer1), m.layer2[0].shortcut, m(torch.randn(1, 3, 32, 32)).shape
    (1, PadShortcut(), torch.Size([1, 10]))
    """

    def __init__(self, depth: int, num_classes: int = 10):
        super().__init__()
        if depth < 8 or (depth - 2) % 6:
            raise ValueError(f"CIFAR ResNet depth must be 6n+2 (20, 32, 44, 56, 110, ...), got {depth}")
        n = (depth - 2) // 6
        self.conv1 = nn.Conv2d(3, 16, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.relu = nn.ReLU(inplace=True)
        planes = 16
        for s, width in enumerate((16, 32, 64)):
            blocks = []
            for i in range(n):
                blocks.append(BasicBlock(planes, width, 2 if (i == 0 and s > 0) else 1))
                planes = width
            self.add_module(f"layer{s + 1}", nn.Sequential(*blocks))
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(64, num_classes)
        self.num_features = 64
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.kaiming_normal_(m.weight)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        return self.layer3(self.layer2(self.layer1(x)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.pool(self.forward_features(x)).flatten(1))


def cifar_resnet(depth: int, num_classes: int = 10) -> CifarResNet:
    """ResNet-``depth`` for CIFAR (He et al. 2016; LIT Table 6: 20, 32, 44, 56, 110).

    >>> sum(p.numel() for p in cifar_resnet(20).parameters())
    269722
    """
    return CifarResNet(depth, num_classes)
