"""The width baselines as pruners: uniform width and L1 channel selection, under the shared budget.

``uniform``: every prunable group at one ratio, the narrowest groups then widened while the budget
allows (to the search's floor, as the benchmark does), the first k channels kept. ``l1``: the same
widths, the channels of largest producer-filter L1 norm kept (Li et al. 2017). Both end with the
fine-tune every method gets.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn as nn

from metaedge.compress.metapruning.budget import BudgetFn, setup_pruning, uniform_widths
from metaedge.compress.metapruning.finish import PrunedResult, finish_pruning
from metaedge.compress.metapruning.api import PRESETS, PruneConfig
from metaedge.compress.metapruning.materialize import l1_keep
from metaedge.data import DataSplits
from metaedge.errors import MetaedgeError

__all__ = ["BASELINES", "prune_baseline"]

BASELINES = ("uniform", "l1")


def prune_baseline(
    model: nn.Module,
    data: DataSplits,
    method: str,
    cfg: PruneConfig = PRESETS["demo"],
    workdir: Path | str = Path("metaedge-out/prune-baseline"),
    budget_fn: BudgetFn | None = None,
    quiet: bool = False,
) -> PrunedResult:
    """Prune ``model`` to ``cfg.budget`` with the ``uniform`` or ``l1`` baseline; returns the fine-tuned small model."""
    if method not in BASELINES:
        raise MetaedgeError(f"unknown baseline pruner {method!r}", f"use one of {', '.join(BASELINES)}")
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(cfg.seed)
    setup = setup_pruning(model, data.train.tensors[0][:1], cfg.budget_kind, cfg.budget, cfg.choices, cfg.channel_multiple, budget_fn)
    widths = uniform_widths(setup.space, setup.cost, setup.budget, stop_at=cfg.search_floor * setup.budget)
    keep = l1_keep(setup.model, setup.analysis, widths) if method == "l1" else None
    teacher = setup.model if cfg.distill > 0 else None
    return finish_pruning(setup, setup.model, widths, keep, data, cfg.finetune_config(), cfg.recalib_batches, workdir, method, teacher, quiet)
