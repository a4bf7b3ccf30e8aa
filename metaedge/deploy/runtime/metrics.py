"""Request counters, batch sizes and windows of recent per-stage latencies for ``/metrics``."""

from __future__ import annotations

import threading
import time

try:
    import resource  # POSIX only
except ImportError:  # pragma: no cover
    resource = None  # type: ignore[assignment]
from collections import Counter, deque
from typing import Any, Deque, Dict, Mapping, Optional

from metaedge.latency import summarize

__all__ = ["Metrics", "memory_mb"]

_STAGES = ("queue_ms", "inference_ms", "total_ms")


class Metrics:
    """Thread-safe; keeps the last ``window`` latencies so percentiles track current behaviour.

    Stages of one ``/infer`` request: ``queue_ms`` (submitted until its batch started),
    ``inference_ms`` (the engine call), ``total_ms`` (head received until the answer was ready).
    """

    def __init__(self, window: int = 2048) -> None:
        self._lock = threading.Lock()
        self._stages: Dict[str, Deque[float]] = {s: deque(maxlen=window) for s in _STAGES}
        self._batch_sizes: Counter = Counter()
        self._connections: Counter = Counter()
        self.started = time.time()
        self.requests = 0
        self.ok = 0
        self.client_errors = 0
        self.server_errors = 0
        self.rejected = 0  # 503: queue full, not ready or draining (the client should retry)
        self.samples = 0
        self.batches = 0
        self.batched_requests = 0

    def record(self, status: int, request_ms: float, infer_ms: Optional[float] = None, batch: int = 0, queue_ms: Optional[float] = None) -> None:
        with self._lock:
            self.requests += 1
            if status < 400:
                self.ok += 1
                self.samples += batch
                self._stages["total_ms"].append(request_ms)
                if infer_ms is not None:
                    self._stages["inference_ms"].append(infer_ms)
                if queue_ms is not None:
                    self._stages["queue_ms"].append(queue_ms)
            elif status == 503:
                self.rejected += 1
            elif status < 500:
                self.client_errors += 1
            else:
                self.server_errors += 1

    def record_batch(self, samples: int, requests: int) -> None:
        with self._lock:
            self.batches += 1
            self.batched_requests += requests
            self._batch_sizes[samples] += 1

    def count(self, event: str) -> None:
        """Connection events: opened, refused (too many), read_timeout, idle_closed."""
        with self._lock:
            self._connections[event] += 1

    def snapshot(self, gauges: Optional[Mapping[str, Any]] = None) -> Dict[str, Any]:
        with self._lock:
            stages = {k: list(v) for k, v in self._stages.items()}
            sizes = dict(self._batch_sizes)
            out: Dict[str, Any] = {
                "uptime_s": round(time.time() - self.started, 3),
                "requests": self.requests,
                "ok": self.ok,
                "client_errors": self.client_errors,
                "server_errors": self.server_errors,
                "rejected": self.rejected,
                "samples": self.samples,
                "connections": dict(self._connections),
            }
            batches = self.batches
            per_batch = self.batched_requests / batches if batches else None
        summaries = {k: summarize(v).to_dict() if v else None for k, v in stages.items()}
        out["stages"] = summaries
        # Flat copies kept for clients written against the first runner (profile_url, dashboards).
        out["inference_ms"] = summaries["inference_ms"]
        out["request_ms"] = summaries["total_ms"]
        total = sum(n * c for n, c in sizes.items())
        out["batches"] = {
            "count": batches,
            "mean_samples": total / batches if batches else None,
            "mean_requests": per_batch,
            "sizes": {str(n): sizes[n] for n in sorted(sizes)},
        }
        if gauges:
            out.update(gauges)
        out.update(memory_mb())
        return out


def memory_mb() -> Dict[str, float]:
    """Current and peak resident memory of this process in MB (stdlib only, no psutil on devices)."""
    mem: Dict[str, float] = {}
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
