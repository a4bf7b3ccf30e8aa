"""Channels kept by information: the budget filled with the most informative channels first."""

from __future__ import annotations

from typing import Mapping

import torch

from metaedge.compress.metapruning.budget import CostFn, by_priority, fill_widths
from metaedge.compress.metapruning.space import WidthSpace

__all__ = ["keep_by_information", "ranked"]


def ranked(score: torch.Tensor, chunks: int = 1) -> torch.Tensor:
    """Channel indices, most informative first; with grouped-conv blocks, rank-major across blocks, so
    the first ``w`` (a multiple of ``chunks``) are the top ``w / chunks`` of every block."""
    if chunks == 1:
        return score.argsort(descending=True, stable=True)
    block = score.numel() // chunks
    per = torch.stack([score[j * block : (j + 1) * block].argsort(descending=True, stable=True) + j * block for j in range(chunks)])
    return per.t().reshape(-1)


def keep_by_information(space: WidthSpace, cost: CostFn, budget: float, scores: Mapping[str, torch.Tensor]) -> tuple[dict[str, int], dict[str, torch.Tensor]]:
    """From the narrowest widths, widen the group whose next step of channels has the highest mean
    log(mu^2 / sigma^2) while the budget allows (steps: the width space's, i.e. channel multiples).
    Returns the widths and, per group, the kept channel indices."""
    groups = space.analysis.groups
    order = {g: ranked(scores[g], groups[g].chunks) for g in space.groups}

    def gain(i: int, v: int) -> float:
        g = space.groups[i]
        lo, hi = space.options[i][v], space.options[i][v + 1]
        return float(scores[g][order[g][lo:hi]].mean())

    genes = fill_widths(space, space.smallest(), cost, budget, by_priority(gain))
    widths = space.widths(genes)
    keep = {g: order[g][:w].sort().values for g, w in widths.items() if w < groups[g].size}
    return widths, keep
