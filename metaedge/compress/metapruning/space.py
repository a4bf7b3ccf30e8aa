"""The search space: one gene per prunable channel group, and fast analytic pricing of a width vector.

Widths are ratios of the full width rounded to a channel multiple (default 8): measured on ONNX
Runtime, a MobileNetV2 cut to 50% MACs with odd channel counts ran *slower* than the unpruned
model, rounded to multiples of 8 it ran 1.9x faster. Duplicate widths after rounding are
dropped, so every gene value is a distinct architecture.
"""

from __future__ import annotations

import math
import random
from dataclasses import replace
from typing import Callable, Sequence

import torch.nn as nn

from metaedge.compress.cost import LayerSpec, count_params, layer_specs
from metaedge.compress.graph import GraphAnalysis, Layout

__all__ = ["DEFAULT_CHOICES", "Pricer", "WidthSpace", "fill_widths", "repair", "round_width"]

DEFAULT_CHOICES: tuple[float, ...] = tuple(round(0.10 + 0.03 * i, 2) for i in range(31))  # paper: 0.10 .. 1.00


def round_width(ratio: float, size: int, multiple: int = 8, chunks: int = 1) -> int:
    """``ratio * size`` rounded to a multiple of ``multiple`` (and of the group's grouped-conv blocks),
    never below one multiple, never above ``size``."""
    m = math.lcm(max(1, multiple), chunks)
    if size <= m:
        return size
    w = int(round(ratio * size / m)) * m
    w = max(m, w)
    return size if w >= size else w


class WidthSpace:
    def __init__(self, analysis: GraphAnalysis, choices: Sequence[float] = DEFAULT_CHOICES, multiple: int = 8) -> None:
        self.analysis = analysis
        self.choices = tuple(sorted(set(float(c) for c in choices)))
        self.multiple = multiple
        self.groups: list[str] = []
        self.options: list[list[int]] = []  # per gene: the distinct widths, ascending
        for name in analysis.prunable:
            grp = analysis.groups[name]
            opts = sorted({round_width(c, grp.size, multiple, grp.chunks) for c in self.choices})
            if len(opts) > 1 or opts[0] != grp.size:
                self.groups.append(name)
                self.options.append(opts)

    def __len__(self) -> int:
        return len(self.groups)

    def widths(self, genes: Sequence[int]) -> dict[str, int]:
        return {g: opts[i] for g, opts, i in zip(self.groups, self.options, genes, strict=True)}

    def full(self) -> tuple[int, ...]:
        return tuple(len(o) - 1 for o in self.options)

    def smallest(self) -> tuple[int, ...]:
        return tuple(0 for _ in self.options)

    def uniform(self, ratio: float) -> dict[str, int]:
        """Every prunable group at the same ratio (the width-multiplier baseline)."""
        out = {}
        for g in self.groups:
            grp = self.analysis.groups[g]
            out[g] = round_width(ratio, grp.size, self.multiple, grp.chunks)
        return out

    def sample(self, rng: random.Random) -> tuple[int, ...]:
        """A random gene vector. A random cap first, then each gene uniform below it: plain uniform
        genes almost never reach small budgets (MACs scale with the product of two widths)."""
        cap = rng.random()
        return tuple(rng.randrange(max(1, math.ceil(cap * len(o)))) for o in self.options)

    def ratios(self, widths: dict[str, int]) -> dict[str, float]:
        return {g: widths.get(g, grp.size) / grp.size for g, grp in self.analysis.groups.items()}


def repair(
    genes: tuple[int, ...], space: WidthSpace, cost_fn: Callable[[dict[str, int]], float], lo: float, hi: float, rng: random.Random
) -> tuple[int, ...] | None:
    """Narrow random genes until the cost fits, then widen random genes while it stays under budget
    and below ``lo``: small random populations otherwise rarely come near the budget, and the
    best networks almost always use most of it."""
    g = list(genes)
    while cost_fn(space.widths(g)) > hi:
        idx = [i for i, v in enumerate(g) if v > 0]
        if not idx:
            return None
        g[rng.choice(idx)] -= 1
    return fill_widths(space, g, cost_fn, hi, lambda open_, _g: rng.choice(open_), stop_at=lo)


