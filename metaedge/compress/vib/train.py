"""Gate training: the network's weights and the VIB gates together, from the user's trained model.

Loss = (1 - a) * task + a * KD(unpruned model) + gamma * KL, with KL the mean of
log(1 + mu^2 / sigma^2) over the gated channels (optionally cost-weighted), on the shared training
loop (:mod:`metaedge.compress.engine`). Weights take the shared Nesterov SGD and cosine schedule;
the gates take Adam on the same schedule (the KL's gradient on one gate is
tiny next to a weight's; Adam's per-parameter steps make gate_lr mean the same on any network).
A checkpoint after every epoch lets a killed run resume.
"""

from __future__ import annotations

import math
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn as nn

from metaedge.compress.engine import Step, StepLoss, TrainConfig, TrainResult, train_loop
from metaedge.compress.train import SupervisedHooks, make_sgd
from metaedge.compress.vib.config import VIBConfig
from metaedge.compress.vib.gates import ChannelGates, gated
from metaedge.data import DataSplits, make_loader

__all__ = ["train_gates"]


class _GateHooks(SupervisedHooks):
    """The task loss plus gamma * KL; gamma follows the budget when ``cfg.budget_control``."""

    def __init__(
        self, model: nn.Module, gates: ChannelGates, cfg: VIBConfig, train: TrainConfig, teacher: nn.Module | None, fits: Callable[[ChannelGates], bool] | None
    ) -> None:
        super().__init__(model, train, teacher=teacher)
        self.gates, self.vib, self.fits, self.gamma = gates, cfg, fits, cfg.gamma

    def loss(self, x: torch.Tensor, y: torch.Tensor, step: Step) -> StepLoss:
        task = super().loss(x, y, step).logs["loss"]
        kl = self.gates.kl()
        return StepLoss(task + self.gamma * kl, {"loss": task, "kl": kl}, weight=1.0)  # VIB reports per-batch means

    def after_step(self, step: Step, loss: StepLoss) -> None:
        if self.vib.budget_control:
            self.gamma *= math.exp(-self.vib.control_rate if self.fits(self.gates) else self.vib.control_rate)  # type: ignore[misc]

    def end_of_epoch(self, epoch: int) -> dict[str, Any]:
        return {"uninformative": int((self.gates.log_ratio() < 0).sum()), "gated": self.gates.total, "gamma": self.gamma}

    def state_dict(self) -> dict[str, Any]:
        return {"gamma": self.gamma}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.gamma = float(state["gamma"])


def train_gates(
    model: nn.Module,
    gates: ChannelGates,
    data: DataSplits,
    cfg: VIBConfig,
    train: TrainConfig,
    teacher: nn.Module | None = None,
    checkpoint: Path | None = None,
    quiet: bool = False,
    fits: Callable[[ChannelGates], bool] | None = None,
) -> TrainResult:
    """Train ``model`` and ``gates`` in place; the history has per epoch the loss, KL, gated channels
    with mu^2 / sigma^2 < 1 and gamma. ``train`` gives batch size, KD weight and temperature, label
    smoothing, warm-up; epochs, lr and seed are ``cfg``'s. ``fits(gates)``: whether the informative
    channels fit the budget, for ``cfg.budget_control``."""
    if cfg.budget_control and fits is None:
        raise ValueError("VIB budget control needs fits(gates)")
    sched = replace(train, epochs=cfg.epochs, lr=cfg.lr, seed=cfg.seed)
    torch.manual_seed(cfg.seed)
    opt_w = make_sgd(model.parameters(), cfg.lr, train.momentum, train.weight_decay)
    opt_g = torch.optim.Adam(gates.parameters(), lr=cfg.gate_lr)
    loader = make_loader(data.train, train.batch_size, shuffle=True, seed=cfg.seed)
    hooks = _GateHooks(model, gates, cfg, sched, teacher, fits)
    with gated(model, gates):
        result = train_loop(
            nn.ModuleDict({"model": model, "gates": gates}),
            loader,
            [opt_w, opt_g],
            sched,
            hooks,
            signature={"vib": asdict(cfg)},
            checkpoint=checkpoint,
            what="VIB",
            desc="VIB gates",
            quiet=quiet,
        )
    model.eval()
    gates.eval()
    return result
