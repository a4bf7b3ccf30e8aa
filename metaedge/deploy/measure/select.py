"""Which runner can time an artifact built for a target: here, on a device over TVM RPC, or none
(a :class:`NotMeasurable` saying where it can be measured). The one place that decides, so
compile and the per-layer latency table agree."""

from __future__ import annotations

import platform

from metaedge.deploy.measure.base import NotMeasurable, Runner
from metaedge.latency import TimingConfig
from metaedge.targets.registry import Target

__all__ = ["runner_for"]


def runner_for(target: Target, backend: str, device: str | None = None, timing: TimingConfig = TimingConfig()) -> Runner:
    """The runner for ``backend`` artifacts of ``target``: an :class:`RpcRunner` when ``device``
    (``tracker-host:port/key`` or ``host:port``) is given, else a :class:`LocalRunner` when the
    artifact can run on this machine. Raises :class:`NotMeasurable` otherwise."""
    if device is not None:
        from metaedge.deploy.measure.rpc import RpcRunner, RpcRunnerConfig

        if backend != "tvm":
            raise NotMeasurable(
                f"{backend} cannot be measured over TVM RPC", "measure it with the device runner (metaedge deploy, then metaedge profile --url)"
            )
        return RpcRunner(RpcRunnerConfig.for_device(device, timing))
    # ONNX Runtime artifacts are the portable ONNX file: the CPU arch is all that must match.
    runs_here = target.arch == platform.machine() if backend == "onnxruntime" else target.runs_here()
    if not runs_here:
        raise NotMeasurable(
            f"built for {target.name} ({target.arch}{', GPU' if target.is_gpu else ''})", "measure it on the device with --device tracker-host:port/key"
        )
    if target.is_gpu and backend == "onnxruntime":
        raise NotMeasurable("onnxruntime here is the CPU build", "GPU latency needs onnxruntime-gpu on the target")
    from metaedge.deploy.measure.local import LocalRunner, LocalRunnerConfig

    return LocalRunner(LocalRunnerConfig(timing))
