"""TVM backend: x86 build with parity vs ONNX Runtime, QDQ input, aarch64 cross-compile (ELF
machine), CUDA source for a Jetson tag without a GPU, backend auto-selection and `metaedge compile`."""

from __future__ import annotations

import argparse
import json
import shutil
import struct
from pathlib import Path

import numpy as np
import pytest

from metaedge.deploy.backends.base import get_backend
from metaedge.deploy.backends.onnxruntime import OrtRunner
from metaedge.errors import MetaedgeError
from metaedge.latency import TimingConfig
from metaedge.parity import compare

FAST = TimingConfig(warmup=2, repeats=10)
EM_AARCH64 = 183


def export_tiny_cnn(path: Path, hw: int = 32) -> Path:
    import torch
    import torch.nn as nn

    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 16, 3, 2, 1),
        nn.BatchNorm2d(16),
        nn.ReLU(),
        nn.Conv2d(16, 16, 3, 1, 1, groups=16),
        nn.ReLU(),
        nn.Conv2d(16, 32, 1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(32, 10),
    ).eval()
    with torch.no_grad():  # non-trivial BN statistics so folding is exercised
        model[1].running_mean.uniform_(-0.5, 0.5)
        model[1].running_var.uniform_(0.5, 2.0)
    torch.onnx.export(
        model,
        torch.randn(1, 3, hw, hw),
        str(path),
        input_names=["input"],
        output_names=["logits"],
        dynamic_axes={"input": {0: "N"}, "logits": {0: "N"}},
        opset_version=17,
        dynamo=False,
    )
    return path


