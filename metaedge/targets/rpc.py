"""Reaching a device through TVM RPC: its name, a session, the tracker's free servers, deadlines.

A device is named ``tracker-host:port/key`` (ask the tracker for any free server registered under
``key``) or ``host:port`` (connect straight to one server started without a tracker). Every remote
step runs under a deadline (:func:`call_with_deadline`): a device that drops or hangs raises a
one-line :class:`MetaedgeError` instead of blocking the caller. What runs in a session (upload,
load, time a library) is measurement, in :mod:`metaedge.deploy.measure.rpc`.

The local launchers start ``tools/rpc_server.py`` as a tracker and servers on 127.0.0.1 (tests,
benches, trying the RPC path on one machine).
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from metaedge.errors import MetaedgeError

__all__ = [
    "DeviceSpec",
    "call_with_deadline",
    "connect",
    "free_servers",
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
        raise MetaedgeError(f"bad device {text!r}", "write tracker-host:port/key (e.g. 127.0.0.1:9190/rpi4) or host:port for a direct server")
    return DeviceSpec(host, int(port), key if slash else None)


def call_with_deadline(fn: Callable[[], Any], timeout_s: float, what: str, device: DeviceSpec) -> Any:
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
        raise MetaedgeError(
            f"device {device} did not answer within {timeout_s:.0f} s while {what}",
            "check the device and its rpc_server (tools/rpc_server.py), or raise the timeout",
        )
    if "error" in box:
        exc = box["error"]
        if isinstance(exc, MetaedgeError):
            raise exc
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[-1][:200]
        raise MetaedgeError(
            f"device {device} failed while {what}: {first}", "check that the device is up and registered (python -m tvm.exec.query_rpc_tracker)"
        ) from exc
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

    return call_with_deadline(open_session, timeout_s, "opening a session", spec)


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

    return call_with_deadline(ask, timeout_s, "asking the tracker", spec)


# --- local launchers ------------------------------------------------------------------------
def _rpc_server_script() -> Path:
    script = Path(__file__).resolve().parents[2] / "tools" / "rpc_server.py"
    if not script.is_file():
        raise MetaedgeError(
            f"{script} not found (the launchers need a metaedge source checkout)", "run from a git checkout, or start tools/rpc_server.py yourself"
        )
    return script


def _spawn_ready(cmd: list[str], marker: str, timeout_s: float, env: dict[str, str] | None = None):
    """Start ``cmd`` and wait for its readiness line; returns (Popen, that line)."""
    import os
    import subprocess
    import sys

    full_env = dict(os.environ, **(env or {}))
    full_env.setdefault("PYTHONUNBUFFERED", "1")
    proc = subprocess.Popen(
        cmd if cmd[0] != "python" else [sys.executable, *cmd[1:]],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=full_env,
        start_new_session=True,
    )
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
            raise MetaedgeError(
                f"{' '.join(cmd[:3])} did not start: {''.join(lines[-5:]).strip()[:300]}", "check that tvm (and tornado for the tracker) are installed"
            )
        time.sleep(0.1)
    proc.log_lines = lines  # type: ignore[attr-defined]
    return proc, box["ready"]


def start_local_tracker(port: int = 9190, timeout_s: float = 120.0):
    """Start a TVM RPC tracker on 127.0.0.1 (first free port from ``port``); returns (Popen, port)."""
    proc, line = _spawn_ready(["python", str(_rpc_server_script()), "--tracker-only", "--port", str(port), "-q"], "metaedge-rpc-tracker ready", timeout_s)
    return proc, int(line.rsplit(":", 1)[1])


def start_local_server(tracker_port: int | None, key: str = "local", port: int = 9090, timeout_s: float = 120.0, env: dict[str, str] | None = None):
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
            raise MetaedgeError(f"fewer than {count} servers registered under {device} after {timeout_s:.0f} s", "check the rpc_server logs")
        time.sleep(0.5)
