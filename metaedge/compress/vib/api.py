"""The VIB prune stage: gate training -> keep channels by information ratio -> fold -> materialise -> fine-tune."""

from __future__ import annotations

import copy
import time
from pathlib import Path

import torch
import torch.nn as nn

from metaedge.compress.metapruning.budget import BudgetFn, PruneSetup, channel_costs, setup_pruning
from metaedge.compress.metapruning.finish import PrunedResult, finish_pruning
from metaedge.compress.metapruning.api import PRESETS as PRUNE_PRESETS, PruneConfig
from metaedge.compress.vib.config import PRESETS, VIBConfig
from metaedge.compress.vib.gates import ChannelGates, fold_gates
from metaedge.compress.vib.select import keep_by_information
from metaedge.compress.vib.train import train_gates
from metaedge.data import DataSplits

__all__ = ["vib_prune"]


def informative_fits(setup: PruneSetup):
    """``fits(gates)``: whether the channels with mu^2 / sigma^2 > 1 (each group's count rounded up to its
    grouped-conv blocks, at least one block) cost no more than the budget."""
    groups = setup.analysis.groups

    def fits(gates: ChannelGates) -> bool:
        r = gates.log_ratio()
        widths = {}
        for g in gates.groups:
            n, chunks = int((r[gates.offsets[g] : gates.offsets[g] + groups[g].size] > 0).sum()), groups[g].chunks
            widths[g] = max(chunks, -(-n // chunks) * chunks)
        return setup.cost(widths) <= setup.budget

    return fits


def vib_prune(
    model: nn.Module,
    data: DataSplits,
    cfg: PruneConfig = PRUNE_PRESETS["demo"],
    vib: VIBConfig = PRESETS["demo"],
    workdir: Path | str = Path("metaedge-out/prune-vib"),
    budget_fn: BudgetFn | None = None,
    quiet: bool = False,
) -> PrunedResult:
    """Prune ``model`` (taken as trained) to ``cfg.budget`` with variational information bottleneck gates.

    Budget, channel multiple, width steps, fine-tune and KD are ``cfg``'s, as for MetaPruning."""
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(cfg.seed)
    setup = setup_pruning(model, data.train.tensors[0][:1], cfg.budget_kind, cfg.budget, cfg.choices, cfg.channel_multiple, budget_fn)
    teacher = setup.model if cfg.distill > 0 else None
    ft = cfg.finetune_config()
    weights = channel_costs(setup.space, setup.cost) if vib.cost_weighted else None
    gates = ChannelGates(setup.analysis, setup.space.groups, weights, vib.init_log_sigma2, vib.seed)
    net = copy.deepcopy(setup.model)
    t = time.perf_counter()
    history = train_gates(net, gates, data, vib, ft, teacher, workdir / "vib_gates.pt", quiet, informative_fits(setup)).history
    seconds = {"gates": round(time.perf_counter() - t, 2)}
    scores = gates.scores()
    widths, keep = keep_by_information(setup.space, setup.cost, setup.budget, scores)
    fold_gates(net, gates)  # z = mu: the gated network's deterministic output, as plain weights
    kept = torch.cat([scores[g][keep[g]] if g in keep else scores[g] for g in scores])
    removed = torch.cat([scores[g][torch.isin(torch.arange(len(scores[g])), keep[g], invert=True)] for g in keep]) if keep else torch.zeros(0)
    details = {
        "gate_history": history,
        "kept_channels": int(kept.numel()),
        "removed_channels": int(removed.numel()),
        "kept_log_ratio_min": float(kept.min()) if kept.numel() else None,
        "removed_log_ratio_max": float(removed.max()) if removed.numel() else None,
        "vib": {"gamma": vib.gamma, "final_gamma": history[-1].get("gamma") if history else None, "budget_control": vib.budget_control, "epochs": vib.epochs},
    }
    return finish_pruning(setup, net, widths, keep, data, ft, cfg.recalib_batches, workdir, "vib", teacher, quiet, seconds, details)
