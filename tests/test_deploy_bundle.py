"""`metaedge deploy` bundles (no Docker needed): contents per target, commands, and that the copied
runner works on its own (outside the repo, torch blocked) like it will inside the container."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from _docker import make_tiny_artifact

from metaedge.deploy.bundle import BUNDLE_TARGETS, BundleConfig, resolve_target, write_bundle
from metaedge.errors import MetaedgeError

RUNNER_FILES = {
    "runtime/metaedge/__init__.py",
    "runtime/metaedge/errors.py",
    "runtime/metaedge/latency.py",
    "runtime/metaedge/artifacts.py",
    "runtime/metaedge/deploy/__init__.py",
}


@pytest.fixture(scope="module")
def artifact(tmp_path_factory) -> Path:
    return make_tiny_artifact(tmp_path_factory.mktemp("bundle") / "art")


def _files(root: Path) -> set[str]:
    return {p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()}


@pytest.mark.parametrize("target", BUNDLE_TARGETS)
def test_bundle_contents_per_target(artifact, tmp_path, target):
    b = write_bundle(BundleConfig(target=target, artifact=artifact, out=tmp_path / "b"))
    files = _files(b.root)
    assert RUNNER_FILES <= files
    runtime = {f for f in files if f.startswith("runtime/metaedge/deploy/runtime/")}
    assert {"runtime/metaedge/deploy/runtime/__main__.py", "runtime/metaedge/deploy/runtime/server.py"} <= runtime
    # Exactly the model + trimmed manifest from the artifact: no state dict, no training data.
    assert {f for f in files if f.startswith("artifact/")} == {"artifact/model.onnx", "artifact/manifest.json"}
    assert {f for f in files if not f.startswith(("runtime/", "artifact/", "certs/"))} == {
        "Dockerfile",
        ".dockerignore",
        "README.md",
        "bundle.json",
        "requirements.txt",
    }
    assert not any(f.endswith((".pt", ".pyc")) or "data/" in f or "__pycache__" in f for f in files)
    assert set(b.files) == files

    dockerfile = (b.root / "Dockerfile").read_text()
    readme = (b.root / "README.md").read_text()
    t = resolve_target(target)
    assert "ARG BASE_IMAGE=" in dockerfile and "HEALTHCHECK" in dockerfile and "USER metaedge" in dockerfile
    assert b.commands["build"].split("#")[0].strip() in readme and b.commands["run"] in readme
    manifest = json.loads((b.root / "artifact" / "manifest.json").read_text())
    assert manifest["deploy"]["target"] == target and set(manifest["files"]) == {"model.onnx"}
    if t.family in ("x86", "arm64"):
        assert b.backend == "onnxruntime" and "onnxruntime==" in (b.root / "requirements.txt").read_text()
        assert "python:3.11-slim-bookworm" in dockerfile
    if t.family == "arm64":
        assert "docker buildx build --platform linux/arm64" in readme
    if t.family == "jetson":
        assert b.backend == "tensorrt" and "nvcr.io/nvidia/l4t" in dockerfile
        assert "--runtime nvidia" in b.commands["run"] and "/cache" in b.commands["run"]
        assert "VOLUME /cache" in dockerfile
    if t.family == "cuda":
        assert "--gpus all" in b.commands["run"] and "onnxruntime-gpu" in (b.root / "requirements.txt").read_text()


def test_cuda_tensorrt_uses_tensorrt_image(artifact, tmp_path):
    b = write_bundle(BundleConfig(target="cuda", artifact=artifact, out=tmp_path / "b", backend="tensorrt"))
    assert "nvcr.io/nvidia/tensorrt:" in (b.root / "Dockerfile").read_text()
    assert "metaedge-trt-cache:/cache" in b.commands["run"]


def test_bundle_errors(artifact, tmp_path):
    with pytest.raises(MetaedgeError, match="unknown"):
        write_bundle(BundleConfig(target="pdp11", artifact=artifact, out=tmp_path / "a"))
    with pytest.raises(MetaedgeError, match="tensorrt"):
        write_bundle(BundleConfig(target="jetson-nano", artifact=artifact, out=tmp_path / "b", backend="onnxruntime"))
    with pytest.raises(MetaedgeError, match="TVM library"):
        write_bundle(BundleConfig(target="x86", artifact=artifact, out=tmp_path / "c", backend="tvm"))
    keep = tmp_path / "precious"
    keep.mkdir()
    (keep / "notes.txt").write_text("mine")
    with pytest.raises(MetaedgeError, match="not a metaedge bundle"):
        write_bundle(BundleConfig(target="x86", artifact=artifact, out=keep))
    assert (keep / "notes.txt").read_text() == "mine"
    with pytest.raises(MetaedgeError, match="manifest.json"):
        write_bundle(BundleConfig(target="x86", artifact=tmp_path / "nothing", out=tmp_path / "d"))


def test_rewrite_existing_bundle_and_ca_certs(artifact, tmp_path):
    crt = tmp_path / "proxy.crt"
    crt.write_text("-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n")
    out = tmp_path / "b"
    write_bundle(BundleConfig(target="x86", artifact=artifact, out=out))
    b = write_bundle(BundleConfig(target="rpi4", artifact=artifact, out=out, ca_certs=(crt,), pins=("onnxruntime==1.20.1", "psutil>=5")))
    reqs = (out / "requirements.txt").read_text().split()
    assert "onnxruntime==1.20.1" in reqs and "psutil>=5" in reqs and not any(r.startswith("onnxruntime==1.3") for r in reqs)
    assert b.target.platform == "linux/arm64"
    assert (out / "certs" / "00-proxy.crt").read_text() == crt.read_text()
    assert json.loads((out / "bundle.json").read_text())["target"]["name"] == "rpi4"


def test_tvm_bundle_picks_compiled_library(artifact, tmp_path):
    import shutil

    art = tmp_path / "art"
    shutil.copytree(artifact, art)
    lib = art / "compiled" / "x86" / "tvm" / "model.so"
    lib.parent.mkdir(parents=True)
    lib.write_bytes(b"\x7fELF fake")
    b = write_bundle(BundleConfig(target="x86", artifact=art, out=tmp_path / "b", backend="tvm"))
    assert (b.root / "artifact" / "compiled" / "x86" / "tvm" / "model.so").is_file()
    assert not (b.root / "artifact" / "model.onnx").exists()
    assert "apache-tvm" in (b.root / "requirements.txt").read_text()
    assert json.loads((b.root / "artifact" / "manifest.json").read_text())["deploy"]["backend"] == "tvm"
    # a library whose compile-time parity verdict failed is not shipped
    manifest = json.loads((art / "manifest.json").read_text())
    manifest["compiled"] = {
        "x86": {"tvm": {"path": "compiled/x86/tvm/model.so", "status": "ok", "parity_pass": False, "parity": {"max_abs_err": 0.7, "top1_agreement": 0.5}}}
    }
    (art / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(MetaedgeError, match="failed the parity check at compile .*--backend onnxruntime"):
        write_bundle(BundleConfig(target="x86", artifact=art, out=tmp_path / "c", backend="tvm"))


BLOCKED_RUN = r"""
import sys, runpy
class Block:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] == "torch":
            raise ImportError("no torch on the device")
