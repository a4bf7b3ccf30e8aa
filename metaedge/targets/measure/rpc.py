"""Measure compiled TVM libraries on remote devices through TVM RPC.

A device is named ``tracker-host:port/key`` (ask the tracker for any free server registered under
``key``) or ``host:port`` (connect straight to one server started without a tracker). The
library is uploaded, loaded by the device's Relax VM and timed there with ``time_evaluator``, so
network round trips are not part of the numbers.

Every remote step runs under a deadline: a device that drops or hangs raises a one-line
:class:`MetaedgeError` instead of blocking the pipeline. Several devices behind one tracker are
measured in parallel, one thread (and one RPC session) per device.
"""
from __future__ import annotations

import queue
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from metaedge.errors import MetaedgeError
from metaedge.latency import LatencyStats, TimingConfig

__all__ = [
    "DeviceSpec",
    "MeasureJob",
    "RemoteResult",
    "connect",
    "free_servers",
    "measure_many",
    "measure_remote",
    "parse_device",
    "start_local_server",
    "start_local_tracker",
    "wait_for_servers",
]


@dataclass(frozen=True)
class DeviceSpec:
    host: str
    port: int
    key: str | None = None  # None: a direct server, not a tracker

    @property
    def via_tracker(self) -> bool:
        return self.key is not None

    def __str__(self) -> str:
        return f"{self.host}:{self.port}" + (f"/{self.key}" if self.key is not None else "")


def parse_device(text: str | DeviceSpec) -> DeviceSpec:
    """``host:port/key`` (tracker) or ``host:port`` (direct server)."""
    if isinstance(text, DeviceSpec):
        return text
    addr, slash, key = str(text).strip().partition("/")
    host, _, port = addr.rpartition(":")
    if not host or not port.isdigit() or (slash and not key):
        raise MetaedgeError(f"bad device {text!r}",
                            "write tracker-host:port/key (e.g. 127.0.0.1:9190/rpi4) or host:port for a direct server")
    return DeviceSpec(host, int(port), key if slash else None)


@dataclass(frozen=True)
class RemoteResult:
    latency: LatencyStats
    output: np.ndarray | None
    device: str
    seconds: float  # wall time of the whole remote job (upload, load, runs)


def _deadline(fn: Callable[[], Any], timeout_s: float, what: str, device: DeviceSpec) -> Any:
    """Run ``fn`` in a daemon thread; raise MetaedgeError if it does not finish in time.

    TVM's RPC calls block in C++ without their own deadline; a thread is the portable way to
    stop waiting (the stuck thread dies with the process or when its socket closes)."""
    box: dict[str, Any] = {}

    def body() -> None:
        try:
            box["value"] = fn()
        except BaseException as exc:  # noqa: BLE001 - re-raised in the caller's thread
            box["error"] = exc

    t = threading.Thread(target=body, name=f"rpc-{what}", daemon=True)
    t.start()
    t.join(timeout_s)
    if t.is_alive():
        raise MetaedgeError(f"device {device} did not answer within {timeout_s:.0f} s while {what}",
                            "check the device and its rpc_server (tools/rpc_server.py), or raise the timeout")
    if "error" in box:
        exc = box["error"]
        if isinstance(exc, MetaedgeError):
            raise exc
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[-1][:200]
        raise MetaedgeError(f"device {device} failed while {what}: {first}",
                            "check that the device is up and registered (python -m tvm.exec.query_rpc_tracker)") from exc
    return box.get("value")


def connect(device: str | DeviceSpec, *, timeout_s: float = 120.0, session_timeout_s: float = 0, priority: int = 1):
    """Open an RPC session to a device (through its tracker when the spec has a key)."""
    from tvm import rpc

    spec = parse_device(device)

    def open_session():
        if spec.via_tracker:
            tracker = rpc.connect_tracker(spec.host, spec.port)
            return tracker.request(spec.key, priority=priority, session_timeout=session_timeout_s, max_retry=3)
        return rpc.connect(spec.host, spec.port, session_timeout=session_timeout_s)

    return _deadline(open_session, timeout_s, "opening a session", spec)


def free_servers(device: str | DeviceSpec, timeout_s: float = 10.0) -> int:
    """How many servers the tracker lists under the spec's key (1 for a direct server)."""
    from tvm import rpc

    spec = parse_device(device)
    if not spec.via_tracker:
        return 1

    def ask() -> int:
        summary = rpc.connect_tracker(spec.host, spec.port).summary()
        queue_info = summary.get("queue_info", {}).get(spec.key, {})
        return int(queue_info.get("free", 0))

    return _deadline(ask, timeout_s, "asking the tracker", spec)


