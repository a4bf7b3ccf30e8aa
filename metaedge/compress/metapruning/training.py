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
import math
import random
import time
from dataclasses import dataclass
from pathlib import Path
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import DataLoader, Subset, TensorDataset

from metaedge.artifacts import atomic_path
from metaedge.compress.metapruning.dist import DistInfo, all_reduce_sum, barrier
from metaedge.compress.metapruning.pruningnet import PruningNet
from metaedge.compress.metapruning.sampling import WidthSampler
from metaedge.compress.metapruning.space import WidthSpace
from metaedge.compress.train import kd_loss, make_sgd, progress, resume_checkpoint

__all__ = ["PNTrainConfig", "train_pruningnet", "score_candidate", "recalib_batches"]


@dataclass(frozen=True)
class PNTrainConfig:
    epochs: int = 4
    batch_size: int = 64
    lr: float = 0.05
    momentum: float = 0.9
    weight_decay: float = 0.0  # paper (MobileNet): no weight decay on the PruningNet
    label_smoothing: float = 0.1
    distill_alpha: float = 0.5  # KD from the given (trained) model; 0 disables
    distill_temperature: float = 4.0
    inplace_distill: float = 1.0  # sandwich: weight of the largest network's soft targets for the others (rest: labels)
    seed: int = 0


def _step_rng(seed: int, step: int) -> random.Random:
    return random.Random(seed * 1_000_003 + step)


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
) -> list[dict]:
    """Train ``pn`` in place; returns per-epoch history. Resumes from ``checkpoint`` when present.

    ``sampler`` gives each step's width vectors (default: one random vector from the whole space)."""
    from dataclasses import asdict

    device = next(pn.parameters()).device
    config = {**asdict(cfg), "signature": signature or {}}
    opt = make_sgd(pn.parameters(), cfg.lr, cfg.momentum, cfg.weight_decay)
    start, history = resume_checkpoint(checkpoint, config, pn, opt, "PruningNet (or model)")
    if start >= cfg.epochs:
        return history
    if info.enabled:
        from torch.nn.parallel import DistributedDataParallel as DDP
        from torch.utils.data.distributed import DistributedSampler

        dist_sampler = DistributedSampler(train_ds, num_replicas=info.world, rank=info.rank, shuffle=True, seed=cfg.seed, drop_last=True)
        loader = DataLoader(train_ds, batch_size=cfg.batch_size, sampler=dist_sampler, drop_last=True)
        net: nn.Module = DDP(pn, device_ids=[device.index] if device.type == "cuda" else None)
    else:
        dist_sampler = None
        gen = torch.Generator()
        loader = DataLoader(train_ds, batch_size=cfg.batch_size, shuffle=True, generator=gen, drop_last=True)
        net = pn
    if teacher is not None:
        teacher.eval()
    sampler = sampler or WidthSampler(space, random_widths=1, sandwich=False)
    steps_per_epoch = len(loader)
    total = max(1, cfg.epochs * steps_per_epoch)
    criterion = nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing)
    t0 = time.perf_counter()
    with progress(quiet or not info.is_main) as bar:
        task = bar.add_task("pruningnet", total=total, completed=start * steps_per_epoch, info="")
        for epoch in range(start, cfg.epochs):
            pn.train()
            if dist_sampler is not None:
                dist_sampler.set_epoch(epoch)
            else:
                loader.generator.manual_seed(cfg.seed * 1000 + epoch)
            loss_sum = seen = 0.0
            for i, (x, y) in enumerate(loader):
                step = epoch * steps_per_epoch + i
                lr = 0.5 * cfg.lr * (1 + math.cos(math.pi * step / total))
                for group in opt.param_groups:
                    group["lr"] = lr
                x, y = x.to(device), y.to(device)
                t_out = None
                if teacher is not None and cfg.distill_alpha > 0:
                    with torch.no_grad():
                        t_out = teacher(x)
                opt.zero_grad(set_to_none=True)
                widths = sampler(_step_rng(cfg.seed, step))
                largest = None
                for j, w in enumerate(widths):
                    pn.set_widths(w)
                    # DDP: reduce gradients once, after the last width's backward
                    with net.no_sync() if info.enabled and j < len(widths) - 1 else contextlib.nullcontext():  # type: ignore[operator]
                        out = net(x)
                        if largest is not None and cfg.inplace_distill > 0:
                            a = cfg.inplace_distill
                            step_loss = (1 - a) * criterion(out, y) + a * kd_loss(out, largest, 1.0)
                        else:
                            step_loss = criterion(out, y)
                            if t_out is not None:
                                step_loss = (1 - cfg.distill_alpha) * step_loss + cfg.distill_alpha * kd_loss(out, t_out, cfg.distill_temperature)
                        step_loss.backward()
                    if j == 0:
                        loss = step_loss.detach()
                        largest = out.detach() if sampler.sandwich else None
                opt.step()
                loss_sum += loss.item() * len(y)
                seen += len(y)
                bar.update(task, advance=1, info=f"ep {epoch + 1}/{cfg.epochs} loss {loss_sum / seen:.3f}")
            stats = all_reduce_sum(torch.tensor([loss_sum, seen], dtype=torch.float64), info)
            history.append({"epoch": epoch + 1, "loss": float(stats[0] / max(stats[1], 1)), "seconds": time.perf_counter() - t0})
            if checkpoint is not None and info.is_main:
                with atomic_path(checkpoint) as tmp:
                    torch.save({"model": pn.state_dict(), "optimizer": opt.state_dict(), "epoch": epoch + 1, "history": history, "config": config}, tmp)
            barrier(info)
            if stop_after is not None and epoch + 1 >= stop_after:
                break  # a deliberate stop (tests, time slicing): resumes like a kill would
    pn.set_widths({})
    return history


def recalib_batches(train_ds: TensorDataset, batch_size: int, n: int, seed: int, info: DistInfo = DistInfo()) -> list[torch.Tensor]:
    """The same ``n`` shuffled training batches for every candidate (this rank's share under DDP)."""
    g = torch.Generator().manual_seed(seed + 7)
    perm = torch.randperm(len(train_ds), generator=g)
    perm = perm[info.rank::info.world]
    xs = train_ds.tensors[0]
    return [xs[perm[i * batch_size:(i + 1) * batch_size]] for i in range(min(n, max(1, len(perm) // batch_size)))]


@torch.no_grad()
def score_candidate(pn: PruningNet, widths: dict[str, int], recalib: list[torch.Tensor], val_ds: TensorDataset, info: DistInfo = DistInfo(), batch_size: int = 256) -> dict:
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