sys.meta_path.insert(0, Block())
bundle_runtime = sys.argv[1]
sys.path.insert(0, bundle_runtime)
import metaedge.deploy.runtime
assert metaedge.deploy.runtime.__file__.startswith(bundle_runtime), metaedge.deploy.runtime.__file__
sys.argv = ["metaedge.deploy.runtime"] + sys.argv[2:]
runpy.run_module("metaedge.deploy.runtime", run_name="__main__")
"""


def test_bundled_runner_runs_standalone(artifact, tmp_path):
    """Only the bundle's runtime/ on sys.path (not the repo), torch blocked: what the image runs."""
    import onnxruntime as ort

    b = write_bundle(BundleConfig(target="x86", artifact=artifact, out=tmp_path / "b"))
    x = np.random.default_rng(3).standard_normal((2, 3, 16, 16)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    r = subprocess.run(
        [sys.executable, "-c", BLOCKED_RUN, str(b.root / "runtime"), "run", "--artifact", str(b.root / "artifact"), "--json", str(tmp_path / "x.npy")],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    want = ort.InferenceSession(str(artifact / "model.onnx"), providers=["CPUExecutionProvider"]).run(None, {"input": x})[0]
    np.testing.assert_allclose(np.array(out["logits"]), want, rtol=1e-5, atol=1e-6)


def test_cli_deploy(artifact, tmp_path, capsys):
    from metaedge.cli import deploy

    parser = argparse.ArgumentParser(prog="metaedge")
    deploy.add_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["deploy", "--target", "jetson-orin-nano", "--artifact", str(artifact), "--out", str(tmp_path / "j")])
    assert deploy.run(args) == 0
    assert "jetson-orin-nano" in capsys.readouterr().out
    assert (tmp_path / "j" / "Dockerfile").is_file()
