"""Limits and timeouts of the HTTP runner: every resource a client can hold has a bound here."""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from metaedge.errors import MetaedgeError

__all__ = ["MAX_BODY_BYTES", "ServeConfig", "default_max_connections", "default_workers"]

MAX_BODY_BYTES = 64 << 20  # a 64-sample 3x224x224 float32 batch is ~38 MB


def default_workers(threads: int = 1) -> int:
    """Inference threads: one per core the engine's own intra-op threads leave free, 1..8."""
    return max(1, min(8, (os.cpu_count() or 1) // max(1, threads)))


def default_max_connections() -> int:
    # Each open connection holds a file descriptor: stay well inside the process's limit.
    try:
        import resource

        soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    except (ImportError, ValueError, OSError):
        soft = 1024
    if soft <= 0:  # RLIM_INFINITY is -1
        soft = 1 << 16
    return max(16, min(1024, soft - 64))


@dataclass(frozen=True)
class ServeConfig:
    host: str = "127.0.0.1"
    port: int = 8080
    workers: int = field(default_factory=default_workers)  # inference threads (not per connection)
    backlog: int = 1024  # listen queue; the old default of 5 reset clients under 32 concurrent connects
    max_connections: int = field(default_factory=default_max_connections)  # beyond: 503 and close
    queue_limit: int = 128  # /infer requests admitted and not yet answered; beyond: 503 + Retry-After
    max_body_bytes: int = MAX_BODY_BYTES  # checked against Content-Length before reading the body
    inflight_bytes: int = 256 << 20  # request bodies held in memory at once, all connections together
    read_timeout_s: float = 30.0  # once a request starts, its headers and body must arrive within this
    idle_timeout_s: float = 15.0  # a keep-alive connection with no new request is closed after this
    drain_timeout_s: float = 8.0  # SIGTERM: in-flight requests get this long (docker stop waits 10 s)
    max_batch: int = 1  # > 1: dynamic batching of concurrent requests, up to this many samples
    batch_timeout_ms: float = 2.0  # how long the first request of a batch waits for company
    quiet: bool = True  # no per-request log lines

    def __post_init__(self) -> None:
        ints = {
            "workers": self.workers,
            "backlog": self.backlog,
            "max_connections": self.max_connections,
            "queue_limit": self.queue_limit,
            "max_body_bytes": self.max_body_bytes,
            "inflight_bytes": self.inflight_bytes,
            "max_batch": self.max_batch,
        }
        bad = [k for k, v in ints.items() if v < 1]
        times = {"read_timeout_s": self.read_timeout_s, "idle_timeout_s": self.idle_timeout_s}
        bad += [k for k, v in times.items() if not v > 0]
        if self.drain_timeout_s < 0 or self.batch_timeout_ms < 0:
            bad.append("drain_timeout_s" if self.drain_timeout_s < 0 else "batch_timeout_ms")
        if not 0 <= self.port <= 65535:
            bad.append("port")
        if bad:
            raise MetaedgeError(f"bad serve settings: {', '.join(bad)} out of range", "use positive limits and timeouts (port 0..65535; 0 picks a free one)")
