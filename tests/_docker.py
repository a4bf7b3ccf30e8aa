"""Test helpers for the Docker tests (and a tiny exported artifact shared by the deploy tests).

The engine is real: ``tools/docker/setup.sh`` installs it, ``start_dockerd.sh`` starts a private
dockerd, ``make_base_image.sh`` builds the Debian base images from debootstrap (Docker Hub is not
reachable). Every step is cached, so only the first run pays for it. When any step cannot work here
(not root, no apt, dockerd refuses to start) the caller is skipped with that step's reason.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
import subprocess
import time
import urllib.request
import warnings
from functools import lru_cache
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
TOOLS = REPO / "tools" / "docker"
TORCH_WHEEL = Path("/opt/wheels/torch-2.13.0+cpu-cp311-cp311-manylinux_2_28_x86_64.whl")


def docker_client() -> str:
    # Debian's client has BuildKit built in; a /usr/local/bin client may have no buildx.
    return "/usr/bin/docker" if Path("/usr/bin/docker").exists() else (shutil.which("docker") or "docker")


def _sh(script: str, *args: str, env: dict | None = None, timeout: float = 900) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(TOOLS / script), *args], capture_output=True, text=True, env=env, timeout=timeout)


@lru_cache(maxsize=1)
def _engine() -> tuple[dict | None, str]:
    if os.geteuid() != 0:
        return None, "docker tests need root (apt-get, dockerd)"
    r = _sh("setup.sh")
    if r.returncode != 0:
        return None, f"tools/docker/setup.sh failed: {(r.stderr or r.stdout).strip()[-400:]}"
    r = _sh("start_dockerd.sh", timeout=120)
    if r.returncode != 0:
        return None, f"dockerd cannot start here: {(r.stderr or r.stdout).strip()[-400:]}"
    host = r.stdout.strip().splitlines()[-1].split("=", 1)[1]
    env = {**os.environ, "DOCKER_HOST": host, "DOCKER_BUILDKIT": "1"}
    return env, ""


def docker_env() -> dict:
    """Environment with DOCKER_HOST of the private dockerd, or skip the test with the reason."""
    env, reason = _engine()
    if env is None:
        pytest.skip(reason)
    return env


@lru_cache(maxsize=None)
def _base(arch: str) -> tuple[str | None, str]:
    env = docker_env()
    r = _sh("make_base_image.sh", arch, env=env, timeout=1200)
    if r.returncode != 0:
        return None, f"cannot build the {arch} Debian base image: {(r.stderr or r.stdout).strip()[-400:]}"
    return r.stdout.strip().splitlines()[-1], ""


def base_image(arch: str) -> str:
    """``local/debian:bookworm-<arch>`` (debootstrap + docker import, cached), or skip."""
    if arch == "arm64" and not Path("/proc/sys/fs/binfmt_misc/qemu-aarch64").exists():
        pytest.skip("qemu-aarch64 binfmt handler is not enabled (tools/docker/setup.sh could not enable it)")
    image, reason = _base(arch)
    if image is None:
        pytest.skip(reason)
    return image


def docker(*args: str, env: dict, timeout: float = 900, check: bool = True) -> subprocess.CompletedProcess:
    r = subprocess.run([docker_client(), *args], capture_output=True, text=True, env=env, timeout=timeout)
    if check and r.returncode != 0:
        raise AssertionError(f"docker {' '.join(args[:3])} ... failed ({r.returncode}):\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}")
    return r


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(url: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=2) as resp:
                if resp.status == 200:
                    return
        except Exception as exc:  # connection refused while the server starts
            last = exc
        time.sleep(0.25)
    raise AssertionError(f"{url} did not answer within {timeout}s ({last})")


def make_tiny_artifact(out: Path, channels: int = 3, hw: int = 16, num_classes: int = 5, seed: int = 0) -> Path:
    """Export a tiny CNN to ``out/model.onnx`` (input ``input`` [N,C,H,W], output ``logits``) with a
    schema-1 manifest, a state dict and a stray data file (the bundle must leave the latter out)."""
    import torch

    torch.manual_seed(seed)
    model = torch.nn.Sequential(
        torch.nn.Conv2d(channels, 8, 3, padding=1),
        torch.nn.ReLU(),
        torch.nn.Conv2d(8, 8, 3, padding=1, stride=2),
        torch.nn.ReLU(),
        torch.nn.AdaptiveAvgPool2d(1),
        torch.nn.Flatten(),
        torch.nn.Linear(8, num_classes),
    ).eval()
    out.mkdir(parents=True, exist_ok=True)
    onnx_path = out / "model.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # the TorchScript exporter is deprecated, still exact
        torch.onnx.export(
            model,
            (torch.randn(1, channels, hw, hw),),
            str(onnx_path),
            input_names=["input"],
            output_names=["logits"],
            dynamic_axes={"input": {0: "N"}, "logits": {0: "N"}},
            opset_version=17,
            dynamo=False,
        )
    torch.save(model.state_dict(), out / "model.pt")
    (out / "data").mkdir(exist_ok=True)
    (out / "data" / "train_subset.npy").write_bytes(b"not for the device")
    files = {}
    for name, role in (("model.onnx", "onnx"), ("model.pt", "state_dict")):
        data = (out / name).read_bytes()
        files[name] = {"role": role, "bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    manifest = {
        "schema_version": 1,
        "model": {
            "name": "tinycnn",
            "num_classes": num_classes,
            "input_shape": [1, channels, hw, hw],
            "input_name": "input",
            "output_name": "logits",
            "preprocess": {"mean": [0.5] * channels, "std": [0.25] * channels},
        },
        "data": {"name": "synthetic", "train": "data/train_subset.npy"},
        "export": {"opset": 17},
        "files": files,
    }
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2))
    return out


def ort_reference(artifact: Path, x):
    """ONNX Runtime on the host: what every runner answer is compared with."""
    import onnxruntime

    sess = onnxruntime.InferenceSession(str(artifact / "model.onnx"), providers=["CPUExecutionProvider"])
    return sess.run(None, {"input": x})[0]


def npy_bytes(x) -> bytes:
    import io

    import numpy as np

    buf = io.BytesIO()
    np.save(buf, x, allow_pickle=False)
    return buf.getvalue()


def post(url: str, data: bytes, ctype: str | None, timeout: float = 30) -> tuple[int, dict]:
    """POST and return (status, JSON body), HTTP errors included."""
    import urllib.error

    req = urllib.request.Request(url, data=data, method="POST")
    if ctype:
        req.add_header("Content-Type", ctype)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())
