"""CIFAR-style ResNets (He et al., 2016, section 4.2): 6n+2 layers, three stages of 16/32/64 channels.

Shortcuts that change shape use a 1x1 conv + BN (option B), which keeps every model a plain
conv/BN/add graph that ONNX runtimes and the channel-group analysis handle without special cases.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from metaedge.zoo._registry import register_model

__all__ = ["BasicBlock", "ResNetCifar", "resnet20", "resnet56"]


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class ResNetCifar(nn.Module):
    def __init__(self, depth: int, num_classes: int = 10, in_chans: int = 3, width_mult: float = 1.0, input_size: int = 32) -> None:
        super().__init__()
        if (depth - 2) % 6:
            raise ValueError(f"CIFAR ResNet depth must be 6n+2, got {depth}")
        n = (depth - 2) // 6
        widths = [max(1, int(round(w * width_mult))) for w in (16, 32, 64)]
        self.conv1 = nn.Conv2d(in_chans, widths[0], 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        stages = []
        cin = widths[0]
        for i, w in enumerate(widths):
            blocks = []
            for j in range(n):
                blocks.append(BasicBlock(cin, w, 2 if (i > 0 and j == 0) else 1))
                cin = w
            stages.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3 = stages
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(cin, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(torch.flatten(self.pool(x), 1))


@register_model
def resnet20(num_classes: int = 10, in_chans: int = 3, width_mult: float = 1.0, input_size: int = 32) -> ResNetCifar:
    return ResNetCifar(20, num_classes, in_chans, width_mult, input_size)


@register_model
def resnet56(num_classes: int = 10, in_chans: int = 3, width_mult: float = 1.0, input_size: int = 32) -> ResNetCifar:
    return ResNetCifar(56, num_classes, in_chans, width_mult, input_size)
