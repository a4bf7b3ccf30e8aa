"""runner_for: the one place that decides where an artifact is measured (here, over TVM RPC, or
nowhere with a one-line reason); no device or backend is needed to check the decision."""

from __future__ import annotations

import platform

import pytest

from metaedge.deploy.measure.base import NotMeasurable
from metaedge.deploy.measure.local import LocalRunner
from metaedge.deploy.measure.rpc import RpcRunner
from metaedge.deploy.measure.select import runner_for
from metaedge.latency import TimingConfig
from metaedge.targets.registry import get_target
from metaedge.targets.rpc import DeviceSpec

HERE = "x86" if platform.machine() == "x86_64" else "arm64"
OTHER = "rpi4" if HERE == "x86" else "x86"


def test_local_when_the_artifact_runs_here():
    timing = TimingConfig(warmup=1, repeats=3)
    for backend in ("tvm", "onnxruntime"):
        runner = runner_for(get_target(HERE), backend, None, timing)
        assert isinstance(runner, LocalRunner) and runner.config.timing == timing


def test_rpc_for_tvm_on_a_device():
    runner = runner_for(get_target(OTHER), "tvm", "10.0.0.2:9190/rpi4")
    assert isinstance(runner, RpcRunner) and runner.config.device == DeviceSpec("10.0.0.2", 9190, "rpi4")


@pytest.mark.parametrize(
    "target, backend, device, message",
    [
        (OTHER, "tvm", None, "built for .*; measure it on the device with --device tracker-host:port/key"),
        (OTHER, "onnxruntime", None, "built for"),
        (HERE, "onnxruntime", "127.0.0.1:9190/k", "onnxruntime cannot be measured over TVM RPC; measure it with the device runner"),
        (HERE, "tensorrt", "127.0.0.1:9190/k", "tensorrt cannot be measured over TVM RPC"),
    ],
)
def test_not_measurable_says_where(target, backend, device, message):
    with pytest.raises(NotMeasurable, match=message):
        runner_for(get_target(target), backend, device)


def test_gpu_onnxruntime_is_not_timed_on_the_cpu_build():
    if platform.machine() != "x86_64":
        pytest.skip("the cuda target is an x86-64 host; this machine is not one")
    # ORT artifacts only need the CPU arch to match, so this holds with or without a GPU here
    with pytest.raises(NotMeasurable, match="onnxruntime here is the CPU build"):
        runner_for(get_target("cuda"), "onnxruntime")
