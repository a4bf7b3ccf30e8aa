"""Train / evaluate / checkpoint loop shared by every stage (baseline, fine-tune, QAT).

SGD with momentum and a per-step cosine schedule, label smoothing, optional knowledge
distillation from a teacher. A checkpoint is written atomically after every epoch; ``resume=True``
continues from it after a kill with the same optimizer and schedule state.
"""
from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import DataLoader

from metaedge.artifacts import atomic_path
from metaedge.errors import MetaedgeError

__all__ = ["TrainConfig", "TrainResult", "evaluate", "fit", "kd_loss", "load_checkpoint", "make_sgd", "progress", "resume_checkpoint"]


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 10
    batch_size: int = 64
    lr: float = 0.05
    momentum: float = 0.9
    weight_decay: float = 4e-5
    label_smoothing: float = 0.1
    warmup_steps: int = 0
    distill_alpha: float = 0.0  # weight of the KD term when a teacher is given
    distill_temperature: float = 4.0
    seed: int = 0
    # NHWC runs MobileNets up to 2x faster on CPU, but torch 2.13's CPU conv backward corrupts the
    # heap for some shapes in NHWC (ResNet-20 x0.5, 16 px, a batch of 43 aborts with "double free"):
    # opt-in until that is fixed upstream.
    channels_last: bool = False

    def __post_init__(self) -> None:
        if self.epochs < 0 or self.batch_size < 1 or self.lr <= 0:
            raise MetaedgeError(f"bad training settings (epochs={self.epochs}, batch_size={self.batch_size}, lr={self.lr})", "use epochs >= 0, batch_size >= 1, lr > 0")


@dataclass
class TrainResult:
    epochs_run: int
    val_accuracy: float
    history: list[dict]
    seconds: float


def progress(quiet: bool = False):
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[info]}"),
        TimeElapsedColumn(),
        disable=quiet,
        transient=False,
    )


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


def _lr_at(step: int, total: int, cfg: TrainConfig) -> float:
    if cfg.warmup_steps and step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    t = (step - cfg.warmup_steps) / max(1, total - cfg.warmup_steps)
    return 0.5 * cfg.lr * (1 + math.cos(math.pi * min(1.0, t)))


def load_checkpoint(path: Path) -> dict:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise MetaedgeError(f"checkpoint {path} is unreadable ({type(exc).__name__})", f"delete {path} to start this stage afresh") from exc


def make_sgd(params, lr: float, momentum: float, weight_decay: float) -> torch.optim.SGD:
    """Nesterov SGD without weight decay on BN parameters and biases (1-D tensors)."""
    decay, no_decay = [], []
    for p in params:
        if p.requires_grad:
            (no_decay if p.ndim <= 1 else decay).append(p)
    return torch.optim.SGD([{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}], lr=lr, momentum=momentum, nesterov=True)


def resume_checkpoint(checkpoint: Path | None, config: dict, model: nn.Module, opt: torch.optim.Optimizer, what: str) -> tuple[int, list[dict]]:
    """Restore model and optimizer from ``checkpoint`` if it exists; (epochs done, history).

    A checkpoint written with other settings is refused rather than silently mixed in."""
    if checkpoint is None or not checkpoint.exists():
        return 0, []
    state = load_checkpoint(checkpoint)
    if state.get("config") != config:
        raise MetaedgeError(f"checkpoint {checkpoint} was written with other {what} settings", f"delete {checkpoint} or run with the settings it was made with")
    model.load_state_dict(state["model"])
    opt.load_state_dict(state["optimizer"])
    return int(state["epoch"]), list(state["history"])


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
    """Train ``model`` in place; returns the final validation accuracy and per-epoch history."""
    torch.manual_seed(cfg.seed)
    if cfg.channels_last:
        model.to(memory_format=torch.channels_last)
    opt = make_sgd(model.parameters(), cfg.lr, cfg.momentum, cfg.weight_decay)
    steps_per_epoch = len(train_loader)
    total_steps = cfg.epochs * steps_per_epoch
    start_epoch, history = resume_checkpoint(checkpoint if resume else None, asdict(cfg), model, opt, "training")
    if teacher is not None:
        teacher.eval()
    criterion = loss_fn or nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing)
    t0 = time.perf_counter()
    val_acc = history[-1]["val_accuracy"] if history else float("nan")
    with progress(quiet) as bar:
        task = bar.add_task(desc, total=total_steps, completed=start_epoch * steps_per_epoch, info="")
        for epoch in range(start_epoch, cfg.epochs):
            model.train()
            if getattr(train_loader, "generator", None) is not None:
                train_loader.generator.manual_seed(cfg.seed * 1000 + epoch)
            loss_sum = correct = seen = 0.0
            for i, (x, y) in enumerate(train_loader):
                step = epoch * steps_per_epoch + i
                for group in opt.param_groups:
                    group["lr"] = _lr_at(step, total_steps, cfg)
                if cfg.channels_last:
                    x = x.contiguous(memory_format=torch.channels_last)
                out = model(x)
                loss = criterion(out, y)
                if teacher is not None and cfg.distill_alpha > 0:
                    with torch.no_grad():
                        t_out = teacher(x)
                    loss = (1 - cfg.distill_alpha) * loss + cfg.distill_alpha * kd_loss(out, t_out, cfg.distill_temperature)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                loss_sum += loss.item() * len(y)
                correct += (out.argmax(1) == y).sum().item()
                seen += len(y)
                bar.update(task, advance=1, info=f"ep {epoch + 1}/{cfg.epochs} loss {loss_sum / seen:.3f} acc {correct / seen:.3f}")
            val_acc = evaluate(model, val_loader, cfg.channels_last)
            history.append({"epoch": epoch + 1, "loss": loss_sum / max(seen, 1), "train_accuracy": correct / max(seen, 1), "val_accuracy": val_acc})
            bar.update(task, info=f"ep {epoch + 1}/{cfg.epochs} loss {loss_sum / max(seen, 1):.3f} val {val_acc:.3f}")
            if checkpoint is not None:
                with atomic_path(checkpoint) as tmp:
                    torch.save({"model": model.state_dict(), "optimizer": opt.state_dict(), "epoch": epoch + 1, "history": history, "config": asdict(cfg)}, tmp)
    model.to(memory_format=torch.contiguous_format)
    return TrainResult(cfg.epochs - start_epoch, val_acc, history, time.perf_counter() - t0)
