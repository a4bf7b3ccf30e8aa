"""Tucker low-rank compression: kxk convs as 1x1 -> kxk -> 1x1 (Tucker-2, TensorLy), linears by truncated SVD.

Entry point: ``lowrank_model(model, data, LowRankConfig(budget=...), workdir)``; ``pruning_budget``
splits a MACs budget with a channel pruner that runs first.
"""

from metaedge.compress.lowrank.api import LowRankResult, factorize, lowrank_model, pruning_budget
from metaedge.compress.lowrank.config import LowRankConfig
from metaedge.compress.lowrank.factorize import svd_linear, tucker2_conv, tucker_factors
from metaedge.compress.lowrank.ranks import Candidate, RankPlan, candidates, plan_ranks

__all__ = [
    "Candidate",
    "LowRankConfig",
    "LowRankResult",
    "RankPlan",
    "candidates",
    "factorize",
    "lowrank_model",
    "plan_ranks",
    "pruning_budget",
    "svd_linear",
    "tucker2_conv",
    "tucker_factors",
]
