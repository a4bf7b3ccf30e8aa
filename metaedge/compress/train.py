"""Supervised training on the shared loop (:mod:`metaedge.compress.engine`): the baseline and every fine-tune.

Nesterov SGD (no weight decay on BN parameters and biases), label smoothing, optional knowledge
distillation from a teacher; the schedule, checkpoint and resume are the engine's.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import DataLoader

from metaedge.compress.engine import Step, StepLoss, TrainConfig, TrainHooks, TrainResult, train_loop

__all__ = ["SupervisedHooks", "TrainConfig", "TrainResult", "evaluate", "fit", "kd_loss", "make_sgd"]


@torch.no_grad()
def evaluate(model: nn.Module, loader: DataLoader, channels_last: bool = False) -> float:
    """Top-1 accuracy in [0, 1]."""
    was = model.training
    model.eval()
    correct = total = 0
    for x, y in loader:
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        correct += (model(x).argmax(1) == y).sum().item()
        total += len(y)
    model.train(was)
    return correct / max(total, 1)


def kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """Hinton's distillation term: KL between softened distributions, scaled by T^2."""
    T = temperature
    return F.kl_div(F.log_softmax(student_logits / T, 1), F.softmax(teacher_logits / T, 1), reduction="batchmean") * T * T


def make_sgd(params, lr: float, momentum: float, weight_decay: float) -> torch.optim.SGD:
    """Nesterov SGD without weight decay on BN parameters and biases (1-D tensors)."""
    decay: list[torch.Tensor] = []
    no_decay: list[torch.Tensor] = []
    for p in params:
        if p.requires_grad:
            (no_decay if p.ndim <= 1 else decay).append(p)
    return torch.optim.SGD(
        [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}], lr=lr, momentum=momentum, nesterov=True
    )


class SupervisedHooks(TrainHooks):
    """The labels' loss (cross-entropy with ``cfg.label_smoothing`` unless ``loss_fn``), mixed with
    distillation from ``teacher`` when ``cfg.distill_alpha > 0``; validation top-1 after every epoch
    when ``val_loader`` is given. QAT and VIB gate training extend it."""

    def __init__(
        self,
        model: nn.Module,
        cfg: TrainConfig,
        val_loader: DataLoader | None = None,
        teacher: nn.Module | None = None,
        loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
    ) -> None:
        self.model, self.cfg, self.val_loader = model, cfg, val_loader
        if teacher is not None:
            teacher.eval()
        self.teacher = teacher if cfg.distill_alpha > 0 else None
        self.criterion = loss_fn or nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing)

    def loss(self, x: torch.Tensor, y: torch.Tensor, step: Step) -> StepLoss:
        out = self.model(x)
        loss = self.criterion(out, y)
        if self.teacher is not None:
            with torch.no_grad():
                t_out = self.teacher(x)
            a = self.cfg.distill_alpha
            loss = (1 - a) * loss + a * kd_loss(out, t_out, self.cfg.distill_temperature)
        return StepLoss(loss, {"loss": loss}, logits=out)

    def end_of_epoch(self, epoch: int) -> dict[str, Any]:
        return {} if self.val_loader is None else {"val_accuracy": evaluate(self.model, self.val_loader, self.cfg.channels_last)}


def fit(
    model: nn.Module,
    train_loader: DataLoader,
    val_loader: DataLoader,
    cfg: TrainConfig,
    checkpoint: Path | None = None,
    resume: bool = True,
    teacher: nn.Module | None = None,
    desc: str = "train",
    quiet: bool = False,
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
) -> TrainResult:
    """Train ``model`` in place; the result's metrics hold the last epoch's validation accuracy."""
    torch.manual_seed(cfg.seed)
    opt = make_sgd(model.parameters(), cfg.lr, cfg.momentum, cfg.weight_decay)
    hooks = SupervisedHooks(model, cfg, val_loader, teacher, loss_fn)
    return train_loop(model, train_loader, [opt], cfg, hooks, checkpoint=checkpoint, resume=resume, desc=desc, quiet=quiet)
