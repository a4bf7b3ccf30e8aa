"""Which layers to factorize and at which ranks, under a MACs budget (the energy heuristic).

Each kxk conv (groups == 1, k > 1) has two channel modes, each linear one; a mode's spectrum is the
squared singular values of the kernel unfolded along it (HOSVD). At ranks r the mode keeps the
share of its energy held by the top r values. One energy threshold e for every mode gives each
layer its ranks (rounded up to the rank multiple); a layer stays whole where its factorized form
would cost as much as it does. The largest e under the budget is found by bisection (the total is
monotone in e), then single rank steps are added, the most energy per MAC first, while the budget
allows. MACs follow the cost model: the first 1x1 runs at the input resolution, the rest at the
output's.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Sequence

import torch
import torch.nn as nn

from metaedge.compress.cost import LayerSpec, layer_specs

__all__ = ["Candidate", "RankPlan", "candidates", "plan_ranks"]


@dataclass
class Candidate:
    name: str
    kind: str  # "conv" | "linear"
    spec: LayerSpec
    sizes: tuple[int, ...]  # full rank per mode (the unfolding's): conv (C_out, C_in) at most, linear (min(out, in),)
    energy: tuple[torch.Tensor, ...]  # per mode: cumulative energy share kept at rank 1, 2, ...
    options: tuple[tuple[int, ...], ...]  # per mode: the ranks allowed, ascending

    def macs(self, ranks: Sequence[int] | None) -> int:
        """MACs of the layer at ``ranks`` (None: unfactorized)."""
        s = self.spec
        if ranks is None:
            return s.macs
        if self.kind == "linear":
            return ranks[0] * (s.in_channels + s.out_channels)
        r_out, r_in = ranks
        out_area, in_area = s.out_hw[0] * s.out_hw[1], s.in_hw[0] * s.in_hw[1]
        return in_area * s.in_channels * r_in + out_area * r_in * r_out * s.kernel[0] * s.kernel[1] + out_area * r_out * s.out_channels

    def smallest_ratio(self, scale: float = 1.0, multiple: int = 8) -> float:
        """MACs at the smallest ranks over MACs unfactorized, with the channels scaled by ``scale`` (a
        pruner's width ratio, rounded to ``multiple``, not below it); >= 1: nothing to gain."""
        s = self.spec
        ch = lambda c: min(c, max(multiple, int(round(c * scale / multiple)) * multiple))  # noqa: E731
        scaled = replace(s, in_channels=ch(s.in_channels), out_channels=ch(s.out_channels))
        k = s.kernel[0] * s.kernel[1] if self.kind == "conv" else 1
        sizes = (min(scaled.out_channels, scaled.in_channels * k), min(scaled.in_channels, scaled.out_channels * k))
        ranks = tuple(min(multiple, n) for n in (sizes if self.kind == "conv" else (min(sizes),)))
        return Candidate(self.name, self.kind, scaled, self.sizes, self.energy, self.options).macs(ranks) / max(scaled.macs, 1)

    def kept(self, mode: int, rank: int) -> float:
        return float(self.energy[mode][rank - 1])

    def ranks_at(self, e: float) -> tuple[int, ...] | None:
        """The smallest allowed ranks keeping >= ``e`` of each mode's energy; None if that saves nothing."""
        ranks = tuple(next((r for r in opts if self.kept(m, r) >= e - 1e-12), opts[-1]) for m, opts in enumerate(self.options))
        return ranks if self.macs(ranks) < self.macs(None) else None


@dataclass
class RankPlan:
    ranks: dict[str, tuple[int, ...]]  # factorized layers only
    macs: int  # of the whole model at these ranks
    base_macs: int
    energy: dict[str, list[float]]  # per factorized layer and mode: share of energy kept

    def summary(self) -> dict:
        return {"ranks": {k: list(v) for k, v in self.ranks.items()}, "macs": self.macs, "base_macs": self.base_macs, "energy_kept": self.energy}


def _options(size: int, multiple: int) -> tuple[int, ...]:
    m = max(1, multiple)
    return tuple(sorted({min(size, k * m) for k in range(1, math.ceil(size / m) + 1)}))


def _energy(mat: torch.Tensor) -> torch.Tensor:
    s2 = torch.linalg.svdvals(mat.double()).pow(2)
    return (s2.cumsum(0) / s2.sum().clamp_min(1e-300)).float()


@torch.no_grad()
def candidates(model: nn.Module, input_shape: Sequence[int], multiple: int = 8) -> list[Candidate]:
    """The layers a factorization can shrink: kxk ungrouped convs and linears whose smallest ranks cost less than they do."""
    mods = dict(model.named_modules())
    out = []
    for spec in layer_specs(model, input_shape):
        m = mods.get(spec.name)
        if isinstance(m, nn.Conv2d) and spec.kind == "conv" and m.groups == 1 and tuple(m.kernel_size) != (1, 1):
            w = m.weight
            k = m.kernel_size[0] * m.kernel_size[1]
            sizes = (min(m.out_channels, m.in_channels * k), min(m.in_channels, m.out_channels * k))  # the unfoldings' ranks
            energy = (_energy(w.reshape(w.shape[0], -1)), _energy(w.transpose(0, 1).reshape(w.shape[1], -1)))
            c = Candidate(spec.name, "conv", spec, sizes, energy, tuple(_options(s, multiple) for s in sizes))
        elif isinstance(m, nn.Linear) and spec.kind == "linear":
            size = min(m.in_features, m.out_features)
            c = Candidate(spec.name, "linear", spec, (size,), (_energy(m.weight),), (_options(size, multiple),))
        else:
            continue
        if c.macs(tuple(o[0] for o in c.options)) < c.macs(None):
            out.append(c)
    return out


def plan_ranks(cands: Sequence[Candidate], base_macs: int, budget: float) -> RankPlan:
    """Ranks for ``cands`` so the model's MACs (``base_macs`` unfactorized) come as close under ``budget`` as
    the rank steps allow; with a budget below the smallest ranks, the smallest ranks (the caller checks)."""
    fixed = base_macs - sum(c.macs(None) for c in cands)

    def state_at(e: float) -> list[tuple[int, ...] | None]:
        return [c.ranks_at(e) for c in cands]

    def total(state: Sequence[tuple[int, ...] | None]) -> int:
        return fixed + sum(c.macs(r) for c, r in zip(cands, state, strict=True))

    if total([None] * len(cands)) <= budget:
        state: list[tuple[int, ...] | None] = [None] * len(cands)
    else:
        lo, hi = 0.0, 1.0  # total(state_at(lo)) is the smallest reachable; find the largest e under budget
        for _ in range(40):
            mid = (lo + hi) / 2
            if total(state_at(mid)) <= budget:
                lo = mid
            else:
                hi = mid
        state = state_at(lo)
        state = _fill(cands, state, fixed, budget)
    energy = {c.name: [round(c.kept(m, r), 6) for m, r in enumerate(rk)] for c, rk in zip(cands, state, strict=True) if rk is not None}
    return RankPlan({c.name: rk for c, rk in zip(cands, state, strict=True) if rk is not None}, total(state), base_macs, energy)


def _fill(cands: Sequence[Candidate], state: list[tuple[int, ...] | None], fixed: int, budget: float) -> list[tuple[int, ...] | None]:
    """Raise single ranks one step at a time, the most kept energy per added MAC first, while the total
    stays under ``budget``; a layer whose next step would cost as much as the whole layer is left factorized."""
    state = list(state)
    cur = fixed + sum(c.macs(r) for c, r in zip(cands, state, strict=True))
    while True:
        best, best_gain = None, 0.0
        for i, (c, rk) in enumerate(zip(cands, state, strict=True)):
            if rk is None:
                continue
            for mode, r in enumerate(rk):
                opts = c.options[mode]
                j = opts.index(r)
                if j + 1 >= len(opts):
                    continue
                new = tuple(opts[j + 1] if k == mode else v for k, v in enumerate(rk))
                add = c.macs(new) - c.macs(rk)
                if c.macs(new) >= c.macs(None) or cur + add > budget:
                    continue
                gain = (c.kept(mode, new[mode]) - c.kept(mode, r)) / max(add, 1)
                if best is None or gain > best_gain:
                    best, best_gain = (i, new, add), gain
        if best is None:
            return state
        i, new, add = best
        state[i] = new
        cur += add
