"""The points of a sweep and the pipeline settings of each.

The reference point ``baseline`` (no pruning, no quantization) comes first: it trains (or reuses)
the cached baseline every other point starts from and puts the uncompressed model on the frontier,
measured like the others. Points that prune to the same budget with the same pruner form one
*group*: they share the prune stage's cache (search, fine-tune), so a group's points run one after
another in one process, and only groups run in parallel.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from metaedge.config import PipelineConfig
from metaedge.sweep.config import SweepConfig

__all__ = ["BASELINE", "SweepPoint", "plan_points", "point_config", "point_groups"]

BASELINE = "baseline"


@dataclass(frozen=True)
class SweepPoint:
    name: str  # folder name under <sweep>/points/
    pruner: str | None  # None: the uncompressed reference
    budget: str | None
    quant: str  # "off" or a spec such as "w8a8"

    @property
    def group(self) -> str:
        return BASELINE if self.pruner is None else f"{self.pruner}-{self.budget}"

    @property
    def series(self) -> str:
        """The frontier's series: one per method and quant setting."""
        return BASELINE if self.pruner is None else f"{self.pruner} {self.quant}"


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9.]+", "_", text).strip("_")


def plan_points(cfg: SweepConfig) -> list[SweepPoint]:
    points = [SweepPoint(BASELINE, None, None, "off")]
    for pruner in cfg.pruners:
        for budget in cfg.budgets:
            for quant in cfg.quants:
                points.append(SweepPoint(f"{pruner}-{cfg.budget_kind}{_slug(budget)}-{_slug(quant)}", pruner, budget, quant))
    return points


def point_groups(points: list[SweepPoint]) -> list[list[SweepPoint]]:
    groups: dict[str, list[SweepPoint]] = {}
    for p in points:
        groups.setdefault(p.group, []).append(p)
    return list(groups.values())


def point_config(cfg: SweepConfig, point: SweepPoint, root: Path) -> PipelineConfig:
    """A normal `metaedge compress` configuration writing the point's own artifact folder."""
    kw: dict[str, Any] = {"quant": point.quant}  # a spec as written: PipelineConfig parses it
    # the rank diagnostic is MetaPruning's: off for the unpruned and baseline-pruner points
    base = replace(
        cfg.base, out=str(root / "points" / point.name), prune_macs=None, prune_latency=None, lowrank="off", pruningnet_budgets=None, prune_rank_check=0, **kw
    )
    if point.pruner is None:
        return base
    budget: dict[str, Any] = {"prune_macs": point.budget} if cfg.budget_kind == "macs" else {"prune_latency": point.budget}
    shared: dict[str, Any] = {"pruningnet_budgets": cfg.budgets, "prune_rank_check": cfg.base.prune_rank_check} if point.pruner == "metapruning" else {}
    return replace(base, pruner=point.pruner, **budget, **shared)
