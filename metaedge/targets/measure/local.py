"""Latency on this machine: PyTorch eager and ONNX Runtime, one thread by default.

Both run the same input; the eager / ONNX Runtime ratio is the baseline every compiled artifact is
compared with.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from metaedge.latency import LatencyStats, TimingConfig, time_callable

__all__ = ["time_onnxruntime", "time_torch_eager", "torch_threads"]


class torch_threads:
    """Set torch's intra-op threads for a block and restore them after (training wants all cores)."""

    def __init__(self, n: int) -> None:
        self.n = n
        self.saved = torch.get_num_threads()

    def __enter__(self) -> "torch_threads":
        torch.set_num_threads(self.n)
        return self

    def __exit__(self, *exc) -> None:
        torch.set_num_threads(self.saved)


def time_torch_eager(model: nn.Module, x: torch.Tensor, config: TimingConfig = TimingConfig()) -> LatencyStats:
    model = model.eval()
    x = x.contiguous()
    with torch_threads(config.threads), torch.inference_mode():
        return time_callable(lambda: model(x), config)


def time_onnxruntime(onnx_path: Path | str, x: np.ndarray, config: TimingConfig = TimingConfig()) -> LatencyStats:
    from metaedge.deploy.backends.onnxruntime import OrtRunner

    runner = OrtRunner(onnx_path, threads=config.threads)
    x = np.ascontiguousarray(x, dtype=np.float32)
    return time_callable(lambda: runner.run(x), config)
