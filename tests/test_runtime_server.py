"""The runner's HTTP server under faults, over real loopback sockets: backlog, bounded queue (503 +
Retry-After), body-size limit before reading, read/idle timeouts, connection cap, readiness,
drain on shutdown, dynamic batching. A fake engine (controllable delay, answers derived from each
input) keeps every case fast and deterministic; the ONNX Runtime model is in test_runtime_load.py.
"""

from __future__ import annotations

import io
import json
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from metaedge.deploy.runtime.config import ServeConfig
from metaedge.deploy.runtime.engines import Engine
from metaedge.deploy.runtime.model import LoadedModel
from metaedge.deploy.runtime.server import InferenceServer
from metaedge.deploy.runtime.spec import ModelSpec

SPEC = ModelSpec("fake", "input", "logits", (1, 3, 4, 4), 5, (0.0, 0.0, 0.0), (1.0, 1.0, 1.0))


class FakeEngine(Engine):
    """logits[i] = the first 5 values of sample i, so a mixed-up batch split shows at once."""

    name = "fake"

    def __init__(self, delay: float = 0.0, limit: int | None = None) -> None:
        super().__init__()
        self.delay, self.limit, self.calls = delay, limit, []

    @property
    def batch_limit(self) -> int | None:
        return self.limit

    def run(self, x: np.ndarray) -> np.ndarray:
        self.calls.append(int(x.shape[0]))
        time.sleep(self.delay)
        return x.reshape(x.shape[0], -1)[:, :5].copy()


def fake_model(delay: float = 0.0, limit: int | None = None) -> LoadedModel:
    return LoadedModel(SPEC, FakeEngine(delay, limit), Path(__file__), "fake", "test engine")


class Running:
    """A server on 127.0.0.1:<free port> served from a thread; stop() drains it."""

    def __init__(self, model: LoadedModel | None, serve: bool = True, **cfg) -> None:
        self.srv = InferenceServer(ServeConfig(host="127.0.0.1", port=0, **cfg), model)
        self.addr = self.srv.server_address
        self.thread = threading.Thread(target=self.srv.serve_forever, daemon=True)
        if serve:
            self.thread.start()

    def stop(self) -> None:
        self.srv.shutdown()
        self.srv.server_close()
        self.thread.join(10)
        assert not self.thread.is_alive()


@pytest.fixture
def running():
    started: list[Running] = []

    def start(model: LoadedModel | None = None, **kw) -> Running:
        r = Running(fake_model() if model is None else model, **kw)
        started.append(r)
        return r

    yield start
    for r in started:
        r.stop()


def npy(x: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, x, allow_pickle=False)
    return buf.getvalue()


def post_bytes(body: bytes, ctype: str = "application/x-npy", path: str = "/infer", extra: str = "") -> bytes:
    return (f"POST {path} HTTP/1.1\r\nHost: t\r\nContent-Type: {ctype}\r\nContent-Length: {len(body)}\r\n{extra}\r\n").encode() + body


def read_response(sock: socket.socket) -> tuple[int, dict, bytes]:
    """(status, lower-case headers, body) of one response; raises on EOF before it is complete."""
    buf = b""
    while b"\r\n\r\n" not in buf:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError(f"closed before a response (got {buf[:80]!r})")
        buf += chunk
    head, rest = buf.split(b"\r\n\r\n", 1)
    lines = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, _, v in (ln.partition(":") for ln in lines[1:])}
    n = int(headers.get("content-length", "0"))
    while len(rest) < n:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("closed mid-body")
        rest += chunk
    return int(lines[0].split()[1]), headers, rest[:n]


def request(addr, data: bytes, timeout: float = 10) -> tuple[int, dict, bytes]:
    with socket.create_connection(addr, timeout=timeout) as s:
        s.sendall(data)
        return read_response(s)


def get(addr, path: str) -> tuple[int, dict, dict]:
    status, headers, body = request(addr, f"GET {path} HTTP/1.1\r\nHost: t\r\n\r\n".encode())
    return status, headers, json.loads(body)


def sample(seed: int, n: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, 3, 4, 4)).astype(np.float32)


def closed_by_server(sock: socket.socket, within: float) -> bool:
    sock.settimeout(within)
    try:
        while True:
            if not sock.recv(65536):
                return True
    except socket.timeout:
        return False
    except ConnectionError:
        return True


# ---------------------------------------------------------------- readiness and lifecycle


def test_healthz_is_503_until_the_model_is_loaded_and_warm(running):
    r = Running(None)
    try:
        status, headers, body = get(r.addr, "/healthz")
        assert (status, body["status"], headers["retry-after"]) == (503, "loading", "1")
        status, headers, _ = request(r.addr, post_bytes(npy(sample(0))))
        assert status == 503 and headers["retry-after"] == "1"
        model = fake_model()
        r.srv.set_model(model)
        assert model.engine.calls, "set_model warms the engine up before turning healthy"
        status, _, body = get(r.addr, "/healthz")
        assert status == 200 and body["status"] == "ok" and body["chosen_by"] == "test engine"
    finally:
        r.stop()


