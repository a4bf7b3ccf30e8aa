"""What a sweep runs: the per-point pipeline settings, the budgets, quant settings and pruners to
cross, and how to pick the deployable point. Everything here is parsed and validated before any
training, so a bad value costs one line and exit code 2, not a baseline training."""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from typing import Any

from metaedge.config import PRUNERS, PipelineConfig
from metaedge.errors import MetaedgeError

__all__ = ["SweepConfig", "parse_accuracy", "parse_budget_list", "parse_pick_latency", "split_list"]

SWEEP_PRUNERS = tuple(p for p in PRUNERS if p != "none")  # "none" spends no budget


def split_list(text: str, flag: str) -> tuple[str, ...]:
    items = tuple(s.strip() for s in str(text).split(",") if s.strip())
    if not items:
        raise MetaedgeError(f"{flag} {text!r} names nothing", f"pass a comma-separated list, e.g. {flag} 0.5,0.25")
    if len(set(items)) != len(items):
        raise MetaedgeError(f"{flag} {text!r} repeats a value", "name each value once")
    return items


def parse_budget_list(text: str, kind: str) -> tuple[str, ...]:
    """Budgets as the pipeline takes them; MACs as fractions or counts, latency absolute only (the
    shared PruningNet's band must not move with each point's own baseline measurement)."""
    from metaedge.config import LatencyBudget, MacsBudget

    items = split_list(text, f"--prune-{kind}")
    for item in items:
        if kind == "macs":
            MacsBudget.parse(item)
        elif LatencyBudget.parse(item).ms is None:
            raise MetaedgeError(f"--prune-latency {item!r} is a fraction", "a sweep takes absolute latency budgets such as 2ms,1ms,500us")
    return items


def parse_pick_latency(text: str) -> float:
    """'1.5ms' / '800us' / '0.002s' -> milliseconds."""
    from metaedge.latency import parse_latency_budget

    try:
        return parse_latency_budget(text)
    except ValueError as exc:
        raise MetaedgeError(f"--pick {text!r}: {exc}", "pass a latency with its unit, e.g. --pick 1.5ms or --pick 800us") from exc


def parse_accuracy(text: str) -> float:
    """'0.97' or '97%' -> 0.97."""
    s = str(text).strip()
    m = re.fullmatch(r"([0-9]*\.?[0-9]+)\s*(%?)", s)
    value = float(m.group(1)) / (100 if m.group(2) else 1) if m else -1.0
    if not 0 < value <= 1:
        raise MetaedgeError(f"--pick-acc {text!r} is not an accuracy", "pass a top-1 accuracy in (0, 1] or a percentage, e.g. --pick-acc 0.97 or 97%")
    return value


@dataclass(frozen=True)
class SweepConfig:
    base: PipelineConfig  # every point's settings but the budget, quant and pruner (its out is the sweep's folder)
    budget_kind: str  # "macs" | "latency"
    budgets: tuple[str, ...]
    quants: tuple[str, ...] = ("w8a8",)  # "off" for an fp32 point
    pruners: tuple[str, ...] = ("metapruning",)
    jobs: int = 1
    pick_ms: float | None = None  # copy the most accurate point at or under this latency
    pick_acc: float | None = None  # copy the fastest point at or over this accuracy
    pick_out: str = "metaedge-out"

    def __post_init__(self) -> None:
        if self.budget_kind not in ("macs", "latency"):
            raise MetaedgeError(f"unknown sweep budget kind {self.budget_kind!r}", "pass --prune-macs or --prune-latency")
        if not self.budgets:
            raise MetaedgeError("a sweep needs budgets", "pass --prune-macs 0.5,0.25 or --prune-latency 2ms,1ms")
        bad = [p for p in self.pruners if p not in SWEEP_PRUNERS]
        if bad:
            raise MetaedgeError(f"unknown sweep pruner {bad[0]!r}", f"use --pruner with {', '.join(SWEEP_PRUNERS)}")
        if self.jobs < 1:
            raise MetaedgeError(f"--jobs {self.jobs} must be at least 1", "pass --jobs 1 or more")
        if self.pick_ms is not None and self.pick_acc is not None:
            raise MetaedgeError("--pick and --pick-acc both given", "pick by latency (--pick 1.5ms) or by accuracy (--pick-acc 0.97), not both")
        if self.budget_kind == "latency" and not self.base.targets:
            raise MetaedgeError("--prune-latency needs a target to measure on", "add --target NAME (e.g. --target rpi4 --device host:port/key)")
        # now rather than after the baseline trained
        for q in self.quants:
            kw: dict[str, Any] = {"quant": q}
            replace(self.base, **kw)  # PipelineConfig parses and checks the spec (and the targets)

    @property
    def frontier_target(self) -> str | None:
        """The target whose chosen backend's measured latency is the frontier's latency axis."""
        return self.base.targets[0] if self.base.targets else None
