"""Runtime bundles built and run for real: x86 natively, ARM64 under QEMU emulation.

Both images start from the local debootstrap base (Docker Hub is unreachable here) and install
the runner's pip requirements (cached as a layer, keyed on requirements.txt). Cold, the ARM64
image pays ~1-3 min of emulated apt/pip; warm, both builds are cache hits.
"""

from __future__ import annotations

import glob
import json
import os
import uuid
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from _docker import base_image, docker, docker_client, docker_env, free_port, make_tiny_artifact, npy_bytes, ort_reference, post, wait_http

from metaedge.deploy.bundle import BundleConfig, build_bundle, write_bundle

pytestmark = pytest.mark.slow
onnxruntime = pytest.importorskip("onnxruntime")

# PyPI is reached through a TLS-intercepting proxy here; its CA must be trusted inside the build.
HOST_CA_CERTS = tuple(Path(p) for p in sorted(glob.glob("/usr/local/share/ca-certificates/**/*.crt", recursive=True)))


@pytest.fixture(scope="module")
def artifact(tmp_path_factory) -> Path:
    return make_tiny_artifact(tmp_path_factory.mktemp("dockerrt") / "art")


# onnxruntime >= 1.2x's aarch64 wheel (1.32.0 checked) segfaults while importing under Debian 12's
# qemu-user 7.2 (CPU feature probing); 1.20.1 imports and runs there. Real ARM64 boards are not affected,
# so only this emulated test pins it.
QEMU_SAFE_ORT = "onnxruntime==1.20.1"


def _build(artifact: Path, out: Path, target: str, arch: str, env: dict, tag: str, pins: tuple[str, ...] = ()):
    base = base_image(arch)
    bundle = write_bundle(BundleConfig(target=target, artifact=artifact, out=out, tag=tag, ca_certs=HOST_CA_CERTS, pins=pins))
    build_bundle(bundle, docker=docker_client(), base_image=base, env=env, quiet=True, timeout=1800)
    return bundle


def test_x86_bundle_serves_same_logits_as_host(artifact, tmp_path):
    env = docker_env()
    bundle = _build(artifact, tmp_path / "bundle", "x86", "amd64", env, "metaedge/test-runtime:x86")
    name = f"metaedge-test-{uuid.uuid4().hex[:8]}"
    port = free_port()
    docker("run", "-d", "--name", name, "-p", f"127.0.0.1:{port}:8080", bundle.image, env=env)
    try:
        url = f"http://127.0.0.1:{port}"
        wait_http(url + "/healthz", timeout=60)
        x = np.random.default_rng(7).standard_normal((3, 3, 16, 16)).astype(np.float32)
        want = ort_reference(artifact, x)
        status, body = post(url + "/infer", npy_bytes(x), "application/x-npy")
        assert status == 200, body
        np.testing.assert_allclose(np.array(body["logits"]), want, rtol=1e-5, atol=1e-5)
        assert body["top1"] == np.argmax(want, 1).tolist()
        status, body = post(url + "/infer", json.dumps({"input": x[0].tolist()}).encode(), "application/json")
        assert status == 200 and body["top1"] == [int(np.argmax(want[0]))]
        status, body = post(url + "/infer", npy_bytes(x.astype(np.float64)), "application/x-npy")
        assert status == 400 and "float32" in body["error"]
        with urllib.request.urlopen(url + "/metrics", timeout=10) as resp:
            metrics = json.loads(resp.read())
        assert metrics["ok"] == 2 and metrics["client_errors"] == 1
        user = docker("exec", name, "id", "-u", env=env).stdout.strip()
        assert user != "0", "runtime container must not run as root"
        # Docker's own HEALTHCHECK sees the server (first probe runs at start + interval, so only check it is defined).
        health = docker("inspect", "-f", "{{json .Config.Healthcheck}}", name, env=env).stdout
        assert "healthcheck" in health
    finally:
        logs = docker("logs", name, env=env, check=False)
        docker("rm", "-f", name, env=env, check=False)
    assert "Traceback" not in logs.stdout + logs.stderr


def test_arm64_bundle_runs_under_qemu(artifact, tmp_path):
    env = docker_env()
    bundle = _build(artifact, tmp_path / "bundle", "arm64", "arm64", env, "metaedge/test-runtime:arm64", pins=(QEMU_SAFE_ORT,))
    arch = docker("image", "inspect", "-f", "{{.Architecture}}", bundle.image, env=env).stdout.strip()
    assert arch == "arm64"
    inputs = tmp_path / "in"
    inputs.mkdir()
    x = np.random.default_rng(8).standard_normal((2, 3, 16, 16)).astype(np.float32)
    np.save(inputs / "x.npy", x)
    os.chmod(inputs, 0o755)
    os.chmod(inputs / "x.npy", 0o644)
    # Detached + `docker wait` with a deadline: an emulated process that hangs must not hang the suite.
    name = f"metaedge-test-{uuid.uuid4().hex[:8]}"
    docker(
        "run",
        "-d",
        "--name",
        name,
        "--ulimit",
        "core=0",
        "--platform",
        "linux/arm64",
        "-v",
        f"{inputs}:/in:ro",
        bundle.image,
        "run",
        "--json",
        "/in/x.npy",
        env=env,
    )
    try:
        waited = docker("wait", name, env=env, timeout=600, check=False)
        logs = docker("logs", name, env=env, check=False)
    finally:
        docker("rm", "-f", name, env=env, check=False)
    if "uncaught target signal" in logs.stderr + logs.stdout:
        pytest.xfail(
            f"the aarch64 onnxruntime wheel crashes under this machine's qemu-user "
            f"({(logs.stderr + logs.stdout).strip().splitlines()[-1]}); the image itself built for arm64"
        )
    assert waited.stdout.strip() == "0", logs.stdout + logs.stderr
    out = json.loads(logs.stdout.strip().splitlines()[-1])
    want = ort_reference(artifact, x)
    # Different CPU kernels (NEON vs AVX): close, not bit-identical.
    np.testing.assert_allclose(np.array(out["logits"]), want, rtol=1e-4, atol=1e-4)
    assert out["top1"] == np.argmax(want, 1).tolist()
    machine = docker(
        "run",
        "--rm",
        "--platform",
        "linux/arm64",
        "--entrypoint",
        "python3",
        bundle.image,
        "-c",
        "import platform; print(platform.machine())",
        env=env,
        timeout=120,
    ).stdout.strip()
    assert machine == "aarch64"