def _remote_device(sess, kind: str):
    return sess.cuda(0) if kind == "cuda" else sess.cpu(0)


def _run_in_session(sess, lib_path: Path, input_shape: Sequence[int], timing: TimingConfig, device_kind: str,
                    x: np.ndarray | None, want_output: bool, spec: DeviceSpec, timeout_s: float):
    """Upload, load, run once for the output, time. Each step has its own deadline."""
    import tvm
    from tvm import relax

    from metaedge.deploy.backends.tvm import _first_output, time_vm

    # A unique remote name: sessions reuse a work dir only per session, but be safe anyway.
    remote_name = f"me_{uuid.uuid4().hex[:8]}_{lib_path.name}"
    _deadline(lambda: sess.upload(str(lib_path), remote_name), timeout_s, "uploading the library", spec)
    rlib = _deadline(lambda: sess.load_module(remote_name), timeout_s, "loading the library", spec)
    dev = _remote_device(sess, device_kind)
    vm = _deadline(lambda: relax.VirtualMachine(rlib, dev), timeout_s, "creating the VM", spec)
    if x is None:
        x = np.random.default_rng(0).random(tuple(input_shape), dtype=np.float32)
    x = np.ascontiguousarray(x, dtype=np.float32)
    # ``x`` is one input of ``input_shape`` or a stack of them ([k, *input_shape]) for parity.
    samples = [x] if x.shape == tuple(input_shape) else [s for s in x]
    xts = [_deadline(lambda s=s: tvm.runtime.tensor(s, dev), timeout_s, "sending the input", spec) for s in samples]
    out = None
    if want_output:
        outs = [_deadline(lambda t=t: _first_output(vm["main"](t)), timeout_s, "running the model", spec) for t in xts]
        out = outs[0] if len(outs) == 1 and x.shape == tuple(input_shape) else np.stack(outs)
    lat = _deadline(lambda: time_vm(vm, dev, xts[0], timing), timeout_s, "timing the model", spec)
    return lat, out


def measure_remote(lib_path: Path | str, device: str | DeviceSpec, input_shape: Sequence[int],
                   timing: TimingConfig = TimingConfig(), *, device_kind: str = "cpu", x: np.ndarray | None = None,
                   want_output: bool = True, connect_timeout_s: float = 120.0, step_timeout_s: float = 300.0,
                   session=None) -> RemoteResult:
    """Time a TVM ``export_library`` .so on a remote device and return its LatencyStats (and the
    output for ``x``, for parity checks). ``session`` reuses an open RPC session."""
    spec = parse_device(device)
    lib_path = Path(lib_path)
    if not lib_path.is_file():
        raise MetaedgeError(f"{lib_path} does not exist", "compile the model first (metaedge compile --target ... )")
    t0 = time.perf_counter()
    sess = session if session is not None else connect(spec, timeout_s=connect_timeout_s)
    lat, out = _run_in_session(sess, lib_path, input_shape, timing, device_kind, x, want_output, spec, step_timeout_s)
    return RemoteResult(lat, out, str(spec), time.perf_counter() - t0)


@dataclass(frozen=True)
class MeasureJob:
    lib_path: Path
    input_shape: tuple[int, ...]
    tag: str = ""  # caller's label, echoed in the result order
    device_kind: str = "cpu"
    x: np.ndarray | None = field(default=None, compare=False, hash=False)


