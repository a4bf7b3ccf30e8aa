"""Does the PruningNet rank structures? Check the proxy before trusting the search.

Over ``n`` random in-budget structures: the PruningNet's score (generated weights, BN
recalibrated, validation top-1) against the validation top-1 after a short training of each
structure with the final protocol's start. Spearman's rho near 1 means the search's fitness
orders candidates as training would; near 0, the search is picking at random.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass
from typing import Callable, Sequence

import torch
import torch.nn as nn

from metaedge.compress.graph import GraphAnalysis
from metaedge.compress.metapruning.pruningnet import PruningNet
from metaedge.compress.metapruning.space import WidthSpace, repair
from metaedge.compress.metapruning.starts import start_model
from metaedge.compress.metapruning.training import score_candidate
from metaedge.compress.train import TrainConfig, evaluate, fit
from metaedge.data import DataSplits, make_loader

__all__ = ["RankCheck", "rank_check", "spearman"]


def spearman(a: Sequence[float], b: Sequence[float]) -> float:
    """Spearman's rank correlation (average ranks for ties); nan when either side is constant."""
    from scipy.stats import spearmanr

    if len(set(a)) < 2 or len(set(b)) < 2:
        return float("nan")
    return float(spearmanr(a, b).statistic)


@dataclass
class RankCheck:
    spearman: float
    points: list[dict]  # per structure: widths, cost, pruningnet (score), trained (val top-1)
    start: str
    epochs: int
    seconds: float

    def summary(self) -> dict:
        return {
            "spearman": self.spearman,
            "n": len(self.points),
            "start": self.start,
            "epochs": self.epochs,
            "seconds": round(self.seconds, 1),
            "points": self.points,
        }


def rank_check(
    pn: PruningNet,
    model: nn.Module,
    analysis: GraphAnalysis,
    space: WidthSpace,
    cost_fn: Callable[[dict[str, int]], float],
    budget: float,
    data: DataSplits,
    recalib: list[torch.Tensor],
    train: TrainConfig,
    n: int = 10,
    start: str = "generated",
    teacher: nn.Module | None = None,
    floor: float = 0.9,
    seed: int = 0,
) -> RankCheck:
    t0 = time.perf_counter()
    rng = random.Random(seed + 4242)
    val_loader = make_loader(data.val, 256, shuffle=False)
    train_loader = make_loader(data.train, train.batch_size, shuffle=True, seed=train.seed)
    seen: set[tuple[int, ...]] = set()
    points: list[dict] = []
    for _ in range(50 * n):
        if len(points) >= n:
            break
        genes = repair(space.sample(rng), space, cost_fn, floor * budget, budget, rng)
        if genes is None or genes in seen:
            continue
        seen.add(genes)
        widths = space.widths(genes)
        score = score_candidate(pn, widths, recalib, data.val)
        small = start_model(start, model, analysis, widths, recalib, pn=pn, seed=train.seed)
        fit(small, train_loader, val_loader, train, teacher=teacher, quiet=True)
        points.append({"widths": widths, "cost": cost_fn(widths), "pruningnet": score["accuracy"], "trained": evaluate(small.eval(), val_loader)})
    pn.set_widths({})
    rho = spearman([p["pruningnet"] for p in points], [p["trained"] for p in points])
    return RankCheck(rho, points, start, train.epochs, time.perf_counter() - t0)
