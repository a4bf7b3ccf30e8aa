"""Request counters and a window of recent latencies for ``/metrics``."""
from __future__ import annotations

import threading
import time

try:
    import resource  # POSIX only
except ImportError:  # pragma: no cover
    resource = None  # type: ignore[assignment]
from collections import deque
from typing import Any

from metaedge.latency import summarize

__all__ = ["Metrics", "memory_mb"]


class Metrics:
    """Thread-safe; keeps the last ``window`` latencies so percentiles track current behaviour."""

    def __init__(self, window: int = 2048) -> None:
        self._lock = threading.Lock()
        self._infer_ms: deque[float] = deque(maxlen=window)
        self._request_ms: deque[float] = deque(maxlen=window)
        self.started = time.time()
        self.requests = 0
        self.ok = 0
        self.client_errors = 0
        self.server_errors = 0
        self.samples = 0

    def record(self, status: int, request_ms: float, infer_ms: float | None = None, batch: int = 0) -> None:
        with self._lock:
            self.requests += 1
            if status < 400:
                self.ok += 1
                self.samples += batch
                self._request_ms.append(request_ms)
                if infer_ms is not None:
                    self._infer_ms.append(infer_ms)
            elif status < 500:
                self.client_errors += 1
            else:
                self.server_errors += 1

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            infer = list(self._infer_ms)
            req = list(self._request_ms)
            out: dict[str, Any] = {
                "uptime_s": round(time.time() - self.started, 3),
                "requests": self.requests,
                "ok": self.ok,
                "client_errors": self.client_errors,
                "server_errors": self.server_errors,
                "samples": self.samples,
            }
        out["inference_ms"] = summarize(infer).to_dict() if infer else None
        out["request_ms"] = summarize(req).to_dict() if req else None
        out.update(memory_mb())
        return out


def memory_mb() -> dict[str, float]:
    """Current and peak resident memory of this process in MB (stdlib only, no psutil on devices)."""
    mem: dict[str, float] = {}
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmRSS:"):
                    mem["rss_mb"] = int(line.split()[1]) / 1024
    except OSError:
        pass
    if resource is not None:
        # ru_maxrss is KiB on Linux.
        mem["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return mem
