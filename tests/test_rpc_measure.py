"""Remote measurement through a real TVM RPC tracker and servers on 127.0.0.1 (tools/rpc_server.py):
remote timing with parity, two devices measured in parallel, a direct server, clear errors when a
device is missing or drops, and the on-disk latency cache."""

from __future__ import annotations

import json
import threading
import time
from dataclasses import replace

import numpy as np
import pytest
from test_backend_tvm import export_tiny_cnn  # noqa: E402

from metaedge.deploy.backends.base import get_backend
from metaedge.deploy.backends.onnxruntime import OrtRunner
from metaedge.deploy.measure.base import MeasureInput, NotMeasurable
from metaedge.deploy.measure.cache import LatencyCache
from metaedge.deploy.measure.rpc import RpcRunner, RpcRunnerConfig
from metaedge.errors import MetaedgeError
from metaedge.latency import LatencyStats, TimingConfig
from metaedge.targets import rpc

FAST = TimingConfig(warmup=2, repeats=10)
KEY = "x86-test"


def _runner(device: str, **kw) -> RpcRunner:
    return RpcRunner(RpcRunnerConfig.for_device(device, FAST, **kw))


def _stop(proc) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(10)
        except Exception:  # noqa: BLE001
            proc.kill()


@pytest.fixture(scope="module")
def tracker():
    proc, port = rpc.start_local_tracker(port=9390)
    yield port
    _stop(proc)


@pytest.fixture(scope="module")
def two_servers(tracker):
    procs = [rpc.start_local_server(tracker, KEY, port=9400 + 20 * i)[0] for i in range(2)]
    rpc.wait_for_servers(f"127.0.0.1:{tracker}/{KEY}", 2)
    yield f"127.0.0.1:{tracker}/{KEY}"
    for p in procs:
        _stop(p)


@pytest.fixture(scope="module")
def x86_lib(tmp_path_factory):
    d = tmp_path_factory.mktemp("rpc")
    onnx_path = export_tiny_cnn(d / "model.onnx")
    return onnx_path, get_backend("tvm").compile(onnx_path, "x86", d / "tvm")


def test_parse_device():
    assert rpc.parse_device("10.0.0.2:9190/rpi4") == rpc.DeviceSpec("10.0.0.2", 9190, "rpi4")
    assert rpc.parse_device("127.0.0.1:9090") == rpc.DeviceSpec("127.0.0.1", 9090, None)
    for bad in ("rpi4", "host:port/key", "host:9190/", ":9190/k"):
        with pytest.raises(MetaedgeError, match="tracker-host:port/key"):
            rpc.parse_device(bad)


def test_remote_measure_with_parity(two_servers, x86_lib):
    onnx_path, c = x86_lib
    x = np.random.default_rng(0).standard_normal((3, 1, 3, 32, 32), dtype=np.float32)
    res = _runner(two_servers).measure(MeasureInput(c, x, tag="tiny"))
    assert isinstance(res.latency, LatencyStats) and res.latency.repeats == FAST.repeats
    assert res.latency.p50_ms <= res.latency.p90_ms <= res.latency.p99_ms
    assert res.measured_on == two_servers and res.tag == "tiny"
    ref = np.stack([OrtRunner(onnx_path).run(s) for s in x])
    np.testing.assert_allclose(res.outputs, ref, atol=1e-4)


def test_parallel_devices(two_servers, x86_lib, monkeypatch):
    _, c = x86_lib
    # A server re-registers with the tracker a moment after the previous test's session ends.
    rpc.wait_for_servers(two_servers, 2)
    assert rpc.free_servers(two_servers) == 2
    seen_threads: set[str] = set()
    orig = RpcRunner.measure_in

    def spy(self, sess, inp):
        seen_threads.add(threading.current_thread().name)
        return orig(self, sess, inp)

    monkeypatch.setattr(RpcRunner, "measure_in", spy)
    results = _runner(two_servers).run([MeasureInput(c, tag=str(i)) for i in range(6)])
    assert [r.tag for r in results] == [str(i) for i in range(6)]  # input order, whichever device ran it
    assert all(r.latency.repeats == FAST.repeats and r.outputs is None for r in results)
    assert len(seen_threads) == 2  # one worker (and session) per device


