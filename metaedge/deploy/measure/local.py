"""Measuring on this machine: a compiled artifact through its backend (:class:`LocalRunner`), and
the two references every artifact is compared with, PyTorch eager and ONNX Runtime on the ONNX
file, one thread by default."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn as nn

from metaedge.deploy.backends.base import get_backend
from metaedge.deploy.measure.base import MeasureInput, MeasureResult, Runner, samples_of
from metaedge.errors import MetaedgeError
from metaedge.latency import LatencyStats, TimingConfig, time_callable

__all__ = ["LocalRunner", "LocalRunnerConfig", "time_onnxruntime", "time_torch_eager", "torch_threads"]


@dataclass(frozen=True)
class LocalRunnerConfig:
    timing: TimingConfig = TimingConfig()


class LocalRunner(Runner):
    """Load each artifact with its backend here, run the given inputs, time with the backend's
    timer (TVM's ``time_evaluator``, wall clock around ``run`` otherwise)."""

    def __init__(self, config: LocalRunnerConfig = LocalRunnerConfig()) -> None:
        self.config = config

    def run(self, inputs: Sequence[MeasureInput]) -> list[MeasureResult]:
        timing = self.config.timing
        results = []
        for inp in inputs:
            if inp.artifact is None:
                raise MetaedgeError("the local runner needs a compiled artifact", "compile the model first (metaedge compile)")
            if not Path(inp.artifact.path).is_file():
                raise MetaedgeError(f"{inp.artifact.path} does not exist", "compile the model first (metaedge compile --target ...)")
            t0 = time.perf_counter()
            backend = get_backend(inp.artifact.backend)
            runner = backend.load(inp.artifact, threads=timing.threads)
            xs = samples_of(inp)
            outputs = np.stack([runner.run(x) for x in xs]) if inp.inputs is not None else None
            latency = backend.time(runner, xs[0], timing)
            results.append(MeasureResult(latency, outputs, "local", time.perf_counter() - t0, inp.tag))
        return results


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