def test_shutdown_drains_in_flight_requests_then_refuses(running):
    r = running(fake_model(delay=0.6))
    x = sample(1)
    with ThreadPoolExecutor(4) as pool:
        futs = [pool.submit(request, r.addr, post_bytes(npy(x))) for _ in range(3)]
        idle = socket.create_connection(r.addr)  # an idle keep-alive client must not hold up the drain
        time.sleep(0.2)
        t0 = time.monotonic()
        r.stop()
        results = [f.result() for f in futs]
    assert time.monotonic() - t0 < 5
    for status, headers, body in results:
        assert status == 200 and headers["connection"] == "close"
        np.testing.assert_array_equal(np.array(json.loads(body)["logits"]), x.reshape(1, -1)[:, :5])
    assert closed_by_server(idle, 2)
    with pytest.raises(OSError):
        request(r.addr, post_bytes(npy(x)), timeout=2)


# ---------------------------------------------------------------- bounded resources


def test_listen_backlog_holds_a_burst_of_connections(running):
    """200 clients connect before the server accepts anything: all sit in the backlog, none is reset."""
    r = running(serve=False, workers=2, queue_limit=256)
    # Under the 1 s SYN retransmit: a connect dropped by a full backlog times out instead of waiting.
    socks = [socket.create_connection(r.addr, timeout=0.8) for _ in range(200)]
    for s in socks:
        s.settimeout(10)
    x = sample(2)
    for s in socks:
        s.sendall(post_bytes(npy(x)))
    r.thread.start()
    statuses = [read_response(s)[0] for s in socks]
    for s in socks:
        s.close()
    assert statuses == [200] * 200


def test_full_queue_answers_503_with_retry_after(running):
    r = running(fake_model(delay=0.3), workers=1, queue_limit=2)
    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(lambda i: request(r.addr, post_bytes(npy(sample(i)))), range(8)))
    statuses = sorted(s for s, _, _ in results)
    assert statuses.count(200) >= 2 and statuses.count(503) >= 1 and set(statuses) <= {200, 503}, statuses
    assert all(h["retry-after"] == "1" for s, h, _ in results if s == 503)
    metrics = get(r.addr, "/metrics")[2]
    assert metrics["rejected"] == statuses.count(503) and metrics["server_errors"] == 0
    assert metrics["queue"]["limit"] == 2 and metrics["queue"]["in_flight"] == 0


def test_body_limit_is_checked_before_reading(running):
    r = running(max_body_bytes=1024)
    with socket.create_connection(r.addr, timeout=5) as s:
        # Claims 1 GB and sends none of it: the answer must not wait for the body.
        s.sendall(b"POST /infer HTTP/1.1\r\nHost: t\r\nContent-Type: application/x-npy\r\nContent-Length: 1000000000\r\n\r\n")
        t0 = time.monotonic()
        status, headers, body = read_response(s)
        assert time.monotonic() - t0 < 2
    assert status == 413 and headers["connection"] == "close" and "1024-byte limit" in json.loads(body)["error"]
    assert request(r.addr, post_bytes(npy(sample(3))))[0] == 200


def test_read_timeout_frees_slow_sockets(running):
    r = running(read_timeout_s=0.5)
    slow = []
    for i in range(20):
        s = socket.create_connection(r.addr, timeout=5)
        s.sendall(b"POST /infer HTTP/1.1\r\nHost: t\r\nContent-Le" if i % 2 else b'POST /infer HTTP/1.1\r\nHost: t\r\nContent-Length: 500\r\n\r\n{"inp')
        slow.append(s)
    assert request(r.addr, post_bytes(npy(sample(4))))[0] == 200  # serving meanwhile
    for s in slow:
        status, _, body = read_response(s)
        assert status == 408 and "read timeout" in json.loads(body)["error"]
        assert closed_by_server(s, 2)
        s.close()
    metrics = get(r.addr, "/metrics")[2]
    assert metrics["connections"]["read_timeout"] == 20 and metrics["open_connections"] == 1


def test_idle_keepalive_connection_is_closed(running):
    r = running(idle_timeout_s=0.3)
    with socket.create_connection(r.addr, timeout=5) as s:
        s.sendall(post_bytes(npy(sample(5))))
        status, headers, _ = read_response(s)
        assert status == 200 and headers["connection"] == "keep-alive"
        assert closed_by_server(s, 3)


def test_connection_cap_answers_503(running):
    r = running(max_connections=4)
    held = [socket.create_connection(r.addr, timeout=5) for _ in range(4)]
    time.sleep(0.2)  # let the server accept them
    status, headers, _ = request(r.addr, post_bytes(npy(sample(6))))
    assert status == 503 and headers["retry-after"] == "1"
    for s in held:
        s.close()
    time.sleep(0.2)
    assert request(r.addr, post_bytes(npy(sample(6))))[0] == 200


