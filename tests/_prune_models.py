"""Small hand-built CNNs covering the channel-coupling patterns (shared by the pruning tests)."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import TensorDataset

from metaedge.data import DataSplits


def cbr(cin: int, cout: int, k: int = 3, groups: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, k, 1, k // 2, groups=groups, bias=False), nn.BatchNorm2d(cout), nn.ReLU())


class Residual(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = cbr(3, 16)
        self.a1, self.a2 = cbr(16, 32), nn.Sequential(nn.Conv2d(32, 16, 3, 1, 1), nn.BatchNorm2d(16))
        self.b1, self.b2 = cbr(16, 24), nn.Sequential(nn.Conv2d(24, 16, 3, 1, 1), nn.BatchNorm2d(16))
        self.fc = nn.Linear(16, 5)

    def forward(self, x):
        x = self.stem(x)
        x = F.relu(x + self.a2(self.a1(x)))
        x = F.relu(self.b2(self.b1(x)) + x)
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


class Depthwise(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.expand = cbr(3, 24, 1)
        self.dw = cbr(24, 24, 3, groups=24)
        self.project = nn.Conv2d(24, 16, 1)
        self.fc = nn.Linear(16, 5)

    def forward(self, x):
        x = self.project(self.dw(self.expand(x)))
        return self.fc(x.mean((2, 3)))


class Grouped(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.c1 = cbr(3, 32, 1)
        self.g = cbr(32, 64, 3, groups=4)
        self.c2 = cbr(64, 16, 1)
        self.fc = nn.Linear(16, 5)

    def forward(self, x):
        return self.fc(self.c2(self.g(self.c1(x))).mean((2, 3)))


class Concat(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = cbr(3, 16)
        self.left, self.right = cbr(16, 24, 1), cbr(16, 32, 3)
        self.bn = nn.BatchNorm2d(56)
        self.fuse = cbr(56, 32, 1)
        self.fc = nn.Linear(32 * 4 * 4, 5)  # flatten of C x 4 x 4 into a linear

    def forward(self, x):
        x = self.stem(x)
        x = self.bn(torch.cat([self.left(x), self.right(x)], 1))
        x = F.adaptive_avg_pool2d(self.fuse(x), 4)
        return self.fc(x.view(x.size(0), -1))


class SE(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = cbr(3, 32)
        self.se1, self.se2 = nn.Conv2d(32, 8, 1), nn.Conv2d(8, 32, 1)
        self.head = cbr(32, 16, 1)
        self.fc = nn.Linear(16, 5)

    def forward(self, x):
        x = self.stem(x)
        s = torch.sigmoid(self.se2(F.relu(self.se1(F.adaptive_avg_pool2d(x, 1)))))
        x = x * s
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(self.head(x), 1), 1))


class Shuffle(nn.Module):
    """ShuffleNet-style channel shuffle: a view that mixes channels, which pruning cannot follow."""

    def __init__(self) -> None:
        super().__init__()
        self.c1 = cbr(3, 16, 1)
        self.c2 = cbr(16, 16, 1)
        self.c3 = cbr(16, 24, 1)
        self.fc = nn.Linear(24, 5)

    def forward(self, x):
        x = self.c1(x)
        n, c, h, w = x.shape
        x = x.view(n, 4, c // 4, h, w).transpose(1, 2).reshape(n, c, h, w)
        x = self.c3(self.c2(x))
        return self.fc(x.mean((2, 3)))


ALL = {"residual": Residual, "depthwise": Depthwise, "grouped": Grouped, "concat": Concat, "se": SE, "shuffle": Shuffle}


def randomize_bn(model: nn.Module, seed: int = 0) -> nn.Module:
    """Non-trivial BN statistics so equivalence checks are meaningful."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.bias.data.copy_(torch.randn(m.num_features, generator=g) * 0.1)
    return model.eval()


def tiny_data() -> DataSplits:
    """256 random 3x8x8 images with a learnable 4-class label (5 classes declared), split 160/64/32."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(256, 3, 8, 8, generator=g)
    y = (x[:, 0].mean((1, 2)) > 0).long() + 2 * (x[:, 1].mean((1, 2)) > 0).long()
    ds = lambda a, b: TensorDataset(x[a:b], y[a:b])  # noqa: E731
    return DataSplits("tiny", ds(0, 160), ds(160, 224), ds(224, 256), 5, 3, 8, [0.0] * 3, [1.0] * 3)
