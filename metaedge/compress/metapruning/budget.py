"""Budgets shared by every channel pruner: what a width vector costs, and filling a budget.

MetaPruning, VIB, uniform width and L1 all price a width vector with the same
:class:`~metaedge.compress.metapruning.space.Pricer` (MACs, parameters, or a per-layer latency
table through ``budget_fn``), so "within budget" means the same for every method, and each
fills its budget greedily in the same width steps (:class:`WidthSpace` options: ratios rounded
to the channel multiple).
"""

from __future__ import annotations

import bisect
import copy
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn as nn

from metaedge.compress.cost import LayerSpec
from metaedge.compress.graph import GraphAnalysis, analyze_channels
from metaedge.compress.metapruning.space import Pricer, WidthSpace, fill_widths
from metaedge.errors import MetaedgeError

__all__ = ["BudgetFn", "CostFn", "PruneSetup", "by_priority", "channel_costs", "cost_function", "fill_widths", "setup_pruning", "uniform_widths"]

BudgetFn = Callable[[list[LayerSpec]], float]
CostFn = Callable[[dict[str, int]], float]
BUDGET_KINDS = ("macs", "params", "latency")


def cost_function(pricer: Pricer, kind: str, budget_fn: BudgetFn | None = None) -> CostFn:
    """The cost of a width vector in the budget's unit: MACs, parameters, or ``budget_fn`` of the layer specs."""
    if kind == "latency":
        if budget_fn is None:
            raise MetaedgeError("a latency budget needs a latency model", "pass a target with a latency table, or use a MACs budget")
        return lambda w: float(budget_fn(pricer.specs(w)))
    if kind == "params":
        return lambda w: float(pricer.params(w))
    if kind == "macs":
        return lambda w: float(pricer.macs(w))
    raise MetaedgeError(f"unknown prune budget kind {kind!r}", f"use {', '.join(BUDGET_KINDS)}")


@dataclass
class PruneSetup:
    """What every width pruner starts from: the model (a private eval copy), its channel groups,
    the width space, the pricer and the budget in the cost function's unit."""

    model: nn.Module
    analysis: GraphAnalysis
    space: WidthSpace
    pricer: Pricer
    cost: CostFn
    kind: str
    budget: float
    input_shape: tuple[int, ...]


def setup_pruning(
    model: nn.Module, example: torch.Tensor, kind: str, budget: float | None, choices: Sequence[float], multiple: int, budget_fn: BudgetFn | None = None
) -> PruneSetup:
    """Analyse ``model`` (deep-copied, fp32, CPU, eval) for width pruning to ``budget`` (None: half its cost)."""
    model = copy.deepcopy(model).float().cpu().eval()  # the caller's model stays as it was
    input_shape = (1, *example.shape[1:])
    analysis = analyze_channels(model, example[:1])
    space = WidthSpace(analysis, choices, multiple)
    if len(space) == 0:
        raise MetaedgeError("the model has no prunable channel group", "check the warning above for the patterns that fixed its channels, or skip pruning")
    pricer = Pricer(model, analysis, input_shape)
    cost = cost_function(pricer, kind, budget_fn)
    return PruneSetup(model, analysis, space, pricer, cost, kind, budget if budget is not None else 0.5 * cost({}), input_shape)


def by_priority(priority: Callable[[int, int], float]) -> Callable[[list[int], list[int]], int]:
    """A ``fill_widths`` pick: the open gene of highest ``priority(gene, current option)``, ties to the lower index."""
    return lambda open_, g: max(open_, key=lambda j: (priority(j, g[j]), -j))


def uniform_widths(space: WidthSpace, cost: CostFn, budget: float, stop_at: float | None = None) -> dict[str, int]:
    """The width-multiplier baseline: the widest single ratio under the budget, then the narrowest
    groups widened one step at a time while the budget allows (until ``stop_at``), so it uses the
    budget like a search does."""
    best = space.widths(space.smallest())
    for r in np.linspace(0.02, 1.0, 197):
        w = space.uniform(float(r))
        if cost(w) <= budget:
            best = w
    # a ratio off the choice grid can round to a width between two options: take the option below it
    genes = [bisect.bisect_right(space.options[i], best[g]) - 1 for i, g in enumerate(space.groups)]
    sizes = [space.analysis.groups[g].size for g in space.groups]
    return space.widths(fill_widths(space, genes, cost, budget, by_priority(lambda i, v: -space.options[i][v] / sizes[i]), stop_at))


def channel_costs(space: WidthSpace, cost: CostFn) -> dict[str, float]:
    """Per prunable group: what one of its channels costs at full width (the cost saved by removing
    it), floored at a small positive share so coarse latency tables still rank every group."""
    full = cost({})
    out = {g: full - cost({g: space.analysis.groups[g].size - 1}) for g in space.groups}
    floor = 1e-3 * max(max(out.values(), default=1.0), 1e-12)
    return {g: max(v, floor) for g, v in out.items()}
