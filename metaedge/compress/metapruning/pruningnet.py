"""PruningNet (MetaPruning, Liu et al. 2019): generators emit every layer's weights for any widths.

A deep copy of the user's model has each conv / linear replaced by a :class:`GenLayer` -- a
two-layer FC generator ``Linear(n, hidden) -> ReLU -> Linear(hidden, numel(weight))`` fed with the
width ratios of the layer's input and output channel groups; its output is reshaped to the full
kernel and *cropped* to the sampled widths (first k channels, per block for grouped convs) and
applied with ``F.conv2d`` / ``F.linear`` (depthwise: ``groups = channels``). The model's own
forward runs unchanged around them, so any CNN the graph analysis accepts works.

BatchNorm: one shared BN per layer, affine parameters cropped like the weights, batch statistics
while training and *recalibrated* running statistics before every evaluation (reset, cumulative
average over N training batches). We chose recalibration over the paper's per-choice BN
(``affine=False``, one per width choice) because (1) a BN after a concat spans several groups
with different width choices, so "the choice" of a BN is undefined in a general graph, (2) the
paper recalibrates at search time anyway, so per-choice running stats are never used for
scoring, and (3) the trained model's BN affine parameters initialise it directly.

When the user's model is trained (the pipeline's case) each generator's output bias is set to the
trained weights flattened and its last layer to zero, so the PruningNet starts out *as* the
trained model at every width; with distillation from that model a short CPU training suffices.
"""

from __future__ import annotations

import copy
from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from metaedge.compress.graph import GraphAnalysis, Layout

__all__ = ["PruningNet", "GenLayer", "SliceBN"]


class _Ctx:
    """Widths shared by every replaced module of one PruningNet."""

    def __init__(self, analysis: GraphAnalysis) -> None:
        self.analysis = analysis
        self.widths: dict[str, int] = {}
        self.version = 0
        self._keep: dict[str, torch.Tensor] = analysis.crop_keep({})
        self._index_cache: dict[tuple, torch.Tensor] = {}
        self.bn_mode = "batch"  # "batch": batch stats; "recalib": batch stats + accumulate; "eval": running stats
        self.recalib_steps = 0

    def set(self, widths: dict[str, int]) -> None:
        self.widths = dict(widths)
        self._keep = self.analysis.crop_keep(self.widths)
        self._index_cache.clear()
        self.version += 1

    def index(self, layout: Layout) -> torch.Tensor:
        key = (layout.groups, layout.unit)
        if key not in self._index_cache:
            self._index_cache[key] = self.analysis.layout_index(layout, self._keep)
        return self._index_cache[key]

    def size(self, layout: Layout) -> int:
        return self.analysis.layout_size(layout, self.widths)

    def ratios(self, groups: Sequence[str]) -> list[float]:
        g = self.analysis.groups
        return [self.widths.get(n, g[n].size) / g[n].size for n in groups]


