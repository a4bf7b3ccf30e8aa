"""The one training loop of every stage: baseline and fine-tune (``fit``), PruningNet, QAT, VIB gates.

A stage hands the loop its model, loader, optimizers and :class:`TrainHooks` (the loss of a batch,
what it does around a step or an epoch, the extra state it must checkpoint). The loop owns what
they share: the per-step cosine schedule (optional linear warm-up) on every param group of every
optimizer, the loader's shuffle reseeded per epoch, the epoch means, the progress bar, and an
atomic checkpoint after every epoch that a rerun with the same settings resumes from (one written
with other settings is refused). Under torchrun epoch means are summed over ranks and only rank 0
writes checkpoints and shows progress.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Sequence

import torch
import torch.nn as nn

from metaedge.artifacts import atomic_path
from metaedge.compress.dist import DistInfo, all_reduce_sum, barrier
from metaedge.compress.train_config import TrainConfig
from metaedge.errors import MetaedgeError

__all__ = ["CosineSchedule", "Step", "StepLoss", "TrainConfig", "TrainHooks", "TrainResult", "load_checkpoint", "progress", "train_loop"]

CHECKPOINT_FORMAT = 2  # raised when the checkpoint layout changes, so an older file is refused rather than misread


@dataclass(frozen=True)
class CosineSchedule:
    """Learning rate of a step: linear warm-up to the base rate, then half a cosine down to 0 at ``total_steps``."""

    total_steps: int
    warmup_steps: int = 0

    def lr(self, base: float, step: int) -> float:
        if self.warmup_steps and step < self.warmup_steps:
            return base * (step + 1) / self.warmup_steps
        t = (step - self.warmup_steps) / max(1, self.total_steps - self.warmup_steps)
        return 0.5 * base * (1 + math.cos(math.pi * min(1.0, t)))


@dataclass(frozen=True)
class Step:
    epoch: int  # 0-based
    index: int  # batch within the epoch
    global_step: int  # batch since the start of training: what the schedule (and PruningNet's width RNG) follow


@dataclass
class StepLoss:
    """A batch's loss as a stage's ``loss`` hook returns it."""

    objective: torch.Tensor | None  # what the loop backpropagates; None when the hook ran its own backward passes
    logs: dict[str, torch.Tensor]  # averaged into the epoch's row and shown in the progress bar ("loss", VIB's "kl")
    logits: torch.Tensor | None = None  # when given, counted into the epoch's "train_accuracy"
    weight: float | None = None  # what the batch counts for in the epoch means; None: its number of samples


class TrainHooks:
    """What a stage adds to the loop; every hook but :meth:`loss` defaults to doing nothing."""

    def before_epoch(self, epoch: int) -> None:
        pass

    def before_step(self, step: Step) -> None:
        """After the step's learning rates are set and the gradients cleared, before the forward pass."""

    def loss(self, x: torch.Tensor, y: torch.Tensor, step: Step) -> StepLoss:
        raise NotImplementedError

    def after_backward(self, step: Step) -> None:
        pass

    def after_step(self, step: Step, loss: StepLoss) -> None:
        pass

    def end_of_epoch(self, epoch: int) -> dict[str, Any]:
        """More columns for the epoch's history row (validation accuracy, ...)."""
        return {}

    def state_dict(self) -> dict[str, Any]:
        """Extra state the checkpoint must carry for an exact resume (tensors, numbers, dicts of them)."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass


@dataclass
class TrainResult:
    history: list[dict]  # one row per epoch, resumed epochs included
    seconds: float  # this call's training time
    epochs_run: int  # epochs this call trained (0 when the checkpoint was already complete)
    metrics: dict[str, Any]  # the last epoch's row without "epoch" ({} when there is none)

    @property
    def val_accuracy(self) -> float:
        return float(self.metrics.get("val_accuracy", math.nan))


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


def load_checkpoint(path: Path) -> dict:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise MetaedgeError(f"checkpoint {path} is unreadable ({type(exc).__name__})", f"delete {path} to start this stage afresh") from exc


class _EpochMeans:
    """Weighted sums of the logged values (and top-1 on the labels) over one epoch."""

    def __init__(self) -> None:
        self.sums: dict[str, float] = {}
        self.weight = self.correct = self.seen = 0.0
        self.accuracy = False

    def add(self, loss: StepLoss, y: torch.Tensor) -> None:
        w = len(y) if loss.weight is None else loss.weight
        for k, v in loss.logs.items():
            self.sums[k] = self.sums.get(k, 0.0) + v.item() * w
        self.weight += w
        if loss.logits is not None:
            self.accuracy = True
            self.correct += (loss.logits.argmax(1) == y).sum().item()
            self.seen += len(y)

    def means(self, dist: DistInfo = DistInfo()) -> dict[str, float]:
        sums, weight, correct, seen = self.sums, self.weight, self.correct, self.seen
        if dist.enabled:
            total = all_reduce_sum(torch.tensor([*sums.values(), weight, correct, seen], dtype=torch.float64), dist).tolist()
            sums, (weight, correct, seen) = dict(zip(sums, total)), total[len(sums) :]
        row = {k: s / max(weight, 1) for k, s in sums.items()}
        if self.accuracy:
            row["train_accuracy"] = correct / max(seen, 1)
        return row


_SHORT = {"train_accuracy": "acc", "val_accuracy": "val"}


def _describe(epoch: int, epochs: int, values: dict[str, Any]) -> str:
    return f"ep {epoch + 1}/{epochs} " + " ".join(f"{_SHORT.get(k, k)} {v:.3f}" for k, v in values.items() if isinstance(v, float))


def _resume(
    checkpoint: Path, signature: dict, model: nn.Module, optimizers: Sequence[torch.optim.Optimizer], hooks: TrainHooks, what: str
) -> tuple[int, list[dict]]:
    state = load_checkpoint(checkpoint)
    if state.get("format") != CHECKPOINT_FORMAT:
        raise MetaedgeError(f"checkpoint {checkpoint} was written by another version of metaedge", f"delete {checkpoint} to start this stage afresh")
    if state["config"] != signature:
        raise MetaedgeError(f"checkpoint {checkpoint} was written with other {what} settings", f"delete {checkpoint} or run with the settings it was made with")
    model.load_state_dict(state["model"])
    for opt, opt_state in zip(optimizers, state["optimizers"]):
        opt.load_state_dict(opt_state)
    hooks.load_state_dict(state["extra"])
    return int(state["epoch"]), list(state["history"])


def train_loop(
    model: nn.Module,
    loader,
    optimizers: Sequence[torch.optim.Optimizer],
    cfg: TrainConfig,
    hooks: TrainHooks,
    *,
    signature: Any = None,
    checkpoint: Path | None = None,
    resume: bool = True,
    what: str = "training",
    desc: str = "train",
    quiet: bool = False,
    dist: DistInfo = DistInfo(),
    stop_after: int | None = None,
) -> TrainResult:
    """Train ``model`` in place for ``cfg.epochs`` epochs over ``loader``.

    Every param group of ``optimizers`` follows the schedule from the learning rate it was created
    with. ``signature``: the stage's settings beyond ``cfg`` that a checkpoint must match (``what``
    names them in the refusal). ``resume=False`` ignores an existing checkpoint (and overwrites it).
    ``stop_after``: a deliberate stop after that many epochs (tests, time slicing), resumed like a kill."""
    bases = [[group["lr"] for group in opt.param_groups] for opt in optimizers]  # before a resume overwrites them
    config = {"train": asdict(cfg), "stage": signature}
    start, history = 0, list[dict]()
    if resume and checkpoint is not None and checkpoint.exists():
        start, history = _resume(checkpoint, config, model, optimizers, hooks, what)
    steps_per_epoch = len(loader)
    schedule = CosineSchedule(cfg.epochs * steps_per_epoch, cfg.warmup_steps)
    if cfg.channels_last:
        model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
    t0 = time.perf_counter()
    epochs_run = 0
    with progress(quiet or not dist.is_main) as bar:
        task = bar.add_task(desc, total=schedule.total_steps, completed=start * steps_per_epoch, info="")
        for epoch in range(start, cfg.epochs):
            model.train()
            sampler = getattr(loader, "sampler", None)
            if hasattr(sampler, "set_epoch"):  # DistributedSampler: every rank shuffles alike
                sampler.set_epoch(epoch)  # type: ignore[union-attr]
            elif getattr(loader, "generator", None) is not None:
                loader.generator.manual_seed(cfg.seed * 1000 + epoch)  # an epoch's order does not depend on a resume
            hooks.before_epoch(epoch)
            means = _EpochMeans()
            for i, (x, y) in enumerate(loader):
                step = Step(epoch, i, epoch * steps_per_epoch + i)
                for opt, opt_bases in zip(optimizers, bases):
                    opt.zero_grad(set_to_none=True)
                    for group, base in zip(opt.param_groups, opt_bases):
                        group["lr"] = schedule.lr(base, step.global_step)
                if cfg.channels_last:
                    x = x.contiguous(memory_format=torch.channels_last)
                hooks.before_step(step)
                loss = hooks.loss(x, y, step)
                if loss.objective is not None:
                    loss.objective.backward()
                hooks.after_backward(step)
                for opt in optimizers:
                    opt.step()
                means.add(loss, y)
                hooks.after_step(step, loss)
                bar.update(task, advance=1, info=_describe(epoch, cfg.epochs, means.means()))
            row: dict[str, Any] = {"epoch": epoch + 1, **means.means(dist)}
            row.update(hooks.end_of_epoch(epoch))
            history.append(row)
            epochs_run += 1
            bar.update(task, info=_describe(epoch, cfg.epochs, row))
            if checkpoint is not None and dist.is_main:
                state = {
                    "format": CHECKPOINT_FORMAT,
                    "config": config,
                    "epoch": epoch + 1,
                    "history": history,
                    "model": model.state_dict(),
                    "optimizers": [opt.state_dict() for opt in optimizers],
                    "extra": hooks.state_dict(),
                }
                with atomic_path(checkpoint) as tmp:
                    torch.save(state, tmp)
            barrier(dist)
            if stop_after is not None and epoch + 1 >= stop_after:
                break
    if cfg.channels_last:
        model.to(memory_format=torch.contiguous_format)  # type: ignore[call-overload]
    metrics = {k: v for k, v in history[-1].items() if k != "epoch"} if history else {}
    return TrainResult(history, time.perf_counter() - t0, epochs_run, metrics)
