"""The fine-tune every compression method ends with.

One rule for all methods (MetaPruning, VIB, uniform, L1, Tucker): the small model is trained with
the preset's epochs, learning rate and batch, distilled from the unpruned model, with a checkpoint
per structure so a killed run resumes and a run with another structure never loads it.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import torch.nn as nn

from metaedge.compress.train import TrainConfig, evaluate, fit
from metaedge.data import DataSplits, make_loader

__all__ = ["finetune"]


def finetune(
    model: nn.Module,
    data: DataSplits,
    cfg: TrainConfig,
    workdir: Path | None,
    key: Any,
    teacher: nn.Module | None = None,
    quiet: bool = False,
    desc: str = "fine-tune",
) -> float:
    """Fine-tune ``model`` in place (``cfg.epochs`` may be 0); ``key`` names the structure in the
    checkpoint file (``workdir/finetune-<hash>.pt``; no checkpoint when ``workdir`` is None).
    Returns the validation top-1 of the result, in eval mode."""
    val_loader = make_loader(data.val, 256, shuffle=False)
    if cfg.epochs > 0:
        tag = hashlib.sha1(json.dumps(key, sort_keys=True).encode()).hexdigest()[:10]
        fit(
            model,
            make_loader(data.train, cfg.batch_size, shuffle=True, seed=cfg.seed),
            val_loader,
            cfg,
            checkpoint=workdir / f"finetune-{tag}.pt" if workdir is not None else None,
            teacher=teacher.cpu() if teacher is not None else None,
            desc=desc,
            quiet=quiet,
        )
    model.eval()
    return evaluate(model, val_loader)
