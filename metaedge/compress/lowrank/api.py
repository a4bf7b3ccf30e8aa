"""The low-rank stage: ranks under the MACs budget -> Tucker-2 / SVD factorization -> fine-tune."""

from __future__ import annotations

import copy
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Sequence

import torch
import torch.nn as nn

from metaedge.compress.cost import count_cost, format_count
from metaedge.compress.finetune import finetune
from metaedge.compress.lowrank.config import LowRankConfig
from metaedge.compress.lowrank.factorize import svd_linear, tucker2_conv
from metaedge.compress.lowrank.ranks import RankPlan, candidates, plan_ranks
from metaedge.data import DataSplits
from metaedge.errors import MetaedgeError

__all__ = ["LowRankResult", "factorize", "lowrank_model", "pruning_budget"]


@dataclass
class LowRankResult:
    model: nn.Module
    ranks: dict[str, list[int]]  # per factorized layer: conv [r_out, r_in], linear [r]
    macs: int
    params: int
    base_macs: int
    base_params: int
    budget: float
    val_accuracy: float
    energy_kept: dict[str, list[float]]
    reconstruction_error: dict[str, float]  # per layer ||W - W_rec|| / ||W|| right after factorization
    seconds: dict[str, float] = field(default_factory=dict)

    def summary(self) -> dict:
        d = {k: v for k, v in asdict(self).items() if k != "model"}
        d["method"] = "tucker"
        d["budget_use"] = self.macs / self.budget if self.budget else None
        return d


@torch.no_grad()
def _reconstructed(seq: nn.Sequential) -> torch.Tensor:
    """The single layer's weight a factorized Sequential computes (for the reconstruction error)."""
    weights = []
    for layer in seq:
        assert isinstance(layer, (nn.Linear, nn.Conv2d))  # what svd_linear / tucker2_conv build
        weights.append(layer.weight)
    if isinstance(seq[0], nn.Linear):
        return weights[1] @ weights[0]
    first, mid, last = weights
    w = torch.einsum("oc,crhw->orhw", last[:, :, 0, 0], mid)
    return torch.einsum("orhw,ri->oihw", w, first[:, :, 0, 0])


@torch.no_grad()
def factorize(model: nn.Module, plan: RankPlan, tucker_iters: int = 100) -> tuple[nn.Module, dict[str, float]]:
    """A copy of ``model`` with the plan's layers factorized; and each layer's relative reconstruction error."""
    new = copy.deepcopy(model)
    errors = {}
    for name, ranks in plan.ranks.items():
        layer = new.get_submodule(name)
        assert isinstance(layer, (nn.Linear, nn.Conv2d))  # plan_ranks plans only these
        seq = svd_linear(layer, ranks[0]) if isinstance(layer, nn.Linear) else tucker2_conv(layer, ranks[0], ranks[1], tucker_iters)
        errors[name] = float((_reconstructed(seq) - layer.weight).norm() / layer.weight.norm().clamp_min(1e-12))
        new.set_submodule(name, seq)
    return new, errors


def pruning_budget(model: nn.Module, input_shape: Sequence[int], budget: float, rank_multiple: int = 8) -> float:
    """The MACs budget for a channel pruner that runs *before* Tucker, so that Tucker, on the pruned
    model, then meets ``budget``. Tucker plans the square root of the budget's ratio on each layer it
    can factorize (the geometric half of the compression), never beyond halfway from the layer to its
    smallest ranks, estimated at the pruned width (channels scaled by the square root of the pruner's
    ratio, not below the rank multiple): a layer the pruner leaves at the multiple has no share."""
    base = count_cost(model, input_shape).macs
    cands = candidates(model, input_shape, rank_multiple)
    rho = math.sqrt(min(1.0, budget / base))
    prune = budget
    for _ in range(20):  # fixed point: the shares depend on how narrow the pruner makes the layers
        r = math.sqrt(min(1.0, prune / base))
        saved = sum(c.macs(None) / base * (1 - max(rho, (c.smallest_ratio(r, rank_multiple) + 1) / 2)) for c in cands)
        prune = min(float(base), budget / (1 - max(0.0, saved)))
    return prune


def lowrank_model(
    model: nn.Module,
    data: DataSplits,
    cfg: LowRankConfig = LowRankConfig(),
    workdir: Path | str = Path("metaedge-out/lowrank"),
    teacher: nn.Module | None = None,
    quiet: bool = False,
) -> LowRankResult:
    """Factorize ``model`` (taken as trained) to ``cfg.budget`` MACs and fine-tune it, distilled from
    ``teacher`` (default: the given model)."""
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(cfg.finetune.seed)
    model = copy.deepcopy(model).float().cpu().eval()
    input_shape = (1, *data.train.tensors[0].shape[1:])
    base = count_cost(model, input_shape)
    budget = cfg.budget if cfg.budget is not None else 0.5 * base.macs
    t = time.perf_counter()
    cands = candidates(model, input_shape, cfg.rank_multiple)
    plan = plan_ranks(cands, base.macs, budget)
    if plan.macs > budget:
        share = sum(c.macs(None) for c in cands) / max(base.macs, 1)
        raise MetaedgeError(
            f"Tucker cannot bring the model to {format_count(budget)} MACs: the layers it can factorize (kxk convs, linears) hold "
            f"{share:.1%} of its {format_count(base.macs)} MACs, and at their smallest ranks it still has {format_count(plan.macs)}",
            "raise --prune-macs (Tucker cannot shrink 1x1 or depthwise convs, nor layers already at the rank multiple), or add a pruner",
        )
    small, errors = factorize(model, plan, cfg.tucker_iters)
    seconds = {"factorize": round(time.perf_counter() - t, 2)}
    t = time.perf_counter()
    ranks = {k: list(v) for k, v in plan.ranks.items()}
    # even with nothing factorized (already within budget): after a pruner that left its fine-tune to this stage, this is the one
    shapes = [[n, list(p.shape)] for n, p in small.named_parameters()]  # the structure: ranks, and the widths a pruner left
    acc = finetune(small, data, cfg.finetune, workdir, ["tucker", shapes, cfg.finetune.seed], teacher=teacher if teacher is not None else model, quiet=quiet)
    seconds["finetune"] = round(time.perf_counter() - t, 2)
    cost = count_cost(small, input_shape)
    return LowRankResult(small.eval(), ranks, cost.macs, cost.params, base.macs, base.params, budget, acc, plan.energy, errors, seconds)
