"""MobileNetV2 (Sandler et al., 2018) with width multiplier, any input size and channel count.

Inputs of 64 px or less use CIFAR-style strides (stem and the 24-channel stage at stride 1), as
small inputs would otherwise be reduced to 1x1 before the last stages.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from metaedge.zoo._registry import register_model

__all__ = ["MobileNetV2", "InvertedResidual", "mobilenetv2_100", "mobilenetv2_050", "make_divisible"]

# (expansion t, out channels c, repeats n, stride s) -- Table 2 of the paper.
_SETTINGS = [(1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1)]


def make_divisible(v: float, divisor: int = 8) -> int:
    new_v = max(divisor, int(v + divisor / 2) // divisor * divisor)
    if new_v < 0.9 * v:  # never round down by more than 10%
        new_v += divisor
    return new_v


def _conv_bn_relu(cin: int, cout: int, k: int, stride: int, groups: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU6(inplace=True),
    )


class InvertedResidual(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, expand_ratio: int) -> None:
        super().__init__()
        hidden = int(round(cin * expand_ratio))
        self.use_res = stride == 1 and cin == cout
        layers: list[nn.Module] = []
        if expand_ratio != 1:
            layers.append(_conv_bn_relu(cin, hidden, 1, 1))
        layers += [
            _conv_bn_relu(hidden, hidden, 3, stride, groups=hidden),
            nn.Conv2d(hidden, cout, 1, 1, 0, bias=False),
            nn.BatchNorm2d(cout),
        ]
        self.conv = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv(x) if self.use_res else self.conv(x)


class MobileNetV2(nn.Module):
    def __init__(
        self,
        num_classes: int = 1000,
        width_mult: float = 1.0,
        in_chans: int = 3,
        input_size: int = 224,
        dropout: float = 0.2,
    ) -> None:
        super().__init__()
        small = input_size <= 64
        stem_c = make_divisible(32 * width_mult)
        last_c = make_divisible(1280 * max(1.0, width_mult))
        features: list[nn.Module] = [_conv_bn_relu(in_chans, stem_c, 3, 1 if small else 2)]
        cin = stem_c
        for t, c, n, s in _SETTINGS:
            cout = make_divisible(c * width_mult)
            if small and c == 24:
                s = 1
            for i in range(n):
                features.append(InvertedResidual(cin, cout, s if i == 0 else 1, t))
                cin = cout
        features.append(_conv_bn_relu(cin, last_c, 1, 1))
        self.features = nn.Sequential(*features)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(nn.Dropout(dropout), nn.Linear(last_c, num_classes))
        self._init_weights()

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0, 0.01)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(self.features(x))
        return self.classifier(torch.flatten(x, 1))


@register_model
def mobilenetv2_100(num_classes: int = 1000, in_chans: int = 3, input_size: int = 224, width_mult: float = 1.0, **kw) -> MobileNetV2:
    return MobileNetV2(num_classes=num_classes, width_mult=width_mult, in_chans=in_chans, input_size=input_size, **kw)


@register_model
def mobilenetv2_050(num_classes: int = 1000, in_chans: int = 3, input_size: int = 224, width_mult: float = 0.5, **kw) -> MobileNetV2:
    return MobileNetV2(num_classes=num_classes, width_mult=width_mult, in_chans=in_chans, input_size=input_size, **kw)