class GenLayer(nn.Module):
    """A conv or linear whose weight is generated from the width ratios of its channel groups."""

    def __init__(
        self, orig: nn.Conv2d | nn.Linear, in_layout: Layout, out_layout: Layout, depthwise: bool, ctx: _Ctx, hidden: int, init_from_model: bool
    ) -> None:
        super().__init__()
        self.ctx = [ctx]  # in a list: not a submodule
        self.in_layout, self.out_layout, self.depthwise = in_layout, out_layout, depthwise
        self.enc_groups = tuple(dict.fromkeys(in_layout.groups + out_layout.groups))
        self.is_conv = isinstance(orig, nn.Conv2d)
        self.shape = tuple(orig.weight.shape)
        if isinstance(orig, nn.Conv2d):
            self.stride, self.padding, self.dilation, self.groups = orig.stride, orig.padding, orig.dilation, orig.groups
            self.cin_full = orig.in_channels
        numel = orig.weight.numel()
        self.fc1 = nn.Linear(len(self.enc_groups), hidden)
        self.fc2 = nn.Linear(hidden, numel)
        with torch.no_grad():
            if init_from_model:
                self.fc2.weight.zero_()  # start as the given model at every width
                self.fc2.bias.copy_(orig.weight.detach().reshape(-1))
            else:
                nn.init.normal_(self.fc2.weight, 0, float(orig.weight.std()) / hidden**0.5)
                self.fc2.bias.zero_()
        self.bias = nn.Parameter(orig.bias.detach().clone()) if orig.bias is not None else None
        self._cache: tuple | None = None

    def full_weight(self) -> torch.Tensor:
        ctx = self.ctx[0]
        enc = torch.tensor(ctx.ratios(self.enc_groups), dtype=self.fc1.weight.dtype, device=self.fc1.weight.device)
        return self.fc2(F.relu(self.fc1(enc))).view(self.shape)

    def cropped(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        ctx = self.ctx[0]
        if not torch.is_grad_enabled() and self._cache is not None and self._cache[0] == ctx.version:
            return self._cache[1], self._cache[2]
        w = self.full_weight()
        out_idx = ctx.index(self.out_layout).to(w.device)
        w = w.index_select(0, out_idx)
        if self.is_conv and not self.depthwise:
            if self.groups == 1:
                w = w.index_select(1, ctx.index(self.in_layout).to(w.device))
            else:  # grouped conv: the same first k inputs inside every block
                w = w[:, : ctx.size(self.in_layout) // self.groups]
        elif not self.is_conv:
            w = w.index_select(1, ctx.index(self.in_layout).to(w.device))
        b = self.bias.index_select(0, out_idx) if self.bias is not None else None
        if not torch.is_grad_enabled():
            self._cache = (ctx.version, w, b)
        return w, b

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w, b = self.cropped()
        if not self.is_conv:
            return F.linear(x, w, b)
        groups = w.shape[0] if self.depthwise else self.groups
        return F.conv2d(x, w, b, self.stride, self.padding, self.dilation, groups)


class SliceBN(nn.Module):
    """BatchNorm over the sampled channels of a full-size BN (affine cropped, stats recalibrated)."""

    # buffers (registered in __init__)
    running_mean: torch.Tensor
    running_var: torch.Tensor

    def __init__(self, orig: nn.modules.batchnorm._BatchNorm, layout: Layout, ctx: _Ctx) -> None:
        super().__init__()
        self.ctx = [ctx]
        self.layout = layout
        self.eps = orig.eps
        self.weight = nn.Parameter(orig.weight.detach().clone()) if orig.affine else None
        self.bias = nn.Parameter(orig.bias.detach().clone()) if orig.affine else None
        self.register_buffer("running_mean", orig.running_mean.detach().clone() if orig.running_mean is not None else torch.zeros(orig.num_features))
        self.register_buffer("running_var", orig.running_var.detach().clone() if orig.running_var is not None else torch.ones(orig.num_features))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ctx = self.ctx[0]
        idx = ctx.index(self.layout).to(x.device)
        w = self.weight.index_select(0, idx) if self.weight is not None else None
        b = self.bias.index_select(0, idx) if self.bias is not None else None
        if ctx.bn_mode == "eval" or not self.training:
            return F.batch_norm(x, self.running_mean[idx], self.running_var[idx], w, b, False, 0.0, self.eps)
        if ctx.bn_mode == "recalib":
            rm, rv = self.running_mean[idx].clone(), self.running_var[idx].clone()
            out = F.batch_norm(x, rm, rv, w, b, True, 1.0 / (ctx.recalib_steps + 1), self.eps)  # cumulative average
            with torch.no_grad():
                self.running_mean[idx] = rm
                self.running_var[idx] = rv
            return out
        return F.batch_norm(x, None, None, w, b, True, 0.0, self.eps)


def _set_module(root: nn.Module, name: str, new: nn.Module) -> None:
    parent, _, attr = name.rpartition(".")
    setattr(root.get_submodule(parent) if parent else root, attr, new)


class PruningNet(nn.Module):
    """``set_widths({group: channels})`` then call it like the original model."""

    def __init__(self, model: nn.Module, analysis: GraphAnalysis, hidden: int = 32, init_from_model: bool = True) -> None:
        super().__init__()
        self.analysis = analysis
        self.ctx = _Ctx(analysis)
        self.net = copy.deepcopy(model).float()
        mods = dict(self.net.named_modules())
        for name, info in analysis.layers.items():
            mod = mods[name]
            if info.kind in ("conv", "linear"):
                # the analysis records conv/linear layers only for these types, with both layouts
                assert isinstance(mod, (nn.Conv2d, nn.Linear)) and info.in_layout is not None and info.out_layout is not None
                _set_module(self.net, name, GenLayer(mod, info.in_layout, info.out_layout, info.depthwise, self.ctx, hidden, init_from_model))
            elif info.kind == "bn" and isinstance(mod, nn.BatchNorm2d | nn.BatchNorm1d):
                assert info.out_layout is not None, f"BN {name} on a tensor without channel layout"
                _set_module(self.net, name, SliceBN(mod, info.out_layout, self.ctx))

    def set_widths(self, widths: dict[str, int]) -> None:
        self.ctx.set(widths)

    def train(self, mode: bool = True) -> "PruningNet":
        self.ctx.version += 1  # generated-weight caches are stale after any training
        return super().train(mode)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def gen_layers(self) -> dict[str, GenLayer]:
        return {n: m for n, m in self.net.named_modules() if isinstance(m, GenLayer)}

    def bn_layers(self) -> dict[str, SliceBN]:
        return {n: m for n, m in self.net.named_modules() if isinstance(m, SliceBN)}

    @torch.no_grad()
    def recalibrate(self, batches, steps: int | None = None) -> None:
        """Reset BN running stats and average them over training batches at the current widths."""
        for bn in self.bn_layers().values():
            bn.running_mean.zero_()
            bn.running_var.fill_(1.0)
        was = self.training
        self.train()
        self.ctx.bn_mode = "recalib"
        try:
            for i, x in enumerate(batches):
                if steps is not None and i >= steps:
                    break
                self.ctx.recalib_steps = i
                self(x)
        finally:
            self.ctx.bn_mode = "batch"
            self.train(was)

    @torch.no_grad()
    def full_state_dict(self, model: nn.Module) -> dict[str, torch.Tensor]:
        """A state dict for the *original* model at the current widths: generated full-size weights
        (only the cropped part is meaningful) and the BN parameters/statistics."""
        state = {k: v.clone() for k, v in model.state_dict().items()}
        for name, layer in self.gen_layers().items():
            state[f"{name}.weight"] = layer.full_weight().detach().to(state[f"{name}.weight"].dtype)
            if layer.bias is not None:
                state[f"{name}.bias"] = layer.bias.detach().clone()
        for name, bn in self.bn_layers().items():
            for k in ("weight", "bias", "running_mean", "running_var"):
                t = getattr(bn, k)
                if t is not None and f"{name}.{k}" in state:
                    state[f"{name}.{k}"] = t.detach().clone()
        return state
