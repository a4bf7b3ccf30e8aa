"""Load a runtime server the way a fleet of clients would (stdlib + numpy, no torch).

``run_load`` drives ``clients`` keep-alive connections over raw sockets (cheap enough that the
client does not hide the server's limits), each request timed and any connection failure recorded
instead of retried; ``make_jobs`` builds good requests (JSON and ``.npy``, batches of 1-3) mixed
with malformed ones; ``open_slow_sockets`` holds half-sent requests open. The load test and
``bench/runtime_load.py`` use it; on a device::

    python -m metaedge.deploy.runtime.loadgen http://127.0.0.1:8080 --requests 2000 --clients 32
"""

from __future__ import annotations

import argparse
import io
import json
import socket
import sys
import threading
import time
import urllib.request
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence, Tuple
from urllib.parse import urlsplit

import numpy as np

from metaedge.latency import summarize

__all__ = ["MALFORMED_KINDS", "Job", "Reply", "make_jobs", "open_slow_sockets", "run_load", "summary"]

MALFORMED_KINDS = ("empty", "broken_json", "ragged", "wrong_shape", "nan", "overflow", "bad_npy", "float64_npy", "wrong_type")


@dataclass(frozen=True)
class Job:
    body: bytes
    content_type: str
    kind: str  # "good" or one of MALFORMED_KINDS
    x: Optional[np.ndarray] = None  # the input of a good request, to check its answer


@dataclass(frozen=True)
class Reply:
    status: Optional[int]  # None: the connection failed (reset, refused, timed out, closed early)
    body: bytes
    ms: float
    error: str = ""


def _npy(x: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, x, allow_pickle=False)
    return buf.getvalue()


def _json(x: Any) -> bytes:
    return json.dumps({"input": x.tolist() if isinstance(x, np.ndarray) else x}).encode()


def _malformed(kind: str, chw: Tuple[int, int, int], rng: np.random.Generator) -> Job:
    c, h, w = chw
    x = rng.standard_normal((1, c, h, w)).astype(np.float32)
    if kind == "empty":
        return Job(b"", "application/json", kind)
    if kind == "broken_json":
        return Job(_json(x)[:40], "application/json", kind)
    if kind == "ragged":
        rows = x.tolist()
        rows[0][0][0] = rows[0][0][0][:-1]
        return Job(_json(rows), "application/json", kind)
    if kind == "wrong_shape":
        return Job(_json(np.zeros((1, c, h + 1, w), np.float32)), "application/json", kind)
    if kind == "nan":
        rows = x.tolist()
        rows[0][0][0][0] = float("nan")
        return Job(json.dumps({"input": rows}).encode(), "application/json", kind)  # NaN literal
    if kind == "overflow":
        rows = x.tolist()
        rows[0][0][0][0] = 1e39  # past float32: inf
        return Job(_json(rows), "application/json", kind)
    if kind == "bad_npy":
        return Job(b"\x93NUMPY" + bytes(rng.integers(0, 256, 64, dtype=np.uint8)), "application/x-npy", kind)
    if kind == "float64_npy":
        return Job(_npy(x.astype(np.float64)), "application/x-npy", kind)
    if kind == "wrong_type":
        return Job(b"hello", "text/plain", kind)
    raise ValueError(f"unknown malformed kind {kind!r}")


