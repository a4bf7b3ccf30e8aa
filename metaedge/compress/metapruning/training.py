"""PruningNet training (fresh width vectors every step, see ``sampling``) and candidate scoring.

With the sandwich sampler each step trains the largest network on the labels (and, when given,
the trained model's soft targets) and distils its logits in place into the smallest in-band and
the random in-band networks; gradients of all of them are summed into one optimizer step.

Checkpointed atomically after every epoch and resumable. Under torchrun the PruningNet is wrapped
in DistributedDataParallel with a DistributedSampler; the width vector of step ``s`` comes from
``Random(seed, s)``, identical on every rank and after a resume.
"""

from __future__ import annotations

import contextlib
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import DataLoader, Subset, TensorDataset

from metaedge.compress.dist import DistInfo, all_reduce_sum
from metaedge.compress.engine import Step, StepLoss, TrainConfig, TrainHooks, TrainResult, train_loop
from metaedge.compress.metapruning.pruningnet import PruningNet
from metaedge.compress.metapruning.sampling import WidthSampler
from metaedge.compress.metapruning.space import WidthSpace
from metaedge.compress.train import kd_loss, make_sgd

__all__ = ["PNTrainConfig", "train_pruningnet", "score_candidate", "recalib_batches"]


def _pruningnet_train() -> TrainConfig:
    # paper (MobileNet): no weight decay on the PruningNet; KD from the given (trained) model, 0 disables
    return TrainConfig(epochs=4, weight_decay=0.0, distill_alpha=0.5)


@dataclass(frozen=True)
class PNTrainConfig:
    train: TrainConfig = field(default_factory=_pruningnet_train)
    inplace_distill: float = 1.0  # sandwich: weight of the largest network's soft targets for the others (rest: labels)


def _step_rng(seed: int, step: int) -> random.Random:
    return random.Random(seed * 1_000_003 + step)


class _PruningNetHooks(TrainHooks):
    """Every step: the sampler's width vectors, one forward and backward each into one optimizer step."""

    def __init__(self, pn: PruningNet, net: nn.Module, sampler: WidthSampler, cfg: PNTrainConfig, teacher: nn.Module | None, distributed: bool) -> None:
        self.pn, self.net, self.sampler, self.cfg, self.distributed = pn, net, sampler, cfg, distributed
        self.teacher = teacher if cfg.train.distill_alpha > 0 else None
        self.device = next(pn.parameters()).device
        self.criterion = nn.CrossEntropyLoss(label_smoothing=cfg.train.label_smoothing)
        self.t0 = time.perf_counter()

    def loss(self, x: torch.Tensor, y: torch.Tensor, step: Step) -> StepLoss:
        train = self.cfg.train
        x, y = x.to(self.device), y.to(self.device)
        t_out = None
        if self.teacher is not None:
            with torch.no_grad():
                t_out = self.teacher(x)
        widths = self.sampler(_step_rng(train.seed, step.global_step))
        largest = None
        for j, w in enumerate(widths):
            self.pn.set_widths(w)
            # DDP: reduce gradients once, after the last width's backward
            with self.net.no_sync() if self.distributed and j < len(widths) - 1 else contextlib.nullcontext():  # type: ignore[operator]
                out = self.net(x)
                if largest is not None and self.cfg.inplace_distill > 0:
                    a = self.cfg.inplace_distill
                    width_loss = (1 - a) * self.criterion(out, y) + a * kd_loss(out, largest, 1.0)
                else:
                    width_loss = self.criterion(out, y)
                    if t_out is not None:
                        width_loss = (1 - train.distill_alpha) * width_loss + train.distill_alpha * kd_loss(out, t_out, train.distill_temperature)
                width_loss.backward()
            if j == 0:
                loss = width_loss.detach()
                largest = out.detach() if self.sampler.sandwich else None
        return StepLoss(None, {"loss": loss})

    def end_of_epoch(self, epoch: int) -> dict[str, Any]:
        return {"seconds": time.perf_counter() - self.t0}


