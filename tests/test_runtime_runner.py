"""Device runtime (metaedge.deploy.runtime) without Docker: loading, validation, CLI, HTTP server."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from _docker import REPO, make_tiny_artifact, npy_bytes, ort_reference, post

onnxruntime = pytest.importorskip("onnxruntime")


@pytest.fixture(scope="module")
def artifact(tmp_path_factory) -> Path:
    return make_tiny_artifact(tmp_path_factory.mktemp("art") / "out")


@pytest.fixture(scope="module")
def gray_artifact(tmp_path_factory) -> Path:
    return make_tiny_artifact(tmp_path_factory.mktemp("gray") / "out", channels=1, hw=12, num_classes=3)


# ---------------------------------------------------------------- torch-free import

BLOCK_TORCH = r"""
import sys
class Block:
    def find_spec(self, name, path=None, target=None):
        if name == "torch" or name.startswith("torch."):
            raise ImportError("torch is blocked in this test")
sys.meta_path.insert(0, Block())
import metaedge.deploy.runtime as rt
import metaedge.deploy.runtime.__main__, metaedge.deploy.runtime.server
m = rt.load_model(sys.argv[1])
import numpy as np
logits, _ = m.infer(np.zeros((2,) + m.spec.chw, np.float32))
assert logits.shape == (2, 5), logits.shape
bad = [k for k in sys.modules if k == "torch" or k.startswith("torch.")]
assert not bad, bad
print("torch-free ok")
"""


def test_runtime_imports_and_runs_without_torch(artifact):
    r = subprocess.run([sys.executable, "-c", BLOCK_TORCH, str(artifact)], capture_output=True, text=True, cwd=REPO)
    assert r.returncode == 0, r.stderr
    assert "torch-free ok" in r.stdout


# ---------------------------------------------------------------- model + validation


def test_load_and_parity_with_onnxruntime(artifact):
    from metaedge.deploy.runtime import load_model

    m = load_model(artifact)
    assert m.backend == "onnxruntime" and m.spec.input_shape == (1, 3, 16, 16)
    x = np.random.default_rng(0).standard_normal((4, 3, 16, 16)).astype(np.float32)
    logits, ms = m.infer(m.spec.validate(x))
    np.testing.assert_allclose(logits, ort_reference(artifact, x), rtol=1e-5, atol=1e-6)
    assert ms > 0


@pytest.mark.parametrize(
    "x, message",
    [
        (np.zeros((1, 3, 16, 16), np.float64), "dtype must be float32"),
        (np.zeros((1, 3, 16, 16), np.int64), "dtype must be float32"),
        (np.zeros((1, 3, 8, 8), np.float32), "shape must be [N, 3, 16, 16]"),
        (np.zeros((3, 16), np.float32), "shape must be"),
        (np.zeros((0, 3, 16, 16), np.float32), "batch size"),
        (np.full((1, 3, 16, 16), np.nan, np.float32), "NaN"),
    ],
)
def test_validate_rejects(artifact, x, message):
    from metaedge.deploy.runtime import InputError, load_model

    spec = load_model(artifact).spec
    with pytest.raises(InputError, match=None) as info:
        spec.validate(x)
    assert message in str(info.value)


def test_single_sample_gets_batch_dim(artifact):
    from metaedge.deploy.runtime import load_model

    spec = load_model(artifact).spec
    assert spec.validate(np.zeros((3, 16, 16), np.float32)).shape == (1, 3, 16, 16)


def test_corrupt_model_file_is_refused(artifact, tmp_path):
    import shutil

    from metaedge.deploy.runtime import load_model
    from metaedge.errors import MetaedgeError

    copy = tmp_path / "a"
    shutil.copytree(artifact, copy)
    with open(copy / "model.onnx", "ab") as fh:
        fh.write(b"\0")
    with pytest.raises(MetaedgeError, match="sha256"):
        load_model(copy)


def test_image_preprocess_matches_manifest(gray_artifact, tmp_path):
    from PIL import Image

    from metaedge.deploy.runtime import load_model
    from metaedge.deploy.runtime.inputs import load_input_file

    m = load_model(gray_artifact)
    img = Image.fromarray((np.arange(24 * 30) % 256).astype(np.uint8).reshape(24, 30), "L").convert("RGB")
    img.save(tmp_path / "x.png")
    x = load_input_file(tmp_path / "x.png", m.spec)
    assert x.shape == (1, 1, 12, 12) and x.dtype == np.float32
    expected = np.asarray(img.convert("L").resize((12, 12), Image.BILINEAR), np.float32) / 255.0
    np.testing.assert_allclose(x[0, 0], (expected - 0.5) / 0.25, rtol=1e-6)


# ---------------------------------------------------------------- CLI


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "metaedge.deploy.runtime", *args], capture_output=True, text=True, cwd=REPO)


def test_cli_run_npy_and_image(artifact, tmp_path):
    from PIL import Image

    x = np.random.default_rng(1).standard_normal((2, 3, 16, 16)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    Image.new("RGB", (20, 20), (10, 200, 30)).save(tmp_path / "x.png")
    r = _cli("run", "--artifact", str(artifact), "--json", str(tmp_path / "x.npy"), str(tmp_path / "x.png"))
    assert r.returncode == 0, r.stderr
    lines = [json.loads(line) for line in r.stdout.splitlines()]
    np.testing.assert_allclose(np.array(lines[0]["logits"]), ort_reference(artifact, x), rtol=1e-5, atol=1e-6)
    assert lines[0]["top1"] == np.argmax(ort_reference(artifact, x), 1).tolist()
    assert len(lines[1]["top1"]) == 1


def test_cli_run_bad_input_exits_2(artifact, tmp_path):
    np.save(tmp_path / "bad.npy", np.zeros((1, 3, 4, 4), np.float32))
    r = _cli("run", "--artifact", str(artifact), str(tmp_path / "bad.npy"))
    assert r.returncode == 2 and "shape must be" in r.stderr
    r = _cli("run", "--artifact", str(tmp_path / "nowhere"), str(tmp_path / "bad.npy"))
    assert r.returncode == 2 and "manifest.json" in r.stderr and "Traceback" not in r.stderr


# ---------------------------------------------------------------- HTTP server


@pytest.fixture(scope="module")
def server(artifact):
    from metaedge.deploy.runtime import load_model
    from metaedge.deploy.runtime.server import make_server

    srv = make_server(load_model(artifact), "127.0.0.1", 0)
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    yield srv
    srv.shutdown()
    srv.server_close()


def test_http_infer_json_and_npy(server, artifact):
    x = np.random.default_rng(2).standard_normal((3, 3, 16, 16)).astype(np.float32)
    want = ort_reference(artifact, x)
    status, body = post(server.url + "/infer", json.dumps({"input": x.tolist()}).encode(), "application/json")
    assert status == 200, body
    np.testing.assert_allclose(np.array(body["logits"]), want, rtol=1e-5, atol=1e-5)
    assert body["top1"] == np.argmax(want, 1).tolist() and body["shape"] == [3, 5]
    status, body = post(server.url + "/infer", npy_bytes(x), "application/x-npy")
    assert status == 200, body
    np.testing.assert_allclose(np.array(body["logits"]), want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    "data, ctype, message",
    [
        (b"{not json", "application/json", "not valid JSON"),
        (b'{"x": 1}', "application/json", '"input"'),
        (b'{"input": "abc"}', "application/json", "nested list"),
        (b'{"input": [[1, 2], [3]]}', "application/json", "rectangular"),
        (b'{"input": [1, 2, 3]}', "application/json", "shape must be"),
        (b"\x93NUMPY garbage", "application/x-npy", "not a valid .npy"),
        (b"", "application/x-npy", "empty body"),
        (None, "application/x-npy", "dtype must be float32"),
        (b"hello", "text/plain", "Content-Type"),
    ],
)
def test_http_bad_input_is_400(server, data, ctype, message):
    if data is None:
        data = npy_bytes(np.zeros((1, 3, 16, 16), np.float64))
    status, body = post(server.url + "/infer", data, ctype)
    assert status in (400, 415), body
    assert message in body["error"]


def test_http_health_metrics_and_survival(server):
    with urllib.request.urlopen(server.url + "/healthz", timeout=5) as resp:
        health = json.loads(resp.read())
    assert health["status"] == "ok" and health["backend"] == "onnxruntime" and health["input_shape"] == [1, 3, 16, 16]
    post(server.url + "/infer", b"junk", "application/x-npy")
    status, _ = post(server.url + "/infer", npy_bytes(np.zeros((1, 3, 16, 16), np.float32)), "application/x-npy")
    assert status == 200  # still serving after bad requests
    with urllib.request.urlopen(server.url + "/metrics", timeout=5) as resp:
        metrics = json.loads(resp.read())
    assert metrics["ok"] >= 1 and metrics["client_errors"] >= 1 and metrics["server_errors"] == 0
    assert {"p50_ms", "p90_ms", "p99_ms"} <= set(metrics["inference_ms"])
    status, body = post(server.url + "/nope", b"", "application/json")
    assert status == 404


def test_http_concurrent_requests(server, artifact):
    from concurrent.futures import ThreadPoolExecutor

    xs = [np.random.default_rng(i).standard_normal((1, 3, 16, 16)).astype(np.float32) for i in range(16)]
    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(lambda x: post(server.url + "/infer", npy_bytes(x), "application/x-npy"), xs))
    for x, (status, body) in zip(xs, results):
        assert status == 200
        np.testing.assert_allclose(np.array(body["logits"]), ort_reference(artifact, x), rtol=1e-5, atol=1e-6)


def test_cli_serve_subprocess(artifact):
    """The real entry point: binds, prints its URL, answers, stops on SIGTERM."""
    p = subprocess.Popen(
        [sys.executable, "-m", "metaedge.deploy.runtime", "serve", "--artifact", str(artifact), "--port", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=REPO,
    )
    try:
        line = p.stdout.readline()
        assert "serving tinycnn (onnxruntime) on http://127.0.0.1:" in line, line + p.stderr.read()
        url = line.strip().rsplit(" ", 1)[1]
        status, body = post(url + "/infer", npy_bytes(np.zeros((3, 16, 16), np.float32)), "application/x-npy")
        assert status == 200 and len(body["top1"]) == 1
    finally:
        p.terminate()
        assert p.wait(timeout=10) == 0


# ---------------------------------------------------------------- HTTP profiling client + plot


def test_http_runner_against_server(server, artifact, tmp_path):
    from metaedge.deploy.measure.base import MeasureInput
    from metaedge.deploy.measure.http import HttpRunner, HttpRunnerConfig
    from metaedge.latency import TimingConfig
    from metaedge.report.plots import plot_latency

    runner = HttpRunner(HttpRunnerConfig(server.url, TimingConfig(warmup=2, repeats=15)))
    results = runner.run([MeasureInput(None, batch=1), MeasureInput(None, batch=4)])
    assert [r.detail["batch"] for r in results] == [1, 4]
    for r in results:
        assert r.latency.repeats == 15 and r.latency.p50_ms > 0 and r.detail["throughput_sps"] > 0
        assert r.detail["server"] is not None and r.detail["server"]["p50_ms"] <= r.latency.p50_ms
        assert r.detail["payload_bytes"] > 4 * r.detail["batch"] * 3 * 16 * 16
        assert len(r.samples_ms) == 15 and r.measured_on.startswith("http://127.0.0.1:")
    png = plot_latency({f"http b{r.detail['batch']}": r.samples_ms for r in results}, tmp_path / "lat.png", title="tinycnn")
    # the served model computes what ONNX Runtime computes on the artifact, under the fp32 parity rule
    from metaedge.parity import compare

    x = np.random.default_rng(3).standard_normal((3, 1, 3, 16, 16)).astype(np.float32)
    res = runner.measure(MeasureInput(None, x))
    assert res.outputs.shape[:2] == (3, 1) and res.latency.repeats == 15
    assert compare(ort_reference(artifact, x.reshape(3, 3, 16, 16)), res.outputs.reshape(3, -1)).passed
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_http_runner_unreachable_is_user_error():
    from _docker import free_port

    from metaedge.deploy.measure.base import MeasureInput
    from metaedge.deploy.measure.http import HttpRunner, HttpRunnerConfig
    from metaedge.errors import MetaedgeError

    with pytest.raises(MetaedgeError, match="cannot reach"):
        HttpRunner(HttpRunnerConfig(f"http://127.0.0.1:{free_port()}")).measure(MeasureInput(None))


def test_cli_profile_url_and_local(server, artifact, tmp_path):
    from metaedge.cli.main import main

    out_json, out_png = tmp_path / "p.json", tmp_path / "p.png"
    rc = main(
        [
            "profile",
            str(artifact),
            "--url",
            server.url,
            "--repeats",
            "8",
            "--warmup",
            "1",
            "--batch-sizes",
            "1,2",
            "--json",
            str(out_json),
            "--plot",
            str(out_png),
        ]
    )
    assert rc == 0
    results = json.loads(out_json.read_text())["results"]
    assert [(r["source"].split("/")[0], r["batch"]) for r in results] == [("ort", 1), ("ort", 2), ("http", 1), ("http", 2)]
    for r in results:
        assert r["latency"]["repeats"] == 8 and len(r["samples_ms"]) == 8 and r["throughput_sps"] > 0
        assert r["model_bytes"] == (artifact / "model.onnx").stat().st_size
        assert r["peak_rss_mb"] and r["peak_rss_mb"] > 1
    assert results[2]["server_latency"]["p50_ms"] > 0
    assert out_png.stat().st_size > 1000


def test_cli_profile_keeps_original_form(artifact, capsys):
    from metaedge.cli.main import main

    assert main(["profile", str(artifact / "model.onnx"), "--repeats", "5"]) == 0
    out = capsys.readouterr().out
    # One whole result line, whatever the length of pytest's temporary path.
    result = [line for line in out.splitlines() if "onnxruntime 1 thread(s): p50" in line]
    assert len(result) == 1 and result[0].startswith(str(artifact / "model.onnx")), out
    assert result[0].endswith("over 5 runs"), out
    assert main(["profile"]) == 2