def make_jobs(chw: Sequence[int], n: int, malformed: float = 0.2, seed: int = 0) -> List[Job]:
    """``n`` requests; every ``round(1 / malformed)``-th one malformed, cycling through the kinds."""
    rng = np.random.default_rng(seed)
    every = int(round(1 / malformed)) if malformed > 0 else 0
    chw3 = (int(chw[0]), int(chw[1]), int(chw[2]))
    jobs: List[Job] = []
    for i in range(n):
        if every and i % every == every - 1:
            jobs.append(_malformed(MALFORMED_KINDS[(i // every) % len(MALFORMED_KINDS)], chw3, rng))
            continue
        x = rng.standard_normal((1 + i % 3,) + chw3).astype(np.float32)
        if i % 2:
            jobs.append(Job(_json(x), "application/json", "good", x))
        else:
            jobs.append(Job(_npy(x), "application/x-npy", "good", x))
    return jobs


class _Client:
    """One keep-alive connection speaking just enough HTTP/1.1 for ``POST /infer``."""

    def __init__(self, host: str, port: int, timeout: float) -> None:
        self.addr, self.timeout = (host, port), timeout
        self.sock: Optional[socket.socket] = None
        self.buf = b""

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None
        self.buf = b""

    def _recv(self) -> bytes:
        assert self.sock is not None
        data = self.sock.recv(65536)
        if not data:
            raise ConnectionError("server closed the connection before answering")
        return data

    def request(self, job: Job) -> Tuple[int, bytes]:
        if self.sock is None:
            self.sock = socket.create_connection(self.addr, timeout=self.timeout)
            self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        head = (f"POST /infer HTTP/1.1\r\nHost: {self.addr[0]}\r\nContent-Type: {job.content_type}\r\nContent-Length: {len(job.body)}\r\n\r\n").encode()
        self.sock.sendall(head + job.body)
        while b"\r\n\r\n" not in self.buf:
            self.buf += self._recv()
        raw, self.buf = self.buf.split(b"\r\n\r\n", 1)
        lines = raw.decode("latin-1").split("\r\n")
        status = int(lines[0].split(" ", 2)[1])
        headers = {k.strip().lower(): v.strip() for k, _, v in (ln.partition(":") for ln in lines[1:])}
        length = int(headers.get("content-length", "0"))
        while len(self.buf) < length:
            self.buf += self._recv()
        body, self.buf = self.buf[:length], self.buf[length:]
        if headers.get("connection", "").lower() == "close":
            self.close()
        return status, body


def run_load(host: str, port: int, jobs: Sequence[Job], clients: int = 32, timeout: float = 30.0, deadline_s: Optional[float] = None) -> List[Reply]:
    """Send every job once over ``clients`` concurrent keep-alive connections; replies in job order.
    Failed connections are recorded (status None), never retried. ``deadline_s`` bounds the run."""
    replies: List[Optional[Reply]] = [None] * len(jobs)
    lock = threading.Lock()
    nxt = [0]
    stop_at = time.monotonic() + deadline_s if deadline_s else None

    def worker() -> None:
        client = _Client(host, port, timeout)
        try:
            while True:
                with lock:
                    i = nxt[0]
                    nxt[0] += 1
                if i >= len(jobs) or (stop_at is not None and time.monotonic() > stop_at):
                    return
                t0 = time.perf_counter()
                try:
                    status, body = client.request(jobs[i])
                    replies[i] = Reply(status, body, (time.perf_counter() - t0) * 1e3)
                except (OSError, ValueError, IndexError) as exc:  # reset, refused, timeout, garbage
                    client.close()
                    replies[i] = Reply(None, b"", (time.perf_counter() - t0) * 1e3, f"{type(exc).__name__}: {exc}")
        finally:
            client.close()

    threads = [threading.Thread(target=worker, daemon=True) for _ in range(max(1, clients))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return [r if r is not None else Reply(None, b"", 0.0, "not sent (deadline)") for r in replies]


def open_slow_sockets(host: str, port: int, n: int) -> List[socket.socket]:
    """``n`` connections each holding a half-sent request (headers cut off, or a body cut short)."""
    socks = []
    for i in range(n):
        s = socket.create_connection((host, port), timeout=10)
        if i % 2:
            s.sendall(b"POST /infer HTTP/1.1\r\nHost: slow\r\nContent-Type: application/json\r\nContent-Le")
        else:
            s.sendall(b'POST /infer HTTP/1.1\r\nHost: slow\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n{"input": [[[')
        socks.append(s)
    return socks


def summary(jobs: Sequence[Job], replies: Sequence[Reply], wall_s: float) -> Dict[str, Any]:
    ok = [r.ms for j, r in zip(jobs, replies) if j.kind == "good" and r.status == 200]
    statuses: Dict[str, int] = {}
    for r in replies:
        key = str(r.status) if r.status is not None else "failed"
        statuses[key] = statuses.get(key, 0) + 1
    lat = summarize(ok) if ok else None
    return {
        "requests": len(replies),
        "wall_s": round(wall_s, 3),
        "requests_per_s": round(len(replies) / wall_s, 1),
        "statuses": statuses,
        "failed": statuses.get("failed", 0),
        "good_p50_ms": round(lat.p50_ms, 3) if lat else None,
        "good_p99_ms": round(lat.p99_ms, 3) if lat else None,
    }


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="python -m metaedge.deploy.runtime.loadgen", description=__doc__.split("\n\n")[0])
    p.add_argument("url", help="http://HOST:PORT of a running `metaedge.deploy.runtime serve`")
    p.add_argument("--requests", type=int, default=2000)
    p.add_argument("--clients", type=int, default=32)
    p.add_argument("--malformed", type=float, default=0.2, help="fraction of malformed requests (default 0.2)")
    p.add_argument("--slow", type=int, default=0, help="half-sent requests held open meanwhile")
    args = p.parse_args(argv)
    parts = urlsplit(args.url if "://" in args.url else f"http://{args.url}")
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    with urllib.request.urlopen(f"http://{host}:{port}/healthz", timeout=10) as resp:
        shape = json.loads(resp.read())["input_shape"]
    jobs = make_jobs(shape[1:], args.requests, args.malformed)
    slow = open_slow_sockets(host, port, args.slow)
    t0 = time.perf_counter()
    replies = run_load(host, port, jobs, args.clients)
    out = summary(jobs, replies, time.perf_counter() - t0)
    for s in slow:
        s.close()
    print(json.dumps(out))
    return 0 if out["failed"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
