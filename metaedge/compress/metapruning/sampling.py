"""Which width vectors the PruningNet trains on: the sandwich rule inside a budget band.

The search only ever scores networks near its budget, so training on widths spread over the whole
space (the paper's uniform genes put the median sample at ~13% of the MACs) spends most steps on
networks that are never asked about. Each step therefore trains

- the **largest** network: trained on the labels (and the trained model's soft targets, when
  given), it is the in-place teacher of the others (Yu & Huang's sandwich rule for slimmable
  networks). ``largest="band"`` takes the band's top (uniform widths at its high end) instead of
  every group at full width; measured on this 2-core CPU (ResNet-20, 16x16, batch 64) a step costs
  the same either way (0.55 s for four widths: small convs are overhead-bound), so the default is
  the full network, the stronger teacher;
- the **smallest in-band** network (uniform widths at the band's low end), so the band's lower
  edge is always covered;
- ``n`` **random in-band** networks: a random gene vector repaired into ``[(1 - slack) t, t]``
  for a target ``t`` drawn log-uniformly from the band, so every budget of a sweep is trained.

A band of ``None`` falls back to the whole space (the paper's sampler, no sandwich teacher).
"""

from __future__ import annotations

import math
from random import Random  # a bare `random` would name the method below inside the class
from dataclasses import dataclass
from typing import Callable

from metaedge.compress.metapruning.space import WidthSpace, repair
from metaedge.errors import MetaedgeError

__all__ = ["Band", "WidthSampler"]

CostFn = Callable[[dict[str, int]], float]


@dataclass(frozen=True)
class Band:
    """Absolute costs (MACs, params or the latency model's unit) the search will be asked about."""

    lo: float
    hi: float

    def __post_init__(self) -> None:
        if not 0 < self.lo <= self.hi:
            raise MetaedgeError(f"bad budget band [{self.lo:.4g}, {self.hi:.4g}]", "use 0 < low <= high")

    @classmethod
    def around(cls, budgets: list[float], slack: float = 0.1) -> "Band":
        """The band covering every budget of a run (one PruningNet serves them all)."""
        return cls((1 - slack) * min(budgets), max(budgets))


class WidthSampler:
    """``sampler(rng)`` -> the width vectors of one training step; the first is the teacher when
    ``sandwich`` (its logits distil into the others)."""

    def __init__(
        self,
        space: WidthSpace,
        cost_fn: CostFn | None = None,
        band: Band | None = None,
        random_widths: int = 2,
        sandwich: bool = True,
        slack: float = 0.05,
        tries: int = 8,
        largest: str = "full",
    ) -> None:
        if band is not None and cost_fn is None:
            raise ValueError("a budget band needs the cost function that prices it")
        if largest not in ("band", "full"):
            raise ValueError(f"largest must be 'band' or 'full', not {largest!r}")
        self.space, self.cost_fn, self.band = space, cost_fn, band
        self.random_widths, self.sandwich, self.slack, self.tries = random_widths, sandwich, slack, tries
        self.largest = self._uniform_at(band.hi, below=True) if band is not None and largest == "band" else space.widths(space.full())
        self.smallest = self._uniform_at(band.lo, below=False) if band is not None else space.widths(space.smallest())
        if band is not None and cost_fn is not None and cost_fn(space.widths(space.smallest())) > band.hi:
            raise MetaedgeError(
                f"the narrowest network costs more than the band's top {band.hi:.4g}",
                "raise the budget, or lower the smallest width choice / the channel multiple",
            )

    def _uniform_at(self, target: float, below: bool) -> dict[str, int]:
        """Uniform widths costing at most the band's top: the widest such (``below``), or the
        narrowest that reaches ``target``."""
        assert self.band is not None and self.cost_fn is not None
        best = self.space.widths(self.space.smallest())
        for i in range(1, 201):
            w = self.space.uniform(i / 200)
            cost = self.cost_fn(w)
            if cost > self.band.hi:
                break
            best = w
            if not below and cost >= target:
                break
        return best

    def random(self, rng: Random) -> dict[str, int]:
        if self.band is None:
            return self.space.widths(self.space.sample(rng))
        assert self.cost_fn is not None  # a band comes with its cost function (checked in __init__)
        lo, hi = math.log(self.band.lo), math.log(self.band.hi)
        for _ in range(self.tries):
            target = math.exp(rng.uniform(lo, hi))
            genes = repair(self.space.sample(rng), self.space, self.cost_fn, (1 - self.slack) * target, target, rng)
            if genes is not None:
                return self.space.widths(genes)
        return dict(self.smallest)

    def __call__(self, rng: Random) -> list[dict[str, int]]:
        randoms = [self.random(rng) for _ in range(self.random_widths)]
        return [dict(self.largest), dict(self.smallest), *randoms] if self.sandwich else randoms
