"""Gate training: the network's weights and the VIB gates together, from the user's trained model.

Loss = (1 - a) * task + a * KD(unpruned model) + gamma * KL, with KL the mean of
log(1 + mu^2 / sigma^2) over the gated channels (optionally cost-weighted). Weights take the shared trainer's Nesterov SGD
and cosine schedule; the gates take Adam on the same schedule (the KL's gradient on one gate is
tiny next to a weight's; Adam's per-parameter steps make gate_lr mean the same on any network).
A checkpoint after every epoch lets a killed run resume.
"""
from __future__ import annotations

import math
from dataclasses import asdict, replace
from pathlib import Path
from typing import Callable

import torch
import torch.nn as nn

from metaedge.artifacts import atomic_path
from metaedge.compress.train import TrainConfig, _lr_at, kd_loss, make_sgd, progress, resume_checkpoint
from metaedge.compress.vib.config import VIBConfig
from metaedge.compress.vib.gates import ChannelGates, gated
from metaedge.data import DataSplits, make_loader

__all__ = ["train_gates"]


class _Optimizers:
    """Two optimizers checkpointed as one (the shared resume_checkpoint restores one optimizer)."""

    def __init__(self, *opts: torch.optim.Optimizer) -> None:
        self.opts = opts

    def state_dict(self) -> list[dict]:
        return [o.state_dict() for o in self.opts]

    def load_state_dict(self, states: list[dict]) -> None:
        for o, st in zip(self.opts, states):
            o.load_state_dict(st)


def train_gates(model: nn.Module, gates: ChannelGates, data: DataSplits, cfg: VIBConfig, train: TrainConfig, teacher: nn.Module | None = None,
                checkpoint: Path | None = None, quiet: bool = False, fits: Callable[[ChannelGates], bool] | None = None) -> list[dict]:
    """Train ``model`` and ``gates`` in place; returns the per-epoch history (loss, KL, gated channels
    with mu^2 / sigma^2 < 1, gamma). ``train`` gives batch size, KD weight and temperature, label smoothing, seed.
    ``fits(gates)``: whether the informative channels fit the budget, for ``cfg.budget_control``."""
    if cfg.budget_control and fits is None:
        raise ValueError("VIB budget control needs fits(gates)")
    sched = replace(train, epochs=cfg.epochs, lr=cfg.lr)
    torch.manual_seed(cfg.seed)
    opt_w = make_sgd(model.parameters(), cfg.lr, train.momentum, train.weight_decay)
    opt_g = torch.optim.Adam(gates.parameters(), lr=cfg.gate_lr)
    loader = make_loader(data.train, train.batch_size, shuffle=True, seed=cfg.seed)
    total = cfg.epochs * len(loader)
    signature = {"vib": asdict(cfg), "train": asdict(sched)}  # not the fine-tune's epochs / lr
    both, opts = nn.ModuleDict({"model": model, "gates": gates}), _Optimizers(opt_w, opt_g)
    start, history = resume_checkpoint(checkpoint, signature, both, opts, "VIB")  # type: ignore[arg-type]
    gamma = history[-1].get("gamma", cfg.gamma) if history else cfg.gamma
    criterion = nn.CrossEntropyLoss(label_smoothing=train.label_smoothing)
    a = train.distill_alpha if teacher is not None else 0.0
    if teacher is not None:
        teacher.eval()
    with gated(model, gates), progress(quiet) as bar:
        task = bar.add_task("VIB gates", total=total, completed=start * len(loader), info="")
        for epoch in range(start, cfg.epochs):
            model.train()
            gates.train()
            loader.generator.manual_seed(cfg.seed * 1000 + epoch)
            sums = {"loss": 0.0, "kl": 0.0}
            for i, (x, y) in enumerate(loader):
                f = _lr_at(epoch * len(loader) + i, total, sched) / cfg.lr  # the cosine factor, shared by both optimizers
                for opt, lr in ((opt_w, cfg.lr), (opt_g, cfg.gate_lr)):
                    for group in opt.param_groups:
                        group["lr"] = lr * f
                out = model(x)
                loss = criterion(out, y)
                if a > 0:
                    with torch.no_grad():
                        t_out = teacher(x)
                    loss = (1 - a) * loss + a * kd_loss(out, t_out, train.distill_temperature)
                kl = gates.kl()
                total_loss = loss + gamma * kl
                opt_w.zero_grad(set_to_none=True)
                opt_g.zero_grad(set_to_none=True)
                total_loss.backward()
                opt_w.step()
                opt_g.step()
                if cfg.budget_control:
                    gamma *= math.exp(-cfg.control_rate if fits(gates) else cfg.control_rate)  # type: ignore[misc]
                sums["loss"] += loss.item()
                sums["kl"] += kl.item()
                bar.update(task, advance=1, info=f"ep {epoch + 1}/{cfg.epochs} loss {sums['loss'] / (i + 1):.3f} KL {sums['kl'] / (i + 1):.2f}")
            low = int((gates.log_ratio() < 0).sum())
            history.append({"epoch": epoch + 1, "loss": sums["loss"] / len(loader), "kl": sums["kl"] / len(loader), "uninformative": low, "gated": gates.total, "gamma": gamma})
            bar.update(task, info=f"ep {epoch + 1}/{cfg.epochs} loss {history[-1]['loss']:.3f} KL {history[-1]['kl']:.2f} gamma {gamma:.3g}, {low}/{gates.total} channels below ratio 1")
            if checkpoint is not None:
                with atomic_path(checkpoint) as tmp:
                    torch.save({"model": both.state_dict(), "optimizer": opts.state_dict(), "epoch": epoch + 1, "history": history, "config": signature}, tmp)
    model.eval()
    gates.eval()
    return history
