"""BatchNorm running statistics re-estimated on a few batches, for a network whose weights changed.

Both compressors change what a BN sees without training it: MetaPruning crops channels (and the
PruningNet generates new weights), quantization replaces W by its grid (DoReFa's 1-bit weights are
``+-max|W_c|``, 3-4x the float weights' RMS). The float model's running statistics are then wrong,
and in eval mode the error compounds layer by layer.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
import torch.nn as nn

__all__ = ["recalibrate_bn"]


@torch.no_grad()
def recalibrate_bn(model: nn.Module, batches: Iterable[torch.Tensor]) -> nn.Module:
    """Reset every BatchNorm's running statistics and re-estimate them (cumulative average) on
    ``batches`` in train mode; the train/eval mode of every module is restored afterwards."""
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
    saved = [m.momentum for m in bns]
    modes = {m: m.training for m in model.modules()}
    for m in bns:
        m.reset_running_stats()
        m.momentum = None
    model.train()
    try:
        for x in batches:
            model(x)
    finally:
        for m, mom in zip(bns, saved, strict=True):
            m.momentum = mom
        for mod, was in modes.items():
            mod.train(was)
    return model
