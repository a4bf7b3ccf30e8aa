"""Multiplicative Gaussian gates z = mu + sigma * eps, one vector per channel group (Dai et al. 2018).

A gate scales channel c of a group where the channel is *consumed*: on the input of every conv
(not depthwise: channel-wise, like BN) and linear layer whose input layout holds the group. Between
a producer and its consumers a prunable channel only passes channel-wise ops (BN, activations,
pooling, depthwise convs, residual adds, concatenation, which the graph analysis guarantees), so
a gate of 0 there is exactly the channel removed, and every consumer of a residual-coupled or
concatenated group sees the same z (one sample per forward pass). Gating producer outputs instead
would be undone by any BN that follows (a depthwise conv's, or one after a concat).

Deterministic inference takes z = mu, which :func:`fold_gates` multiplies into the consumers'
input channels, leaving an ordinary network.
"""

from __future__ import annotations

import contextlib
from typing import Iterator, Mapping, Sequence

import torch
import torch.nn as nn

from metaedge.compress.graph import GraphAnalysis, Layout

__all__ = ["ChannelGates", "consumers", "fold_gates", "gated"]


def consumers(analysis: GraphAnalysis, groups: Sequence[str]) -> dict[str, Layout]:
    """Conv (not depthwise) and linear layers whose input holds one of ``groups``: name -> input layout."""
    wanted = set(groups)
    return {
        name: info.in_layout
        for name, info in analysis.layers.items()
        if info.kind in ("conv", "linear") and not info.depthwise and info.in_layout is not None and wanted & set(info.in_layout.groups)
    }


class ChannelGates(nn.Module):
    """Gates of ``groups`` laid end to end in two vectors (mu, log sigma^2); index ``total`` is a constant 1
    that stands for every channel of an ungated (fixed) group."""

    kl_weight: torch.Tensor  # buffer (registered in __init__)

    def __init__(
        self, analysis: GraphAnalysis, groups: Sequence[str], cost_weights: Mapping[str, float] | None = None, init_log_sigma2: float = -9.0, seed: int = 0
    ) -> None:
        super().__init__()
        self.analysis = analysis
        self.groups = list(groups)
        self.offsets: dict[str, int] = {}
        n = 0
        for g in self.groups:
            self.offsets[g] = n
            n += analysis.groups[g].size
        self.total = n
        gen = torch.Generator().manual_seed(seed)
        self.mu = nn.Parameter(1.0 + 0.01 * torch.randn(n, generator=gen))
        self.log_sigma2 = nn.Parameter(init_log_sigma2 + 0.01 * torch.randn(n, generator=gen))
        w = torch.ones(n)
        if cost_weights:
            for g in self.groups:
                w[self.offsets[g] : self.offsets[g] + analysis.groups[g].size] = float(cost_weights[g])
            w = w / w.mean()
        self.register_buffer("kl_weight", w)
        self._z: torch.Tensor | None = None

    def index(self, layout: Layout) -> torch.Tensor:
        """For each channel (feature, after a flatten) of ``layout``: its position in the gate vector."""
        parts = []
        for g in layout.groups:
            size = self.analysis.groups[g].size
            parts.append(torch.arange(self.offsets[g], self.offsets[g] + size) if g in self.offsets else torch.full((size,), self.total))
        idx = torch.cat(parts)
        return idx.repeat_interleave(layout.unit) if layout.unit > 1 else idx

    def sample(self, batch: int) -> None:
        """Draw this forward pass's gates: [batch, total + 1] while training, mu (and the 1) otherwise."""
        one = torch.ones(1, dtype=self.mu.dtype, device=self.mu.device)
        if self.training:
            eps = torch.randn(batch, self.total, dtype=self.mu.dtype, device=self.mu.device)
            z = self.mu + eps * torch.exp(0.5 * self.log_sigma2)
            self._z = torch.cat([z, one.expand(batch, 1)], 1)
        else:
            self._z = torch.cat([self.mu, one])

    def gate(self, x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        z = self._z
        if z is None:
            raise RuntimeError("ChannelGates.sample() was not called before the gated layers ran")
        if z.dim() == 1:
            g = z[idx].view(1, -1, *([1] * (x.dim() - 2))) if x.dim() > 2 else z[idx]
        else:
            if z.shape[0] != x.shape[0]:
                raise RuntimeError(f"gated layer got a batch of {x.shape[0]}, the model's input had {z.shape[0]}")
            g = z[:, idx].view(x.shape[0], -1, *([1] * (x.dim() - 2)))
        return x * g

    def log_ratio(self) -> torch.Tensor:
        """log(mu^2 / sigma^2) per gated channel: the information a channel carries, the ranking key."""
        return (torch.log(self.mu.detach().pow(2) + 1e-20) - self.log_sigma2.detach()).float()

    def kl(self) -> torch.Tensor:
        """The paper's bound without gamma: the (weighted) mean over gated channels of log(1 + mu^2 / sigma^2)."""
        ls = self.log_sigma2.clamp(-20.0, 20.0)
        return (self.kl_weight * torch.log1p(self.mu.pow(2) * torch.exp(-ls))).mean()

    def scores(self) -> dict[str, torch.Tensor]:
        r = self.log_ratio().cpu()
        return {g: r[self.offsets[g] : self.offsets[g] + self.analysis.groups[g].size] for g in self.groups}


@contextlib.contextmanager
def gated(model: nn.Module, gates: ChannelGates) -> Iterator[nn.Module]:
    """``model`` with ``gates`` applied (forward hooks) inside the block, the hooks removed after."""
    mods = dict(model.named_modules())
    handles = [model.register_forward_pre_hook(lambda _m, args: gates.sample(args[0].shape[0]))]
    for name, layout in consumers(gates.analysis, gates.groups).items():
        idx = gates.index(layout).to(gates.mu.device)
        handles.append(mods[name].register_forward_pre_hook(lambda _m, args, idx=idx: (gates.gate(args[0], idx), *args[1:])))
    try:
        yield model
    finally:
        for h in handles:
            h.remove()
        gates._z = None


@torch.no_grad()
def fold_gates(model: nn.Module, gates: ChannelGates) -> nn.Module:
    """Multiply z = mu into the input channels of every gated consumer, in place: the plain model then
    computes what the gated one does in eval mode."""
    mods = dict(model.named_modules())
    mu = torch.cat([gates.mu.detach(), torch.ones(1, device=gates.mu.device)])
    for name, layout in consumers(gates.analysis, gates.groups).items():
        m = mods[name]
        scale = mu[gates.index(layout).to(mu.device)].to(m.weight.dtype)
        if isinstance(m, nn.Linear):
            m.weight.mul_(scale.view(1, -1))
        else:  # [out, in/groups, kh, kw]: block j of the output reads block j of the input
            g = m.groups
            w = m.weight.view(g, m.out_channels // g, m.in_channels // g, *m.weight.shape[2:])
            w.mul_(scale.view(g, 1, m.in_channels // g, *([1] * (m.weight.dim() - 2))))
    return model
