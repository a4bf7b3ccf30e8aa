"""Time a compiled TVM library on this machine (the local twin of ``rpc.measure_remote``)."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from metaedge.errors import MetaedgeError
from metaedge.latency import LatencyStats, TimingConfig

__all__ = ["measure_local"]


def measure_local(lib_path: Path | str, input_shape: Sequence[int], timing: TimingConfig = TimingConfig(), *,
                  device_kind: str = "cpu", x: np.ndarray | None = None) -> tuple[LatencyStats, np.ndarray]:
    """Load an ``export_library`` .so here, run it once on ``x`` (seeded random by default) and time
    it with ``time_evaluator``. Returns (latency, output)."""
    from metaedge.deploy.backends.tvm import TvmRunner, time_vm

    lib_path = Path(lib_path)
    if not lib_path.is_file():
        raise MetaedgeError(f"{lib_path} does not exist", "compile the model first (metaedge compile --target ...)")
    runner = TvmRunner(lib_path, device_kind, timing.threads)
    if x is None:
        x = np.random.default_rng(0).random(tuple(input_shape), dtype=np.float32)
    out = runner.run(x)
    return time_vm(runner.vm, runner.dev, runner._tensor(x), timing), out
