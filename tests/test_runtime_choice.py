"""Which backend the device runner serves from an artifact directory (manifest ``compiled.*.chosen``),
and that a library built for another architecture or for a GPU is never picked.

The machine is injected (``Host``), so these pass on x86 and ARM hosts alike; fake libraries are
just ELF headers, never loaded.
"""

from __future__ import annotations

import json
import platform
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from _docker import REPO, make_tiny_artifact, ort_reference

pytest.importorskip("onnxruntime")

from metaedge.deploy.runtime.choice import choose_model  # noqa: E402
from metaedge.deploy.runtime.host import Host, elf_arch, target_facts  # noqa: E402
from metaedge.errors import MetaedgeError  # noqa: E402

X86, ARM = Host("x86_64"), Host("aarch64")
ELF_MACHINE = {"x86_64": 62, "aarch64": 183}


def fake_library(path: Path, arch: str) -> Path:
    """A file whose ELF header says ``arch`` (what the runner reads before any dlopen)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    head = bytearray(64)
    head[:4], head[4], head[5] = b"\x7fELF", 2, 1  # 64-bit, little-endian
    head[18:20] = ELF_MACHINE[arch].to_bytes(2, "little")
    path.write_bytes(bytes(head) + b"not really a library")
    return path


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    return make_tiny_artifact(tmp_path_factory.mktemp("choice") / "art")


@pytest.fixture
def art(base, tmp_path) -> Path:
    out = tmp_path / "art"
    shutil.copytree(base, out)
    return out


def _write_compiled(art: Path, compiled: dict) -> dict:
    manifest = json.loads((art / "manifest.json").read_text())
    manifest["compiled"] = compiled
    (art / "manifest.json").write_text(json.dumps(manifest))
    return manifest


def _section(target: str, chosen: str, arch: str | None, gpu: bool = False, measured: bool = True, **backends) -> dict:
    sec: dict = {
        "target": target,
        "chosen": chosen,
        "chosen_by": "fastest p50 among onnxruntime, tvm" if measured else "target preference (nothing could be measured here)",
    }
    if arch is not None:
        sec.update(arch=arch, gpu=gpu)
    for name, (path, p50) in backends.items():
        sec[name] = {"status": "ok" if p50 else "compiled", "path": path, **({"latency": {"p50_ms": p50}} if p50 else {})}
    return sec


def _x86_demo(art: Path) -> dict:
    """What `metaedge compress` + compile for x86 leave: ORT measured 28x faster than TVM, chosen."""
    (art / "compiled/x86/onnxruntime").mkdir(parents=True)
    shutil.copyfile(art / "model.onnx", art / "compiled/x86/onnxruntime/model.onnx")
    fake_library(art / "compiled/x86/tvm/model.so", "x86_64")
    return _write_compiled(
        art,
        {"x86": _section("x86", "onnxruntime", "x86_64", onnxruntime=("compiled/x86/onnxruntime/model.onnx", 0.22), tvm=("compiled/x86/tvm/model.so", 6.1))},
    )


# ---------------------------------------------------------------- host facts


def test_elf_arch_and_target_facts(tmp_path):
    assert elf_arch(fake_library(tmp_path / "a.so", "aarch64")) == "aarch64"
    assert elf_arch(fake_library(tmp_path / "x.so", "x86_64")) == "x86_64"
    (tmp_path / "junk.so").write_bytes(b"\x7fELF fake")
    assert elf_arch(tmp_path / "junk.so") is None and elf_arch(tmp_path / "missing.so") is None
    assert target_facts("rpi4", {}) == ("aarch64", False)  # manifests from before compile recorded arch
    assert target_facts("jetson-orin-nano", {}) == ("aarch64", True)
    assert target_facts("cuda:sm_90", {}) == ("x86_64", True)
    assert target_facts("lab-box", {"arch": "amd64", "gpu": False}) == ("x86_64", False)
    assert target_facts("lab-box", {}) == (None, False)
    assert Host.detect().arch in ("x86_64", "aarch64", platform.machine().lower())


# ---------------------------------------------------------------- the manifest's choice


def test_no_flags_serves_the_backend_the_compile_stage_chose(art):
    manifest = _x86_demo(art)
    c = choose_model(art, manifest, host=X86, importable=lambda m: True)  # TVM importable, still not picked
    assert (c.backend, c.path, c.target) == ("onnxruntime", art / "compiled/x86/onnxruntime/model.onnx", "x86")
    assert "compile stage chose it for target x86" in c.reason and "fastest p50" in c.reason and "x86_64" in c.reason


def test_chosen_tvm_is_served_when_it_runs_here(art):
    fake_library(art / "compiled/x86/tvm/model.so", "x86_64")
    manifest = _write_compiled(art, {"x86": _section("x86", "tvm", "x86_64", tvm=("compiled/x86/tvm/model.so", 0.1), onnxruntime=("model.onnx", 0.3))})
    c = choose_model(art, manifest, host=X86, importable=lambda m: True)
    assert (c.backend, c.path.name) == ("tvm", "model.so")
    # Chosen but not installed on this device: say so and fall back to ONNX Runtime.
    c = choose_model(art, manifest, host=X86, importable=lambda m: m != "tvm")
    assert c.backend == "onnxruntime" and "x86 chose tvm, which is not installed here" in c.reason


def test_rpi4_library_is_never_picked_on_x86(art):
    """The reported failure: after `compile --target rpi4`, serving on x86 died in dlopen."""
    fake_library(art / "compiled/rpi4/tvm/model.so", "aarch64")
    for arch in ("aarch64", None):  # with the arch compile records now, and an older manifest without it
        manifest = _write_compiled(art, {"rpi4": _section("rpi4", "tvm", arch, measured=False, tvm=("compiled/rpi4/tvm/model.so", None))})
        c = choose_model(art, manifest, host=X86, importable=lambda m: True)
        assert (c.backend, c.path) == ("onnxruntime", art / "model.onnx")
        assert "no compiled target runs on this x86_64 machine" in c.reason and "rpi4 (aarch64)" in c.reason
        with pytest.raises(MetaedgeError) as info:
            choose_model(art, manifest, backend="tvm", host=X86, importable=lambda m: True)
        assert "no TVM library for this x86_64 machine" in str(info.value)
        assert "compiled/rpi4/tvm/model.so (aarch64)" in str(info.value) and "--target x86" in info.value.fix
    # On the Pi itself the same folder serves the TVM library.
    c = choose_model(art, manifest, host=ARM, importable=lambda m: True)
    assert (c.backend, c.target) == ("tvm", "rpi4")


def test_file_wins_over_a_wrong_manifest(art):
    # A user target without a recorded arch, or a manifest that lies: the ELF header decides.
    fake_library(art / "compiled/lab-pi/tvm/model.so", "aarch64")
    fake_library(art / "compiled/x86/tvm/model.so", "aarch64")
    manifest = _write_compiled(
        art,
        {
            "x86": _section("x86", "tvm", "x86_64", tvm=("compiled/x86/tvm/model.so", 0.1)),
            "lab-pi": _section("lab-pi", "tvm", None, tvm=("compiled/lab-pi/tvm/model.so", 0.1)),
        },
    )
    c = choose_model(art, manifest, host=X86, importable=lambda m: True)
    assert c.backend == "onnxruntime" and "compiled/x86/tvm/model.so is an aarch64 library" in c.reason
    with pytest.raises(MetaedgeError, match="is an aarch64 library and this machine is x86_64"):
        choose_model(art, manifest, model="compiled/lab-pi/tvm/model.so", host=X86)


def test_gpu_targets_need_a_gpu_and_their_runtime(art):
    manifest = _write_compiled(
        art,
        {
            "cuda": _section("cuda", "tensorrt", "x86_64", gpu=True, tensorrt=("compiled/cuda/tensorrt/build_engine.py", None)),
            "x86": _section("x86", "onnxruntime", "x86_64", onnxruntime=("model.onnx", 0.2)),
        },
    )
    assert choose_model(art, manifest, host=X86, importable=lambda m: True).target == "x86"
    gpu = Host("x86_64", gpu=True)
    c = choose_model(art, manifest, host=gpu, importable=lambda m: m != "tensorrt")
    assert c.target == "x86" and "cuda chose tensorrt, which is not installed here" in c.reason
    c = choose_model(art, manifest, host=gpu, importable=lambda m: True)
    # No engine built yet: TensorRT builds it from the ONNX at first start.
    assert (c.backend, c.target, c.path) == ("tensorrt", "cuda", art / "model.onnx")


def test_explicit_backend_and_bundle_deploy_section(art):
    manifest = _x86_demo(art)
    c = choose_model(art, manifest, backend="tvm", host=X86, importable=lambda m: True)
    assert (c.backend, c.path.name, c.target) == ("tvm", "model.so", "x86")
    manifest["deploy"] = {"target": "rpi4", "backend": "onnxruntime", "model": "model.onnx"}
    c = choose_model(art, manifest, host=X86)
    assert (c.backend, c.path.name) == ("onnxruntime", "model.onnx") and "bundle" in c.reason
    with pytest.raises(MetaedgeError, match="unknown runtime backend"):
        choose_model(art, manifest, backend="openvino", host=X86)


# ---------------------------------------------------------------- end to end


def test_serving_the_demo_folder_loads_the_chosen_backend(art):
    """No flags: the real loader takes the manifest's choice and says why; answers match ORT."""
    from metaedge.deploy.runtime import load_model

    _x86_demo(art)
    host = Host("x86_64")
    m = load_model(art, host=host)
    assert m.backend == "onnxruntime" and m.path == art / "compiled/x86/onnxruntime/model.onnx"
    assert m.describe()["chosen_by"] == m.reason and m.describe()["target"] == "x86"
    x = np.random.default_rng(0).standard_normal((2, 3, 16, 16)).astype(np.float32)
    np.testing.assert_allclose(m.infer(x)[0], ort_reference(art, x), rtol=1e-5, atol=1e-6)


