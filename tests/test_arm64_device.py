"""The emulated ARM64 device end to end: a Debian arm64 root under qemu-aarch64-static serving TVM
RPC on 127.0.0.1 behind a tracker (tools/arm64_device/), an aarch64 library cross-compiled here,
uploaded, run and timed there, with parity against ONNX Runtime on this machine.

Cold (first run on a machine; measured on the 2-core dev box): setup.sh installs the cross compiler
and qemu (~40 s of apt), build_root.sh runs debootstrap (~4.3 min, second stage under qemu) and
fetches the aarch64 wheels (~10 s): about 5 minutes before the tests' own ~1 minute. Warm (root
cached under /var/cache/metaedge/arm64): under 1 minute for this file."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from test_backend_tvm import export_tiny_cnn  # noqa: E402

from metaedge.deploy.backends.base import get_backend
from metaedge.deploy.backends.onnxruntime import OrtRunner
from metaedge.deploy.measure.base import MeasureInput
from metaedge.deploy.measure.rpc import RpcRunner, RpcRunnerConfig
from metaedge.latency import TimingConfig
from metaedge.targets import rpc

pytestmark = pytest.mark.slow

TOOLS = Path(__file__).resolve().parents[1] / "tools" / "arm64_device"
FAST = TimingConfig(warmup=2, repeats=10)
KEY = "arm64-pytest"
NAME = "pytest"


def _run(script: str, *args: str, timeout: int = 1800) -> str:
    r = subprocess.run([str(TOOLS / script), *args], capture_output=True, text=True, timeout=timeout)
    if r.returncode != 0:
        raise RuntimeError(f"{script} failed ({r.returncode}): {r.stdout[-1500:]} {r.stderr[-1500:]}")
    return r.stdout


@pytest.fixture(scope="module")
def device():
    if os.geteuid() != 0:
        pytest.skip("the emulated ARM64 device needs root (debootstrap, qemu); run the suite as root")
    if shutil.which("apt-get") is None and shutil.which("debootstrap") is None:
        pytest.skip("no apt-get/debootstrap: the emulated device is built on Debian/Ubuntu hosts only")
    _run("setup.sh")
    _run("build_root.sh")
    tproc, tport = rpc.start_local_tracker(port=9590)
    try:
        _run("start_device.sh", "--tracker", f"127.0.0.1:{tport}", "--key", KEY, "--port", "9600", "--name", NAME, timeout=600)
        spec = f"127.0.0.1:{tport}/{KEY}"
        rpc.wait_for_servers(spec, 1, timeout_s=120)
        yield spec
    finally:
        _run("stop_device.sh", "--name", NAME)
        tproc.terminate()
        tproc.wait(10)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return export_tiny_cnn(tmp_path_factory.mktemp("arm64") / "model.onnx")


def test_setup_is_idempotent():
    if os.geteuid() != 0:
        pytest.skip("needs root")
    out = _run("setup.sh")
    assert "setup.sh: ok" in out


@pytest.mark.parametrize("target", ["arm64", "rpi4"])
def test_remote_run_and_parity(device, tiny, tmp_path, target):
    c = get_backend("tvm").compile(tiny, target, tmp_path / target)
    x = np.random.default_rng(0).standard_normal((2, 1, 3, 32, 32), dtype=np.float32)
    res = RpcRunner(RpcRunnerConfig.for_device(device, FAST)).measure(MeasureInput(c, x))
    ref = np.stack([OrtRunner(tiny).run(s) for s in x])
    np.testing.assert_allclose(res.outputs, ref, atol=1e-4)
    assert res.latency.repeats == FAST.repeats and res.latency.p50_ms > 0
    print(f"\n{target} on the emulated device: p50 {res.latency.p50_ms:.3f} ms (job {res.seconds:.1f} s)")


def test_compile_for_target_with_device(device, tiny, tmp_path):
    from metaedge.deploy.compile import compile_for_target

    entry = compile_for_target(tiny, "arm64", tmp_path, backends="auto", timing=FAST, device=device)
    assert entry["tvm"]["status"] == "ok" and entry["tvm"]["parity_pass"]
    assert entry["onnxruntime"]["status"] == "compiled"  # ORT is not measurable over TVM RPC
    assert entry["chosen"] == "tvm"


def test_layer_table_on_device(device, tmp_path):
    from test_latency_table import Spec

    from metaedge.deploy.latency_table import measure_layers

    specs = [Spec("conv", 8, 16, (3, 3), (1, 1), 1, (16, 16), (16, 16)), Spec("linear", 32, 10)]
    table = measure_layers(specs, "arm64", device=device, timing=FAST, cache_path=tmp_path / "c.json")
    assert len(table.entries) == 2 and all(v > 0 for v in table.entries.values())
    assert table.predict(specs) == pytest.approx(sum(table.entries.values()))
