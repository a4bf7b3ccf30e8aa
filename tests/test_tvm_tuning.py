"""TVM's default CPU schedules and the persistent MetaSchedule database (real TVM, no mocks)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("tvm")

from metaedge.deploy.backends.onnxruntime import OrtRunner  # noqa: E402
from metaedge.deploy.backends.tvm import (  # noqa: E402
    TvmBackend,
    TvmOptions,
    build_relax_module,
    prepare_module,
    schedule_module,
    with_num_cores,
)
from metaedge.onnx_graph import onnx_input_spec  # noqa: E402
from metaedge.targets.registry import get_target  # noqa: E402


def _module(onnx_path: Path):
    name, shape, _ = onnx_input_spec(onnx_path)
    return build_relax_module(onnx_path, name, (1,) + tuple(shape[1:]))


def _unscheduled(mod) -> list[str]:
    import tvm

    return [gv.name_hint for gv, f in mod.functions.items() if isinstance(f, tvm.tirx.PrimFunc) and not (f.attrs and f.attrs.get("tirx.is_scheduled"))]


def test_default_rules_schedule_every_kernel_of_a_resnet(tiny_onnx):
    """Every fused kernel of ResNet-20 (convs with residual adds, pooling, the classifier) gets a
    default schedule: none is left as TOPI's naive loop nest."""
    _, path = tiny_onnx
    target = with_num_cores(get_target("x86").tvm(), 1)
    prepared = prepare_module(_module(path), target)
    assert len(_unscheduled(prepared)) >= 5  # the rules have work to do
    left = _unscheduled(schedule_module(prepared, target))
    assert left == [], f"kernels without a schedule: {left}"


def test_default_rules_handle_mobilenet_relu6_and_depthwise(tmp_path):
    """MobileNetV2's ReLU6 arrives as transpose/max/min/transpose around ConvertLayout; the
    injective rule must fold it, and depthwise convs must take the conv rule."""
    import torch

    from metaedge.deploy.export import export_onnx
    from metaedge.zoo import create_model

    torch.manual_seed(0)
    model = create_model("mobilenetv2_100", num_classes=10, in_chans=1, width_mult=0.25, input_size=16)
    # Zoo init (zero-init residual BN) gives logits of ~1e-7, which any wrong kernel would still match:
    # random BN affines and running statistics make the outputs large enough for parity to mean something.
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.1, 0.1)
        model.train()
        for _ in range(5):
            model(torch.randn(16, 1, 16, 16))
    model.eval()
    path = export_onnx(model, torch.randn(1, 1, 16, 16), tmp_path / "mnv2.onnx")
    target = with_num_cores(get_target("x86").tvm(), 1)
    left = _unscheduled(schedule_module(prepare_module(_module(path), target), target))
    assert left == [], f"kernels without a schedule: {left}"
    be = TvmBackend()
    runner = be.load(be.compile(path, "x86", tmp_path / "out"))
    x = np.random.default_rng(0).standard_normal((1, 1, 16, 16), dtype=np.float32)
    ref = OrtRunner(path).run(x)
    assert np.abs(ref).max() > 1e-2  # a non-trivial output, so the comparison below can fail
    np.testing.assert_allclose(runner.run(x), ref, atol=1e-4 * max(1.0, float(np.abs(ref).max())))