def measure_many(jobs: Sequence[MeasureJob], device: str | DeviceSpec, timing: TimingConfig = TimingConfig(), *,
                 max_devices: int | None = None, want_output: bool = False, connect_timeout_s: float = 120.0,
                 step_timeout_s: float = 300.0) -> list[RemoteResult]:
    """Measure many libraries on the devices behind one tracker key, in parallel.

    One worker thread per free device (capped by ``max_devices`` and the job count), each with its
    own RPC session, pulling jobs from a shared queue. Results come back in job order."""
    spec = parse_device(device)
    if not jobs:
        return []
    n_dev = free_servers(spec) if spec.via_tracker else 1
    n_workers = max(1, min(len(jobs), n_dev or 1, max_devices or len(jobs)))
    todo: queue.Queue[int] = queue.Queue()
    for i in range(len(jobs)):
        todo.put(i)
    results: list[RemoteResult | None] = [None] * len(jobs)
    errors: list[BaseException] = []

    def worker() -> None:
        try:
            sess = connect(spec, timeout_s=connect_timeout_s)
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)
            return
        while not errors:
            try:
                i = todo.get_nowait()
            except queue.Empty:
                return
            job = jobs[i]
            try:
                results[i] = measure_remote(job.lib_path, spec, job.input_shape, timing, device_kind=job.device_kind,
                                            x=job.x, want_output=want_output, step_timeout_s=step_timeout_s,
                                            session=sess)
            except BaseException as exc:  # noqa: BLE001
                errors.append(exc)
                return

    threads = [threading.Thread(target=worker, name=f"rpc-worker-{k}", daemon=True) for k in range(n_workers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    missing = [i for i, r in enumerate(results) if r is None]
    if errors and missing:
        err = errors[0]
        if isinstance(err, MetaedgeError):
            raise err
        raise MetaedgeError(f"remote measurement on {spec} failed: {err}", "check the devices behind the tracker") from err
    return results  # type: ignore[return-value]


# --- local launchers (tests, benches, trying the RPC path on one machine) ----------------------
def _rpc_server_script() -> Path:
    script = Path(__file__).resolve().parents[3] / "tools" / "rpc_server.py"
    if not script.is_file():
        raise MetaedgeError(f"{script} not found (the launchers need a metaedge source checkout)",
                            "run from a git checkout, or start tools/rpc_server.py yourself")
    return script


def _spawn_ready(cmd: list[str], marker: str, timeout_s: float, env: dict[str, str] | None = None):
    """Start ``cmd`` and wait for its readiness line; returns (Popen, that line)."""
    import os
    import subprocess
    import sys

    full_env = dict(os.environ, **(env or {}))
    full_env.setdefault("PYTHONUNBUFFERED", "1")
    proc = subprocess.Popen(cmd if cmd[0] != "python" else [sys.executable, *cmd[1:]], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, env=full_env, start_new_session=True)
    lines: list[str] = []
    box: dict[str, str] = {}

    def reader() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:  # keep draining so the child never blocks on a full pipe
            lines.append(line)
            if marker in line and "ready" not in box:
                box["ready"] = line.strip()

    threading.Thread(target=reader, daemon=True).start()
    deadline = time.time() + timeout_s
    while "ready" not in box:
        if proc.poll() is not None or time.time() > deadline:
            proc.kill()
            raise MetaedgeError(f"{' '.join(cmd[:3])} did not start: {''.join(lines[-5:]).strip()[:300]}",
                                "check that tvm (and tornado for the tracker) are installed")
        time.sleep(0.1)
    proc.log_lines = lines  # type: ignore[attr-defined]
    return proc, box["ready"]


def start_local_tracker(port: int = 9190, timeout_s: float = 120.0):
    """Start a TVM RPC tracker on 127.0.0.1 (first free port from ``port``); returns (Popen, port)."""
    proc, line = _spawn_ready(["python", str(_rpc_server_script()), "--tracker-only", "--port", str(port), "-q"],
                              "metaedge-rpc-tracker ready", timeout_s)
    return proc, int(line.rsplit(":", 1)[1])


def start_local_server(tracker_port: int | None, key: str = "local", port: int = 9090, timeout_s: float = 120.0,
                       env: dict[str, str] | None = None):
    """Start tools/rpc_server.py for this machine on 127.0.0.1, registered with a local tracker
    (or standalone when ``tracker_port`` is None); returns (Popen, bound port)."""
    cmd = ["python", str(_rpc_server_script()), "--port", str(port), "-q"]
    if tracker_port is not None:
        cmd += ["--tracker", f"127.0.0.1:{tracker_port}", "--key", key]
    proc, line = _spawn_ready(cmd, "metaedge-rpc-server ready", timeout_s, env)
    return proc, int(line.split()[2].rsplit(":", 1)[1])


def wait_for_servers(device: str | DeviceSpec, count: int, timeout_s: float = 60.0) -> None:
    """Block until the tracker lists ``count`` free servers under the key."""
    deadline = time.time() + timeout_s
    while True:
        try:
            if free_servers(device) >= count:
                return
        except MetaedgeError:
            pass
        if time.time() > deadline:
            raise MetaedgeError(f"fewer than {count} servers registered under {device} after {timeout_s:.0f} s",
                                "check the rpc_server logs")
        time.sleep(0.5)