def quantize(src: Path, dst: Path, fmt: str) -> Path:
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            rng = np.random.default_rng(0)
            self.items = iter([{"input": rng.standard_normal((1, 3, 32, 32), dtype=np.float32)} for _ in range(8)])

        def get_next(self):
            return next(self.items, None)

    quantize_static(str(src), str(dst), Reader(), quant_format=getattr(QuantFormat, fmt), activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
    return dst


@pytest.fixture(scope="module")
def tiny_onnx(tmp_path_factory) -> Path:
    return export_tiny_cnn(tmp_path_factory.mktemp("tiny") / "model.onnx")


def _inputs(n: int = 4) -> np.ndarray:
    return np.random.default_rng(1).standard_normal((n, 1, 3, 32, 32), dtype=np.float32)


def test_x86_compile_parity_and_timing(tiny_onnx, tmp_path):
    be = get_backend("tvm")
    assert be.unavailable_reason() is None
    c = be.compile(tiny_onnx, "x86", tmp_path / "compiled" / "x86" / "tvm")
    assert c.path.name == "model.so" and c.path.is_file() and c.input_shape == (1, 3, 32, 32)
    meta = json.loads((c.path.parent / "model.json").read_text())
    assert meta["input_name"] == "input" and meta["output_name"] == "logits" and meta["arch"] == "x86_64"
    runner, ref = be.load(c), OrtRunner(tiny_onnx)
    xs = _inputs()
    res = compare(np.concatenate([ref.run(x) for x in xs]), np.concatenate([runner.run(x) for x in xs]))
    assert res.passed and res.max_abs_err < 1e-4 and res.top1_agreement == 1.0
    lat = be.time(runner, xs[0], FAST)
    assert lat.repeats == FAST.repeats and 0 < lat.min_ms <= lat.p50_ms <= lat.p99_ms


def test_qdq_onnx_compiles_with_parity(tiny_onnx, tmp_path):
    qdq = quantize(tiny_onnx, tmp_path / "qdq.onnx", "QDQ")
    be = get_backend("tvm")
    c = be.compile(qdq, "x86", tmp_path / "tvm")
    runner, ref = be.load(c), OrtRunner(qdq)
    xs = _inputs(8)
    res = compare(np.concatenate([ref.run(x) for x in xs]), np.concatenate([runner.run(x) for x in xs]))
    # ORT runs int8 kernels, TVM fake-quantized fp32: logits differ slightly, decisions should not.
    assert res.top1_agreement >= 0.75
    scale = float(np.abs(np.concatenate([ref.run(x) for x in xs])).max())
    assert res.max_abs_err < 0.25 * max(scale, 1.0)
    # the compile stage's rule for quantized artifacts (errors in output steps) passes on the same outputs
    from metaedge.deploy.compile import COMPILED_TOLERANCE
    from metaedge.onnx_graph import output_step

    outs = (np.concatenate([ref.run(x) for x in xs]), np.concatenate([runner.run(x) for x in xs]))
    rule = compare(*outs, COMPILED_TOLERANCE["quantized"], step=output_step(qdq))
    assert rule.passed and rule.kind == "quantized" and rule.step, rule


def test_qoperator_onnx_refused_clearly(tiny_onnx, tmp_path):
    qop = quantize(tiny_onnx, tmp_path / "qop.onnx", "QOperator")
    with pytest.raises(MetaedgeError, match="QOperator.*QDQ"):
        get_backend("tvm").compile(qop, "x86", tmp_path / "tvm")


def _elf_machine(path: Path) -> int:
    head = path.read_bytes()[:20]
    assert head[:4] == b"\x7fELF"
    return struct.unpack("<H", head[18:20])[0]


@pytest.mark.skipif(shutil.which("aarch64-linux-gnu-g++") is None, reason="aarch64-linux-gnu-g++ missing: run tools/arm64_device/setup.sh")
@pytest.mark.parametrize("target", ["arm64", "rpi4"])
def test_aarch64_cross_compile(tiny_onnx, tmp_path, target):
    be = get_backend("tvm")
    c = be.compile(tiny_onnx, target, tmp_path / target)
    assert _elf_machine(c.path) == EM_AARCH64
    with pytest.raises(MetaedgeError, match="--device"):
        be.load(c)


@pytest.mark.skipif(shutil.which("aarch64-linux-gnu-g++") is None, reason="aarch64-linux-gnu-g++ missing")
def test_cuda_source_for_jetson_tag_without_gpu(tiny_onnx, tmp_path):
    import tvm
    from tvm import relax  # noqa: F401

    from metaedge.deploy.backends.tvm import build_relax_module
    from metaedge.targets.registry import get_target

    target = get_target("jetson-orin-nano")
    mod = build_relax_module(tiny_onnx, "input", (1, 3, 32, 32))
    ex = tvm.compile(mod, target=target.tvm())

    def walk(m):
        yield m
        for sub in m.imports:
            yield from walk(sub)

    cuda_mods = [m for m in walk(ex.mod) if m.kind == "cuda"]
    assert cuda_mods, [m.kind for m in walk(ex.mod)]
    src = cuda_mods[0].inspect_source()
    assert "__global__" in src and 'extern "C"' in src
    # and the backend writes an aarch64 host library embedding it
    c = get_backend("tvm").compile(tiny_onnx, target, tmp_path / "orin")
    assert _elf_machine(c.path) == EM_AARCH64 and c.extra["device"] == "cuda"
    nvcc = shutil.which("nvcc")
    if nvcc:  # the embedded source is valid CUDA for sm_87
        import subprocess

        cu = tmp_path / "k.cu"
        cu.write_text(src)
        r = subprocess.run([nvcc, "-arch=sm_87", "-cubin", "-o", str(tmp_path / "k.cubin"), str(cu)], capture_output=True, text=True, timeout=300)
        assert r.returncode == 0, r.stderr[-2000:]


def test_compile_for_target_auto_picks_fastest(tiny_onnx, tmp_path):
    from metaedge.deploy.compile import compile_for_target

    entry = compile_for_target(tiny_onnx, "x86", tmp_path, backends="auto", timing=FAST)
    for name in ("onnxruntime", "tvm"):
        rec = entry[name]
        assert rec["status"] == "ok" and rec["parity_pass"], rec
        assert (tmp_path / rec["path"]).is_file()
    best = min(("onnxruntime", "tvm"), key=lambda n: entry[n]["latency"]["p50_ms"])
    assert entry["chosen"] == best and "fastest" in entry["chosen_by"]


def test_compile_for_cross_target_records_why_not_measured(tiny_onnx, tmp_path):
    from metaedge.deploy.compile import compile_for_target

    entry = compile_for_target(tiny_onnx, "rpi4", tmp_path, backends="tvm", timing=FAST)
    assert entry["tvm"]["status"] == "compiled" and "--device" in entry["tvm"]["reason"]
    assert entry["chosen"] == "tvm"


def test_cli_compile_updates_manifest(tiny_onnx, tmp_path):
    from metaedge.artifacts import ArtifactDir, load_manifest
    from metaedge.cli import compile as cli

    art = tmp_path / "art"
    ArtifactDir(art).update(model={"name": "tiny"})
    shutil.copyfile(tiny_onnx, art / "model.onnx")
    ap = argparse.ArgumentParser()
    cli.add_parser(ap.add_subparsers(dest="cmd"))
    args = ap.parse_args(["compile", "--target", "x86", "--backend", "tvm", "--repeats", "5", "--warmup", "1", "--no-cache", str(art)])
    assert cli.run(args) == 0
    m = load_manifest(art)
    assert m["model"] == {"name": "tiny"}
    assert m["compiled"]["x86"]["chosen"] == "tvm"
    assert m["compiled"]["x86"]["tvm"]["path"] == "compiled/x86/tvm/model.so"
    with pytest.raises(MetaedgeError, match="unknown target"):
        cli.run(ap.parse_args(["compile", "--target", "pi9", str(art)]))


def test_local_runner(tiny_onnx, tmp_path):
    from metaedge.deploy.measure.base import MeasureInput
    from metaedge.deploy.measure.local import LocalRunner, LocalRunnerConfig

    c = get_backend("tvm").compile(tiny_onnx, "x86", tmp_path)
    xs = _inputs(2)
    res = LocalRunner(LocalRunnerConfig(FAST)).measure(MeasureInput(c, xs, tag="tiny"))
    assert res.outputs.shape == (2, 1, 10) and res.latency.repeats == FAST.repeats
    assert res.measured_on == "local" and res.tag == "tiny"
    np.testing.assert_allclose(res.outputs, np.stack([OrtRunner(tiny_onnx).run(x) for x in xs]), atol=1e-4)
    assert LocalRunner(LocalRunnerConfig(FAST)).measure(MeasureInput(c)).outputs is None  # timing only


def test_gpu_check_prepare_compiles_for_cuda_without_a_gpu(tmp_path):
    """tools/gpu_check/prepare.py: TVM compiles for cuda:sm_90 here (no GPU) and packs what the GPU
    machine needs -- a runtime-only tvm (no compiler library) small enough to travel."""
    import subprocess
    import sys
    import tarfile

    script = Path(__file__).resolve().parents[1] / "tools" / "gpu_check" / "prepare.py"
    dest = tmp_path / "gpu"
    r = subprocess.run([sys.executable, str(script), "--dest", str(dest), "--cases", "resnet56_32"], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    check = json.loads((dest / "check.json").read_text())
    lib = dest / check["cases"]["resnet56_32"]["lib"]
    assert lib.read_bytes()[:4] == b"\x7fELF" and b"__global__" in lib.read_bytes()  # CUDA source inside
    with tarfile.open(dest / "tvm-runtime.tar.gz") as tar:
        names = tar.getnames()
    assert "tvm/lib/libtvm_runtime.so" in names and not any(n.endswith("libtvm_compiler.so") for n in names)
    assert list((dest / "wheels").glob("apache_tvm_ffi-*-cp312-*.whl"))
    assert sum(p.stat().st_size for p in dest.rglob("*") if p.is_file()) < 60 * 2**20