def fill_widths(
    space: WidthSpace,
    genes: Sequence[int],
    cost_fn: Callable[[dict[str, int]], float],
    budget: float,
    pick: Callable[[list[int], list[int]], int],
    stop_at: float | None = None,
) -> tuple[int, ...]:
    """Widen genes one step at a time, the one ``pick(open genes, genes)`` names each time, skipping steps
    that would exceed ``budget``, until no step fits or the cost reaches ``stop_at``. Cost only grows
    with width, so a step that does not fit never will. Every pruner fills its budget with it."""
    g = list(genes)
    open_ = [i for i, v in enumerate(g) if v < len(space.options[i]) - 1]
    while open_ and (stop_at is None or cost_fn(space.widths(g)) < stop_at):
        i = pick(open_, g)
        g[i] += 1
        if cost_fn(space.widths(g)) > budget:
            g[i] -= 1
            open_.remove(i)
        elif g[i] == len(space.options[i]) - 1:
            open_.remove(i)
    return tuple(g)


_PARAM_KINDS = ("conv", "linear", "bn")


class Pricer:
    """Prices a width vector without building the network: the full model's layer specs with the
    channel counts replaced (so a per-layer latency table can price it too)."""

    def __init__(self, model: nn.Module, analysis: GraphAnalysis, input_shape: Sequence[int]) -> None:
        self.analysis = analysis
        self.base_specs = layer_specs(model, input_shape)
        self.base_params = count_params(model)
        self.base_macs = sum(s.macs for s in self.base_specs)
        mods = dict(model.named_modules())
        self._full_layer_params = 0
        self._layer_bias: dict[str, bool] = {}
        for name, info in analysis.layers.items():
            if info.kind in _PARAM_KINDS:
                self._full_layer_params += sum(p.numel() for p in mods[name].parameters(recurse=False))
                m = mods[name]
                self._layer_bias[name] = getattr(m, "bias", None) is not None if info.kind != "bn" else m.affine
        self._kernels = {name: tuple(m.kernel_size) for name, m in mods.items() if isinstance(m, nn.Conv2d)}
        # MACs as a sum of per-layer terms: the search and the PruningNet sampler price thousands of
        # width vectors, and rebuilding every LayerSpec for each costs ~1.6 ms on MobileNetV2.
        self._fixed_macs = 0
        self._mac_terms: list[tuple[int, Layout | None, int, Layout | None, int, bool, int]] = []
        for spec in self.base_specs:
            layer = analysis.layers.get(spec.name)
            if spec.kind not in ("conv", "linear"):
                continue
            if layer is None:
                self._fixed_macs += spec.macs
                continue
            per = spec.out_hw[0] * spec.out_hw[1] * spec.kernel[0] * spec.kernel[1] if spec.kind == "conv" else 1
            self._mac_terms.append(
                (
                    per,
                    layer.in_layout,
                    spec.in_channels,
                    layer.out_layout,
                    spec.out_channels,
                    spec.kind == "conv" and layer.depthwise,
                    spec.groups if spec.kind == "conv" else 1,
                )
            )

    def specs(self, widths: dict[str, int]) -> list[LayerSpec]:
        a = self.analysis
        out = []
        for s in self.base_specs:
            info = a.layers.get(s.name)
            if info is None:
                out.append(s)
                continue
            cin = a.layout_size(info.in_layout, widths) if info.in_layout else s.in_channels
            cout = a.layout_size(info.out_layout, widths) if info.out_layout else s.out_channels
            if s.kind == "linear":
                out.append(replace(s, in_channels=cin, out_channels=cout))
            elif s.kind == "conv":
                groups = cout if info.depthwise else s.groups
                out.append(replace(s, in_channels=cin, out_channels=cout, groups=groups))
            else:
                out.append(replace(s, in_channels=cout, out_channels=cout))
        return out

    def macs(self, widths: dict[str, int]) -> int:
        """``sum(s.macs for s in self.specs(widths))``, computed without building the specs."""
        size = self.analysis.layout_size
        total = self._fixed_macs
        for per, in_layout, cin_full, out_layout, cout_full, depthwise, groups in self._mac_terms:
            cout = size(out_layout, widths) if out_layout else cout_full
            if depthwise:
                total += per * cout
                continue
            cin = size(in_layout, widths) if in_layout else cin_full
            total += per * cout * (cin // groups)
        return total

    def params(self, widths: dict[str, int]) -> int:
        a, total = self.analysis, self.base_params - self._full_layer_params
        for name, info in a.layers.items():
            if info.kind not in _PARAM_KINDS:
                continue
            # the analysis records conv/linear/BN layers with their layouts
            assert info.in_layout is not None and info.out_layout is not None, name
            cout = a.layout_size(info.out_layout, widths)
            if info.kind == "bn":
                total += 2 * cout if self._layer_bias[name] else 0
                continue
            cin = a.layout_size(info.in_layout, widths)
            if info.kind == "linear":
                total += cin * cout
            else:
                kh, kw = self._kernels[name]
                groups = cout if info.depthwise else info.conv_groups
                total += cout * (cin // groups) * kh * kw
            total += cout if self._layer_bias[name] else 0
        return total
