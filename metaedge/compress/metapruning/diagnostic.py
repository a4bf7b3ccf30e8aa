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

__all__ = ["RankCheck", "rank_check", "spearman", "spearman_interval"]


def spearman(a: Sequence[float], b: Sequence[float]) -> float:
    """Spearman's rank correlation (average ranks for ties); nan when either side is constant."""
    from scipy.stats import spearmanr

    if len(set(a)) < 2 or len(set(b)) < 2:
        return float("nan")
    return float(spearmanr(a, b).statistic)


def spearman_interval(a: Sequence[float], b: Sequence[float], level: float = 0.9, draws: int = 2000, seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap interval of Spearman(a, b), resampling structures with replacement.

    Ten structures give a noisy coefficient (0.5 can come from a proxy whose interval spans
    [0.1, 0.8]); the interval says whether a bar such as 0.6 is resolved at all. Resamples with
    a constant side have no coefficient and are dropped; (nan, nan) when none is left.
    """
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level}")
    rng = random.Random(seed)
    n = len(a)
    stats = []
    for _ in range(draws):
        idx = [rng.randrange(n) for _ in range(n)]
        r = spearman([a[i] for i in idx], [b[i] for i in idx])
        if r == r:
            stats.append(r)
    if not stats:
        return float("nan"), float("nan")
    stats.sort()
    tail = (1 - level) / 2
    return stats[int(tail * len(stats))], stats[max(0, int((1 - tail) * len(stats)) - 1)]


@dataclass
class RankCheck:
    spearman: float
    points: list[dict]  # per structure: widths, cost, pruningnet (score), trained (val top-1)
    start: str
    epochs: int
    seconds: float

    def interval(self) -> tuple[float, float]:
        """90% bootstrap interval of ``spearman`` over the structures."""
        return spearman_interval([p["pruningnet"] for p in self.points], [p["trained"] for p in self.points])

    def summary(self) -> dict:
        lo, hi = self.interval()
        return {
            "spearman": self.spearman,
            "interval_90": [lo, hi],
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
