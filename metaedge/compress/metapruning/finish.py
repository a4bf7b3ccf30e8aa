"""What a width pruner ends with (VIB, uniform, L1): materialise, re-estimate BN, fine-tune, price."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Mapping

import torch
import torch.nn as nn

from metaedge.compress.cost import count_cost, format_count
from metaedge.compress.finetune import finetune
from metaedge.compress.metapruning.budget import PruneSetup
from metaedge.compress.metapruning.starts import start_model
from metaedge.compress.metapruning.training import recalib_batches
from metaedge.compress.train import TrainConfig
from metaedge.data import DataSplits
from metaedge.errors import MetaedgeError

__all__ = ["PrunedResult", "finish_pruning"]


@dataclass
class PrunedResult:
    """A width pruner's outcome (VIB, uniform, L1); MetaPruning's PruneResult adds its search."""

    model: nn.Module
    method: str
    widths: dict[str, int]
    macs: int
    params: int
    base_macs: int
    base_params: int
    budget: float
    budget_kind: str
    cost: float  # the final structure in the budget's unit
    val_accuracy: float
    seconds: dict[str, float] = field(default_factory=dict)
    details: dict[str, Any] = field(default_factory=dict)

    def summary(self) -> dict:
        d = {k: v for k, v in asdict(self).items() if k != "model"}
        d["budget_use"] = self.cost / self.budget if self.budget else None
        return d


def finish_pruning(
    setup: PruneSetup,
    source: nn.Module,
    widths: Mapping[str, int],
    keep: Mapping[str, torch.Tensor] | None,
    data: DataSplits,
    ft: TrainConfig,
    recalib: int,
    workdir: Path,
    method: str,
    teacher: nn.Module | None,
    quiet: bool = False,
    seconds: dict[str, float] | None = None,
    details: dict[str, Any] | None = None,
) -> PrunedResult:
    """Materialise ``widths`` of ``source`` (the kept channels ``keep``; None: the first k), re-estimate
    BN on the same training batches as every start, fine-tune, and price the result."""
    if setup.cost(dict(widths)) > setup.budget:
        fmt = (lambda v: f"{v:.3f} ms") if setup.kind == "latency" else format_count  # noqa: E731
        raise MetaedgeError(
            f"the {setup.kind} budget {fmt(setup.budget)} is below the narrowest network the width space allows ({fmt(setup.cost(dict(widths)))})",
            "raise the budget, or lower the channel multiple",
        )
    t = time.perf_counter()
    batches = recalib_batches(data.train, ft.batch_size, recalib, ft.seed)
    small = start_model("inherited", source, setup.analysis, dict(widths), batches, keep=keep, seed=ft.seed)
    acc = finetune(small, data, ft, workdir, [method, dict(widths), ft.seed], teacher=teacher, quiet=quiet)
    seconds = {**(seconds or {}), "finetune": round(time.perf_counter() - t, 2)}
    c = count_cost(small, setup.input_shape)
    return PrunedResult(
        small,
        method,
        dict(widths),
        c.macs,
        c.params,
        setup.pricer.base_macs,
        setup.pricer.base_params,
        setup.budget,
        setup.kind,
        setup.cost(dict(widths)),
        acc,
        seconds,
        details or {},
    )
