"""Analytic cost model: MACs and parameters of any CNN, and the per-layer shapes behind them.

One batch-1 forward pass with hooks on the leaf modules records a :class:`LayerSpec` per layer;
everything else is arithmetic on those specs, so a pruning search can price a width vector
without running the network. ``macs`` counts multiply-accumulates of conv and linear layers (the
convention of the MobileNet and MetaPruning papers); BN, pooling and activations are element-wise
work reported apart as ``elementwise_ops``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Sequence

import torch
import torch.nn as nn

__all__ = ["Cost", "LayerSpec", "count_cost", "count_params", "format_count", "layer_specs", "macs_of_specs"]


@dataclass(frozen=True)
class LayerSpec:
    """One layer's shape; hashable so per-layer latency tables can key on it."""

    kind: str  # "conv", "linear", "bn", "pool", "act"
    in_channels: int
    out_channels: int
    kernel: tuple[int, int] = (1, 1)
    stride: tuple[int, int] = (1, 1)
    groups: int = 1
    in_hw: tuple[int, int] = (1, 1)
    out_hw: tuple[int, int] = (1, 1)
    bias: bool = False
    name: str = ""

    @property
    def macs(self) -> int:
        if self.kind == "conv":
            return self.out_hw[0] * self.out_hw[1] * self.out_channels * (self.in_channels // self.groups) * self.kernel[0] * self.kernel[1]
        if self.kind == "linear":
            return self.in_channels * self.out_channels
        return 0

    @property
    def elementwise_ops(self) -> int:
        if self.kind in ("bn", "act"):
            return self.out_channels * self.out_hw[0] * self.out_hw[1]
        if self.kind == "pool":
            return self.in_channels * self.in_hw[0] * self.in_hw[1]
        return 0

    def shape_key(self) -> "LayerSpec":
        """The spec without its name: layers of equal shape share one latency measurement."""
        d = asdict(self)
        d["name"] = ""
        return LayerSpec(**d)


@dataclass(frozen=True)
class Cost:
    macs: int
    params: int
    elementwise_ops: int

    def to_dict(self) -> dict[str, int]:
        return asdict(self)


def _hw(t: torch.Tensor) -> tuple[int, int]:
    return (int(t.shape[-2]), int(t.shape[-1])) if t.dim() == 4 else (1, 1)


def _pair(v) -> tuple[int, int]:
    return (int(v[0]), int(v[1])) if isinstance(v, (tuple, list)) else (int(v), int(v))


_ACTS = (nn.ReLU, nn.ReLU6, nn.Hardswish, nn.Hardsigmoid, nn.SiLU, nn.GELU, nn.Sigmoid, nn.LeakyReLU)
_POOLS = (nn.AdaptiveAvgPool2d, nn.AvgPool2d, nn.MaxPool2d, nn.AdaptiveMaxPool2d)


def layer_specs(model: nn.Module, input_shape: Sequence[int]) -> list[LayerSpec]:
    """Run one forward pass on zeros of ``input_shape`` (batch forced to 1) and record every leaf layer."""
    specs: list[LayerSpec] = []

    def hook(name: str):
        def fn(mod: nn.Module, inputs, output) -> None:
            x = inputs[0]
            if isinstance(mod, nn.Conv2d):
                specs.append(
                    LayerSpec(
                        "conv",
                        mod.in_channels,
                        mod.out_channels,
                        _pair(mod.kernel_size),
                        _pair(mod.stride),
                        mod.groups,
                        _hw(x),
                        _hw(output),
                        mod.bias is not None,
                        name,
                    )
                )
            elif isinstance(mod, nn.Linear):
                specs.append(LayerSpec("linear", mod.in_features, mod.out_features, bias=mod.bias is not None, name=name))
            elif isinstance(mod, (nn.BatchNorm2d, nn.BatchNorm1d)):
                c = int(output.shape[1])
                specs.append(LayerSpec("bn", c, c, in_hw=_hw(x), out_hw=_hw(output), name=name))
            elif isinstance(mod, _POOLS):
                c = int(output.shape[1])
                specs.append(LayerSpec("pool", c, c, in_hw=_hw(x), out_hw=_hw(output), name=name))
            elif isinstance(mod, _ACTS) and output.dim() >= 2:
                c = int(output.shape[1])
                specs.append(LayerSpec("act", c, c, in_hw=_hw(x), out_hw=_hw(output), name=name))

        return fn

    handles = [m.register_forward_hook(hook(n)) for n, m in model.named_modules() if not list(m.children())]
    was_training = model.training
    try:
        model.eval()
        p = next(iter(model.parameters()), None)
        dtype = p.dtype if p is not None and p.is_floating_point() else torch.float32
        device = p.device if p is not None else torch.device("cpu")
        with torch.no_grad():
            model(torch.zeros((1, *tuple(input_shape)[1:]), dtype=dtype, device=device))
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    return specs


def macs_of_specs(specs: Sequence[LayerSpec]) -> int:
    return sum(s.macs for s in specs)


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def count_cost(model: nn.Module, input_shape: Sequence[int]) -> Cost:
    specs = layer_specs(model, input_shape)
    return Cost(macs=macs_of_specs(specs), params=count_params(model), elementwise_ops=sum(s.elementwise_ops for s in specs))


def format_count(n: float) -> str:
    for unit, scale in (("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:.2f}{unit}"
    return str(int(n))
