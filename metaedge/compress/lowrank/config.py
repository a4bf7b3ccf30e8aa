"""Settings of Tucker low-rank compression."""

from __future__ import annotations

from dataclasses import dataclass

from metaedge.compress.train import TrainConfig
from metaedge.errors import MetaedgeError

__all__ = ["LowRankConfig"]


@dataclass(frozen=True)
class LowRankConfig:
    budget: float | None = None  # MACs of the whole model, absolute; None: half of the given model's
    rank_multiple: int = 8  # ranks rounded up to multiples of it (or the full rank), like pruned widths
    heuristic: str = "energy"  # rank selection: one kept-energy threshold for every mode, then greedy fill
    tucker_iters: int = 100  # HOOI iterations of TensorLy's partial_tucker (from the HOSVD start)
    finetune: TrainConfig = TrainConfig(epochs=4, lr=0.02, distill_alpha=0.5)  # the prune presets' fine-tune

    def __post_init__(self) -> None:
        if self.budget is not None and not self.budget > 0:
            raise MetaedgeError(f"low-rank budget must be positive, got {self.budget}", "pass e.g. --prune-macs 0.5 or 20M")
        if self.rank_multiple < 1 or self.tucker_iters < 1:
            raise MetaedgeError("bad low-rank settings", "use rank_multiple >= 1 and tucker_iters >= 1")
        if self.heuristic != "energy":
            raise MetaedgeError(f"unknown rank heuristic {self.heuristic!r}", "use energy")
