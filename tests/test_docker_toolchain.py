"""The toolchain image (Dockerfile at the repo root) builds on the debootstrap base and runs `metaedge`.

Cold (no build cache): apt + torch wheel + TVM/onnx deps, a few minutes. Warm: only the
`COPY . /src` layer reruns when metaedge changed (seconds).
"""

from __future__ import annotations

import glob
import shutil
from pathlib import Path

import pytest

from _docker import REPO, TORCH_WHEEL, base_image, docker, docker_env

pytestmark = pytest.mark.slow

IMAGE = "metaedge/toolchain:test"


def _context(tmp: Path) -> Path:
    """The repo's build context, plus the local CPU torch wheel (PyTorch's index is unreachable here)
    and this machine's extra CA certificates (PyPI goes through a TLS-intercepting proxy)."""
    ctx = tmp / "ctx"
    ctx.mkdir()
    for name in ("Dockerfile", ".dockerignore", "pyproject.toml", "constraints.txt", "README.md", "LICENSE"):
        if (REPO / name).exists():
            shutil.copy2(REPO / name, ctx / name)
    shutil.copytree(REPO / "metaedge", ctx / "metaedge", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    (ctx / "wheels").mkdir()
    try:
        (ctx / "wheels" / TORCH_WHEEL.name).hardlink_to(TORCH_WHEEL)
    except OSError:
        shutil.copy2(TORCH_WHEEL, ctx / "wheels" / TORCH_WHEEL.name)
    certs = ctx / "tools" / "docker" / "certs"
    certs.mkdir(parents=True)
    for crt in glob.glob("/usr/local/share/ca-certificates/**/*.crt", recursive=True):
        shutil.copy2(crt, certs / Path(crt).name)
    return ctx


def test_toolchain_image_builds_and_runs_metaedge(tmp_path):
    env = docker_env()
    if not TORCH_WHEEL.exists():
        pytest.skip(f"{TORCH_WHEEL} is missing and PyTorch's CPU index is unreachable from this machine")
    base = base_image("amd64")
    ctx = _context(tmp_path)
    docker("build", "--platform", "linux/amd64", "--build-arg", f"BASE_IMAGE={base}", "-t", IMAGE, str(ctx), env=env, timeout=1800)
    r = docker("run", "--rm", IMAGE, "--help", env=env, timeout=120)
    assert "usage" in r.stdout.lower() and "metaedge" in r.stdout.lower()
    # Non-root, CPU-only torch, TVM and the cross compiler present.
    check = (
        "import os, shutil, torch, onnx, onnxruntime, tvm; "
        "assert os.getuid() != 0; assert torch.version.cuda is None, torch.__version__; "
        "assert shutil.which('aarch64-linux-gnu-g++'); print('ok', torch.__version__, tvm.__version__)"
    )
    r = docker("run", "--rm", "--entrypoint", "python", IMAGE, "-c", check, env=env, timeout=120)
    assert r.stdout.startswith("ok 2.13.0+cpu"), r.stdout