def test_second_compile_reuses_the_database(tiny_onnx, tmp_path):
    """Tuning writes records (default schedules measured first, then searched candidates); the
    same model compiled again with the same budget tunes nothing and takes seconds; the library
    still matches ONNX Runtime."""
    _, path = tiny_onnx
    db = tmp_path / "db"
    reports = []
    first = TvmBackend(TvmOptions(tune_trials=24, tuning_dir=db, report=reports.append))
    t0 = time.perf_counter()
    c1 = first.compile(path, "x86", tmp_path / "a")
    t_first = time.perf_counter() - t0
    meta = json.loads((tmp_path / "a" / "model.json").read_text())["tuning"]
    assert meta["trials_run"] >= meta["tasks"] >= 5  # every kernel seeded, then searched
    assert meta["trials_before"] == 0 and meta["applied"] and meta["estimated_ms"] > 0
    records = (db / "database_tuning_record.json").read_text().splitlines()
    assert len(records) == meta["trials_run"]
    assert reports and reports[-1].trials > 0  # the progress callback saw the search

    t0 = time.perf_counter()
    TvmBackend(TvmOptions(tune_trials=24, tuning_dir=db)).compile(path, "x86", tmp_path / "b")
    t_second = time.perf_counter() - t0
    meta2 = json.loads((tmp_path / "b" / "model.json").read_text())["tuning"]
    assert meta2["trials_run"] == 0 and meta2["trials_before"] == meta["trials_run"]
    assert "already holds" in meta2["skipped_reason"]
    assert t_second < 60 and t_second < t_first / 2, (t_first, t_second)
    x = np.random.default_rng(0).standard_normal((1, 1, 8, 8), dtype=np.float32)
    ref = OrtRunner(path).run(x)
    assert np.abs(ref).max() > 1e-3
    np.testing.assert_allclose(first.load(c1).run(x), ref, atol=1e-4)


@pytest.mark.parametrize(
    "args, needle",
    [
        (["--trials", "0"], "--trials 0 is below 1"),
        (["--target", "rpi4"], "no --device was given"),
        (["--device", "127.0.0.1:9190"], "has no key"),
        (["--target", "cuda"], "GPU target"),
    ],
)
def test_tune_cli_refuses_bad_settings_in_one_line(tiny_onnx, args, needle):
    from conftest import run_cli

    _, path = tiny_onnx
    base = ["tune", str(path)] + (["--target", "x86"] if "--target" not in args else [])
    r = run_cli(*base, *args, timeout=300)
    assert r.returncode == 2, r.stderr
    assert needle in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr


def test_tune_cli_missing_model(tmp_path):
    from conftest import run_cli

    r = run_cli("tune", str(tmp_path / "nothing"), "--target", "x86", timeout=300)
    assert r.returncode == 2 and "does not exist" in r.stderr and "metaedge compress" in r.stderr


def test_missing_cross_toolchain_is_a_skipped_row(tiny_onnx, tmp_path, monkeypatch):
    """Without a cross g++ and without the ziglang wheel, compiling for rpi4 names what to install
    and does not fail the compile (ONNX Runtime still ships)."""
    import importlib.util
    from dataclasses import replace

    import metaedge.targets.toolchain as toolchain
    from metaedge.deploy.compile import compile_for_target

    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(toolchain.importlib.util, "find_spec", lambda name, *a: None if name == "ziglang" else real_find_spec(name, *a))
    target = replace(get_target("rpi4"), name="rpi4-notools", cross_compiler="no-such-aarch64-g++")
    _, path = tiny_onnx
    entry = compile_for_target(path, target, tmp_path, backends="auto")
    assert entry["tvm"]["status"] == "skipped"
    assert "setup_cross.sh" in entry["tvm"]["reason"] and "ziglang" in entry["tvm"]["reason"]
    assert entry["chosen"] == "onnxruntime"


def test_zig_cross_compiles_an_aarch64_library(tiny_onnx, tmp_path):
    """The no-root toolchain: zig from the ziglang wheel links a real aarch64 shared object."""
    pytest.importorskip("ziglang", reason="the ziglang wheel is not installed (make demo / tools/setup_cross.sh installs it)")
    from dataclasses import replace

    _, path = tiny_onnx
    target = replace(get_target("rpi4"), name="rpi4-zig", cross_compiler="no-such-aarch64-g++")
    compiled = TvmBackend().compile(path, target, tmp_path)
    head = compiled.path.read_bytes()[:20]
    assert head[:4] == b"\x7fELF" and int.from_bytes(head[18:20], "little") == 183  # EM_AARCH64
    assert json.loads((tmp_path / "model.json").read_text())["linker"].startswith("zig")
