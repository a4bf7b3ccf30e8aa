"""Load test of the real runner (``python -m metaedge.deploy.runtime serve``) on loopback.

64 concurrent keep-alive clients send 5,000 requests, one in five malformed (empty body, broken
JSON, ragged lists, wrong shape, NaN, overflow, bad .npy, float64, wrong Content-Type), while 100
slow sockets hold half-sent requests open. Asserts: no failed connection, every malformed request
a 4xx, every good answer equal to ONNX Runtime's on the host, the server healthy afterwards and
SIGTERM exiting 0. Bounded: fixed request count, a deadline on the run, timeouts on every socket.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from _docker import REPO, make_tiny_artifact, ort_reference

pytest.importorskip("onnxruntime")

from metaedge.deploy.runtime.loadgen import make_jobs, open_slow_sockets, run_load, summary  # noqa: E402

REQUESTS, CLIENTS, SLOW = 5000, 64, 100
RUN_DEADLINE_S = 120  # far above the ~10 s a loaded 2-core box needs; a hang fails instead of stalling


@pytest.fixture(scope="module")
def artifact(tmp_path_factory) -> Path:
    return make_tiny_artifact(tmp_path_factory.mktemp("load") / "art")


def _serve(artifact: Path, *flags: str) -> tuple[subprocess.Popen, str, int]:
    p = subprocess.Popen(
        [sys.executable, "-m", "metaedge.deploy.runtime", "serve", "--artifact", str(artifact), "--port", "0", *flags],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=REPO,
    )
    line = p.stdout.readline()  # printed once the model is loaded and warm
    if "serving" not in line:
        p.kill()
        raise AssertionError(f"server did not start: {line!r} {p.stderr.read()[-2000:]}")
    host, port = line.strip().rsplit("/", 1)[1].split(":")
    return p, host, int(port)


def _get(host: str, port: int, path: str) -> tuple[int, dict]:
    with urllib.request.urlopen(f"http://{host}:{port}{path}", timeout=10) as resp:
        return resp.status, json.loads(resp.read())


@pytest.mark.parametrize("batching", [False, True], ids=["batching-off", "batching-on"])
def test_load_no_lost_requests(artifact, batching):
    flags = ("--max-batch", "8", "--batch-timeout-ms", "2") if batching else ()
    p, host, port = _serve(artifact, *flags)
    try:
        slow = open_slow_sockets(host, port, SLOW)
        jobs = make_jobs((3, 16, 16), REQUESTS, malformed=0.2, seed=int(batching))
        t0 = time.monotonic()
        replies = run_load(host, port, jobs, clients=CLIENTS, timeout=30, deadline_s=RUN_DEADLINE_S)
        stats = summary(jobs, replies, time.monotonic() - t0)
        print(f"\nload ({'batching on' if batching else 'batching off'}): {stats}")

        failed = [(j.kind, r.error) for j, r in zip(jobs, replies) if r.status is None]
        assert not failed, f"{len(failed)} failed connections, e.g. {failed[:3]}"
        bad = [(j.kind, r.status) for j, r in zip(jobs, replies) if j.kind != "good" and not 400 <= r.status < 500]
        assert not bad, f"malformed requests not answered 4xx: {bad[:5]}"
        good = [(j, r) for j, r in zip(jobs, replies) if j.kind == "good"]
        assert [r.status for _, r in good] == [200] * len(good), "good requests must all succeed"

        # Every answer equals ONNX Runtime on the host (one reference run over all good inputs).
        want = ort_reference(artifact, np.concatenate([j.x for j, _ in good]))
        got = np.concatenate([np.asarray(json.loads(r.body)["logits"], np.float32) for _, r in good])
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)

        # Still healthy, the slow sockets still open (they hold a coroutine, not a worker).
        status, health = _get(host, port, "/healthz")
        assert status == 200 and health["status"] == "ok"
        _, metrics = _get(host, port, "/metrics")
        assert metrics["open_connections"] >= SLOW
        assert metrics["server_errors"] == 0 and metrics["rejected"] == 0
        assert metrics["ok"] == len(good) and metrics["client_errors"] == REQUESTS - len(good)
        sizes = [int(k) for k in metrics["batches"]["sizes"]]
        if batching:
            assert max(sizes) > 3, "concurrent requests were never gathered into one batch"
        else:
            assert max(sizes) <= 3  # each request ran alone (1-3 samples each)
        for s in slow:
            s.close()
    finally:
        p.send_signal(signal.SIGTERM)
        try:
            rc = p.wait(timeout=20)
        except subprocess.TimeoutExpired:
            p.kill()
            raise
    assert rc == 0, p.stderr.read()[-2000:]


def test_sigterm_answers_in_flight_requests_then_exits_0(artifact):
    """SIGTERM while a request waits in the batcher (800 ms for company): it is answered, then exit 0."""
    from concurrent.futures import ThreadPoolExecutor

    from _docker import npy_bytes, post

    p, host, port = _serve(artifact, "--max-batch", "64", "--batch-timeout-ms", "800")
    try:
        x = np.random.default_rng(5).standard_normal((1, 3, 16, 16)).astype(np.float32)
        with ThreadPoolExecutor(1) as pool:
            fut = pool.submit(post, f"http://{host}:{port}/infer", npy_bytes(x), "application/x-npy")
            deadline = time.monotonic() + 10
            while _get(host, port, "/metrics")[1]["queue"]["in_flight"] < 1:  # admitted, waiting for a batch
                assert time.monotonic() < deadline, "request never reached the server"
                time.sleep(0.02)
            p.send_signal(signal.SIGTERM)
            status, body = fut.result(timeout=15)
        assert status == 200
        np.testing.assert_allclose(np.array(body["logits"]), ort_reference(artifact, x), rtol=1e-5, atol=1e-6)
        assert p.wait(timeout=15) == 0
        with pytest.raises(OSError):  # no longer listening
            _get(host, port, "/healthz")
    finally:
        if p.poll() is None:
            p.kill()