def train_pruningnet(
    pn: PruningNet,
    space: WidthSpace,
    train_ds: TensorDataset,
    cfg: PNTrainConfig,
    checkpoint: Path | None = None,
    teacher: nn.Module | None = None,
    info: DistInfo = DistInfo(),
    quiet: bool = False,
    signature: dict | None = None,
    stop_after: int | None = None,
    sampler: WidthSampler | None = None,
) -> TrainResult:
    """Train ``pn`` in place; resumes from ``checkpoint`` when present. ``signature``: what else the
    checkpoint depends on (the model's channel groups, the search space, ...).

    ``sampler`` gives each step's width vectors (default: one random vector from the whole space)."""
    train = cfg.train
    device = next(pn.parameters()).device
    opt = make_sgd(pn.parameters(), train.lr, train.momentum, train.weight_decay)
    if info.enabled:
        from torch.nn.parallel import DistributedDataParallel as DDP
        from torch.utils.data.distributed import DistributedSampler

        shards = DistributedSampler[int](train_ds, num_replicas=info.world, rank=info.rank, shuffle=True, seed=train.seed, drop_last=True)
        loader = DataLoader(train_ds, batch_size=train.batch_size, sampler=shards, drop_last=True)
        net: nn.Module = DDP(pn, device_ids=[device.index] if device.type == "cuda" else None)
    else:
        loader = DataLoader(train_ds, batch_size=train.batch_size, shuffle=True, generator=torch.Generator(), drop_last=True)
        net = pn
    if teacher is not None:
        teacher.eval()
    hooks = _PruningNetHooks(pn, net, sampler or WidthSampler(space, random_widths=1, sandwich=False), cfg, teacher, info.enabled)
    result = train_loop(
        pn,
        loader,
        [opt],
        train,
        hooks,
        signature={"inplace_distill": cfg.inplace_distill, "model": signature or {}},
        checkpoint=checkpoint,
        what="PruningNet (or model)",
        desc="pruningnet",
        quiet=quiet,
        dist=info,
        stop_after=stop_after,
    )
    pn.set_widths({})
    return result


def recalib_batches(train_ds: TensorDataset, batch_size: int, n: int, seed: int, info: DistInfo = DistInfo()) -> list[torch.Tensor]:
    """The same ``n`` shuffled training batches for every candidate (this rank's share under DDP)."""
    g = torch.Generator().manual_seed(seed + 7)
    perm = torch.randperm(len(train_ds), generator=g)
    perm = perm[info.rank :: info.world]
    xs = train_ds.tensors[0]
    return [xs[perm[i * batch_size : (i + 1) * batch_size]] for i in range(min(n, max(1, len(perm) // batch_size)))]


@torch.no_grad()
def score_candidate(
    pn: PruningNet, widths: dict[str, int], recalib: list[torch.Tensor], val_ds: TensorDataset, info: DistInfo = DistInfo(), batch_size: int = 256
) -> dict:
    """Top-1 (and mean cross-entropy) on the validation split with generated weights and
    recalibrated BN -- no fine-tuning per candidate."""
    device = next(pn.parameters()).device
    pn.set_widths(widths)
    pn.recalibrate([x.to(device) for x in recalib])
    if info.enabled:  # average the statistics of every rank's batches
        for bn in pn.bn_layers().values():
            for buf in (bn.running_mean, bn.running_var):
                all_reduce_sum(buf, info).div_(info.world)
    pn.eval()
    shard = Subset(val_ds, range(info.rank, len(val_ds), info.world))
    correct = total = loss = 0.0
    for x, y in DataLoader(shard, batch_size=batch_size):
        logits = pn(x.to(device)).cpu()
        correct += (logits.argmax(1) == y).sum().item()
        loss += F.cross_entropy(logits, y, reduction="sum").item()
        total += len(y)
    counts = all_reduce_sum(torch.tensor([correct, loss, total], dtype=torch.float64), info)
    n = max(float(counts[2]), 1.0)
    return {"accuracy": float(counts[0]) / n, "loss": round(float(counts[1]) / n, 6)}