def test_direct_server(x86_lib):
    _, c = x86_lib
    proc, port = rpc.start_local_server(None, port=9460)
    try:
        x = np.random.default_rng(0).standard_normal((1, 1, 3, 32, 32), dtype=np.float32)
        res = _runner(f"127.0.0.1:{port}").measure(MeasureInput(c, x))
        assert res.outputs.shape == (1, 1, 10)
    finally:
        _stop(proc)


def test_unknown_key_times_out_with_clear_error(tracker, x86_lib):
    _, c = x86_lib
    t0 = time.time()
    with pytest.raises(MetaedgeError, match="did not answer within 3 s while opening a session"):
        _runner(f"127.0.0.1:{tracker}/no-such-device", connect_timeout_s=3).measure(MeasureInput(c))
    assert time.time() - t0 < 10


def test_nothing_listening(x86_lib):
    _, c = x86_lib
    with pytest.raises(MetaedgeError, match="127.0.0.1:9"):
        _runner("127.0.0.1:9", connect_timeout_s=5).measure(MeasureInput(c))


def test_device_dropping_mid_session(tracker, x86_lib):
    """A server killed while the session is open: the next remote call fails with one clear line."""
    _, c = x86_lib
    key = "dropper"
    proc, _ = rpc.start_local_server(tracker, key, port=9480)
    try:
        rpc.wait_for_servers(f"127.0.0.1:{tracker}/{key}", 1)
        sess = rpc.connect(f"127.0.0.1:{tracker}/{key}", timeout_s=30)
        proc.kill()
        proc.wait(10)
        with pytest.raises(MetaedgeError, match="dropper"):
            _runner(f"127.0.0.1:{tracker}/{key}", step_timeout_s=20).measure_in(sess, MeasureInput(c))
    finally:
        _stop(proc)


def test_wrong_artifacts_are_refused_before_connecting(x86_lib, tmp_path):
    onnx_path, c = x86_lib
    with pytest.raises(MetaedgeError, match="does not exist"):
        _runner("127.0.0.1:9190/k").measure(MeasureInput(replace(c, path=tmp_path / "missing.so")))
    ort = get_backend("onnxruntime").compile(onnx_path, "x86", tmp_path / "ort")
    with pytest.raises(NotMeasurable, match="onnxruntime cannot be measured over TVM RPC"):
        _runner("127.0.0.1:9190/k").measure(MeasureInput(ort))


def test_latency_cache(tmp_path):
    cache = LatencyCache(tmp_path / "c" / "latency.json")
    assert cache.get("abc", "x86", "tvm") is None
    lat = LatencyStats(1.0, 2.0, 3.0, 1.5, 0.9, 10)
    cache.put("abc", "x86", "tvm", lat, variant="local", parity={"top1_agreement": 1.0})
    assert cache.get_latency("abc", "x86", "tvm", "local") == lat
    assert cache.get("abc", "rpi4", "tvm", "local") is None
    # parallel writers never lose the file or each other's keys
    threads = [threading.Thread(target=cache.put, args=(f"m{i}", "x86", "tvm", lat)) for i in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    data = json.loads((tmp_path / "c" / "latency.json").read_text())
    assert len(data) == 17
    (tmp_path / "c" / "latency.json").write_text("{broken")
    assert cache.get("abc", "x86", "tvm", "local") is None  # damaged cache = empty, re-measured


def test_compile_for_target_over_rpc_uses_cache(two_servers, x86_lib, tmp_path):
    from metaedge.deploy.compile import compile_for_target

    onnx_path, _ = x86_lib
    cache = LatencyCache(tmp_path / "latency.json")
    e1 = compile_for_target(onnx_path, "x86", tmp_path / "art", backends="tvm", timing=FAST, device=two_servers, cache=cache)
    assert e1["tvm"]["status"] == "ok" and e1["tvm"]["measured_on"] == two_servers and e1["tvm"]["parity_pass"]
    e2 = compile_for_target(onnx_path, "x86", tmp_path / "art", backends="tvm", timing=FAST, device=two_servers, cache=cache)
    assert e2["tvm"].get("cached") is True and e2["tvm"]["latency"] == e1["tvm"]["latency"]