# ---------------------------------------------------------------- protocol


def test_keepalive_expect_continue_and_protocol_errors(running):
    r = running()
    x = sample(7)
    with socket.create_connection(r.addr, timeout=5) as s:
        for _ in range(50):  # one connection, many requests
            s.sendall(post_bytes(npy(x)))
            assert read_response(s)[0] == 200
        body = npy(x)  # curl sends Expect: 100-continue for bodies over 1 KB and waits for the 100
        s.sendall(f"POST /infer HTTP/1.1\r\nHost: t\r\nContent-Type: application/x-npy\r\nContent-Length: {len(body)}\r\nExpect: 100-continue\r\n\r\n".encode())
        assert s.recv(25).startswith(b"HTTP/1.1 100 Continue")
        s.sendall(body)
        assert read_response(s)[0] == 200
        s.sendall(post_bytes(b"{broken", "application/json"))  # a 400 keeps the connection (body was read)
        status, headers, _ = read_response(s)
        assert status == 400 and headers["connection"] == "keep-alive"
        s.sendall(post_bytes(b"{}", "application/json", path="/nope"))
        assert read_response(s)[0] == 404
        s.sendall(post_bytes(npy(x), extra="Connection: close\r\n"))
        status, headers, _ = read_response(s)
        assert status == 200 and headers["connection"] == "close" and closed_by_server(s, 2)
    cases = {
        b"PUT /infer HTTP/1.1\r\nHost: t\r\nContent-Length: 0\r\n\r\n": 405,
        b"POST /infer HTTP/1.1\r\nHost: t\r\n\r\n": 411,
        b"POST /infer HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n": 411,
        b"POST /infer HTTP/1.1\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd": 400,
        b"POST /infer HTTP/1.1\r\nContent-Length: -1\r\n\r\n": 400,
        b"garbage\r\n\r\n": 400,
        b"GET / HTTP/2.0\r\n\r\n": 505,
        b"GET /healthz HTTP/1.1\r\n" + b"X-Pad: " + b"a" * 40000 + b"\r\n\r\n": 431,
    }
    for raw, want in cases.items():
        assert request(r.addr, raw)[0] == want, raw[:40]
    status, _, metrics = get(r.addr, "/metrics")
    assert status == 200 and metrics["server_errors"] == 0 and metrics["stages"]["queue_ms"]["p50_ms"] >= 0


# ---------------------------------------------------------------- dynamic batching


def test_dynamic_batching_gathers_and_splits(running):
    model = fake_model()
    r = running(model, workers=1, max_batch=8, batch_timeout_ms=50)
    xs = [sample(100 + i, n=1 + i % 3) for i in range(12)]
    model.engine.calls.clear()
    with ThreadPoolExecutor(12) as pool:
        results = list(pool.map(lambda x: request(r.addr, post_bytes(npy(x))), xs))
    for x, (status, _, body) in zip(xs, results):
        answer = json.loads(body)
        assert status == 200
        np.testing.assert_array_equal(np.array(answer["logits"], np.float32), x.reshape(len(x), -1)[:, :5])
    assert max(model.engine.calls) > 1 and max(model.engine.calls) <= 8
    assert sum(model.engine.calls) == sum(len(x) for x in xs)
    metrics = get(r.addr, "/metrics")[2]
    assert metrics["batching"]["max_batch"] == 8 and metrics["batches"]["mean_requests"] > 1
    assert max(int(k) for k in metrics["batches"]["sizes"]) > 1
    assert {"queue_ms", "inference_ms", "total_ms"} <= set(metrics["stages"])


def test_batching_is_off_for_a_static_batch_model(running):
    model = fake_model(limit=1)
    r = running(model, max_batch=8)
    assert r.srv.batching["max_batch"] == 1 and "fixed batch of 1" in r.srv.batching["note"]
    assert request(r.addr, post_bytes(npy(sample(9))))[0] == 200


def test_large_bodies_are_read_whole_and_decoded_off_the_loop(running):
    r = running()
    big = sample(10, n=64)  # the largest batch a request may carry, as JSON (~1 MB)
    junk = b"\x93NUMPY" + bytes(4 << 20)  # 4 MB that is not an array
    with socket.create_connection(r.addr, timeout=10) as s:
        s.sendall(post_bytes(json.dumps({"input": big.tolist()}).encode(), "application/json"))
        status, _, body = read_response(s)
        assert status == 200
        np.testing.assert_allclose(np.array(json.loads(body)["logits"]), big.reshape(64, -1)[:, :5], rtol=1e-6)
        s.sendall(post_bytes(junk))
        status, headers, body = read_response(s)
        assert status == 400 and headers["connection"] == "keep-alive" and "not a valid .npy" in json.loads(body)["error"]
        s.sendall(post_bytes(npy(sample(11, n=65))))
        assert read_response(s)[0] == 400  # over the per-request batch limit