def test_cli_with_a_foreign_library_runs_and_says_why(art, tmp_path):
    """`run` on a folder holding only an aarch64 library for rpi4, on this machine: ONNX Runtime."""
    here = Host.detect().arch
    other = "aarch64" if here == "x86_64" else "x86_64"
    target = "rpi4" if other == "aarch64" else "x86"
    fake_library(art / f"compiled/{target}/tvm/model.so", other)
    _write_compiled(art, {target: _section(target, "tvm", other, measured=False, tvm=(f"compiled/{target}/tvm/model.so", None))})
    x = np.zeros((1, 3, 16, 16), np.float32)
    np.save(tmp_path / "x.npy", x)
    r = subprocess.run(
        [sys.executable, "-m", "metaedge.deploy.runtime", "run", "--artifact", str(art), "--json", str(tmp_path / "x.npy")],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=60,
    )
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["backend"] == "onnxruntime"
    assert f"{target} ({other})" in r.stderr and "ONNX Runtime on model.onnx" in r.stderr


def test_compile_records_the_target_arch(base, tmp_path):
    from metaedge.deploy.compile import compile_for_target
    from metaedge.latency import TimingConfig

    here = Host.detect()
    if here.arch not in ("x86_64", "aarch64"):
        pytest.skip(f"no built-in CPU target for {here.arch}")
    name = "x86" if here.arch == "x86_64" else "arm64"
    art = tmp_path / "art"
    shutil.copytree(base, art)
    entry = compile_for_target(art / "model.onnx", name, art, backends="onnxruntime", timing=TimingConfig(warmup=1, repeats=3))
    assert entry["arch"] == here.arch and entry["gpu"] is False
    manifest = _write_compiled(art, {name: entry})
    c = choose_model(art, manifest, host=Host(here.arch))
    assert c.target == name and c.backend == "onnxruntime"
