"""Build a physically smaller network: conv / linear / BN modules replaced by smaller ones.

General over *which* channels are kept: ``keep`` maps a channel group to the indices of its kept
channels (MetaPruning keeps the first k, as its generator crops ``w[:out, :in]``; an L1 baseline
passes the channels of largest filter norm). Tensors really shrink -- no masks -- so the result
exports to ONNX as an ordinary smaller model.
"""

from __future__ import annotations

import copy
from typing import Mapping, Sequence

import torch
import torch.nn as nn

from metaedge.compress.bn import recalibrate_bn
from metaedge.compress.graph import GraphAnalysis

__all__ = ["materialize", "l1_keep", "normalize_keep", "recalibrate_bn"]


def normalize_keep(analysis: GraphAnalysis, keep: Mapping[str, Sequence[int] | torch.Tensor]) -> dict[str, torch.Tensor]:
    """Sorted LongTensors; checks fixed groups stay whole and grouped-conv blocks stay even."""
    out: dict[str, torch.Tensor] = {}
    for g, idx in keep.items():
        grp = analysis.groups[g]
        t = torch.as_tensor(idx, dtype=torch.long).unique(sorted=True)
        if len(t) == 0 or int(t.min()) < 0 or int(t.max()) >= grp.size:
            raise ValueError(f"group {g}: kept indices must lie in [0, {grp.size}) and not be empty")
        if not grp.prunable and len(t) != grp.size:
            raise ValueError(f"group {g} is fixed at full width ({grp.reason})")
        if grp.chunks > 1:
            counts = torch.bincount(t // (grp.size // grp.chunks), minlength=grp.chunks)
            if not bool((counts == counts[0]).all()):
                raise ValueError(f"group {g}: grouped conv needs the same number of kept channels in each of its {grp.chunks} blocks")
        out[g] = t
    return out


def _set_module(root: nn.Module, name: str, new: nn.Module) -> None:
    parent, _, attr = name.rpartition(".")
    setattr(root.get_submodule(parent) if parent else root, attr, new)


def _grouped_weight(w: torch.Tensor, out_idx: torch.Tensor, in_idx: torch.Tensor, groups: int, cin_full: int) -> torch.Tensor:
    """Weight [out, in/groups, k, k] of a grouped conv restricted to kept in/out channels, block by block."""
    cout_full = w.shape[0]
    ob, ib = cout_full // groups, cin_full // groups
    parts = []
    for j in range(groups):
        o = out_idx[(out_idx >= j * ob) & (out_idx < (j + 1) * ob)]
        i = in_idx[(in_idx >= j * ib) & (in_idx < (j + 1) * ib)] - j * ib
        parts.append(w[o][:, i])
    return torch.cat(parts, 0)


@torch.no_grad()
def materialize(model: nn.Module, analysis: GraphAnalysis, keep: Mapping[str, Sequence[int] | torch.Tensor]) -> nn.Module:
    """A deep copy of ``model`` whose conv/linear/BN modules keep only the channels in ``keep``
    (group -> kept channel indices; groups not listed stay whole). Weights are copied from ``model``."""
    keep_t = normalize_keep(analysis, keep)
    new_model = copy.deepcopy(model)
    mods = dict(model.named_modules())
    for name, info in analysis.layers.items():
        if info.kind not in ("conv", "linear", "bn"):
            continue
        old = mods[name]
        # the analysis records conv/linear/BN layers with their layouts
        assert info.in_layout is not None and info.out_layout is not None, name
        out_idx = analysis.layout_index(info.out_layout, keep_t)
        if info.kind == "bn":
            if len(out_idx) == old.num_features:
                continue
            new = type(old)(len(out_idx), eps=old.eps, momentum=old.momentum, affine=old.affine, track_running_stats=old.track_running_stats)
            if old.affine:
                new.weight.copy_(old.weight[out_idx])
                new.bias.copy_(old.bias[out_idx])
            if old.track_running_stats:
                new.running_mean.copy_(old.running_mean[out_idx])
                new.running_var.copy_(old.running_var[out_idx])
                new.num_batches_tracked.copy_(old.num_batches_tracked)
            _set_module(new_model, name, new.to(old.weight.device if old.affine else out_idx.device))
            continue
        in_idx = analysis.layout_index(info.in_layout, keep_t)
        w = old.weight
        if info.kind == "linear":
            if len(out_idx) == old.out_features and len(in_idx) == old.in_features:
                continue
            new = nn.Linear(len(in_idx), len(out_idx), bias=old.bias is not None)
            new.weight.copy_(w[out_idx][:, in_idx])
        else:
            if len(out_idx) == old.out_channels and len(in_idx) == old.in_channels:
                continue
            if info.depthwise:
                groups = len(out_idx)
                weight = w[out_idx]
            elif old.groups == 1:
                groups = 1
                weight = w[out_idx][:, in_idx]
            else:
                groups = old.groups
                weight = _grouped_weight(w, out_idx, in_idx, groups, old.in_channels)
            new = nn.Conv2d(
                len(in_idx),
                len(out_idx),
                old.kernel_size,
                old.stride,
                old.padding,
                old.dilation,
                groups,
                bias=old.bias is not None,
                padding_mode=old.padding_mode,
            )
            new.weight.copy_(weight)
        if old.bias is not None:
            new.bias.copy_(old.bias[out_idx])
        _set_module(new_model, name, new.to(w.device, w.dtype))
    return new_model


@torch.no_grad()
def l1_keep(model: nn.Module, analysis: GraphAnalysis, widths: Mapping[str, int]) -> dict[str, torch.Tensor]:
    """Magnitude channel selection (Li et al., 2017): per group, keep the channels whose producer
    filters have the largest summed L1 norm (per block for grouped convs)."""
    mods = dict(model.named_modules())
    keep = {}
    for g, w in widths.items():
        grp = analysis.groups[g]
        if w >= grp.size:
            continue
        score = torch.zeros(grp.size)
        for p in grp.producers:
            weight = mods[p].weight.detach().float().cpu()
            score += weight.abs().reshape(weight.shape[0], -1).sum(1)
        if grp.chunks == 1:
            keep[g] = score.topk(w).indices.sort().values
        else:
            block, per = grp.size // grp.chunks, w // grp.chunks
            keep[g] = torch.cat([score[j * block : (j + 1) * block].topk(per).indices + j * block for j in range(grp.chunks)]).sort().values
    return keep
