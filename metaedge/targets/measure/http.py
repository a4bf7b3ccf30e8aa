"""Latency and throughput of a running runtime bundle, measured from the client over HTTP.

Talks to ``python -m metaedge.deploy.runtime serve`` (a container or a device): reads the input
shape from ``/healthz``, POSTs random float32 ``.npy`` batches to ``/infer`` over one keep-alive
connection and times each round trip. The server's own inference time (``latency_ms`` in each
answer) is kept too, so network + serialization overhead is visible. Torch-free.
"""
from __future__ import annotations

import http.client
import io
import json
import time
from dataclasses import dataclass, field
from typing import Any, Sequence
from urllib.parse import urlsplit

import numpy as np

from metaedge.errors import MetaedgeError
from metaedge.latency import LatencyStats, TimingConfig, summarize

__all__ = ["HttpProfile", "HttpRuntimeClient", "profile_url"]


@dataclass(frozen=True)
class HttpProfile:
    url: str
    batch: int
    request: LatencyStats  # client round trip per request, ms
    server: LatencyStats | None  # inference time the server reports, ms
    throughput_sps: float  # samples per second, sequential requests
    payload_bytes: int
    samples_ms: tuple[float, ...] = field(repr=False, default=())

    def to_dict(self) -> dict[str, Any]:
        return {
            "url": self.url, "batch": self.batch, "request": self.request.to_dict(),
            "server": self.server.to_dict() if self.server else None,
            "throughput_sps": self.throughput_sps, "payload_bytes": self.payload_bytes,
        }


class HttpRuntimeClient:
    """One keep-alive connection to a runtime server."""

    def __init__(self, url: str, timeout: float = 30.0) -> None:
        parts = urlsplit(url if "://" in url else f"http://{url}")
        if parts.scheme != "http" or not parts.hostname:
            raise MetaedgeError(f"bad runtime URL {url!r}", "use http://HOST:PORT of `metaedge.deploy.runtime serve`")
        self.url = f"http://{parts.hostname}:{parts.port or 80}"
        self._host, self._port, self._timeout = parts.hostname, parts.port or 80, timeout
        self._conn: http.client.HTTPConnection | None = None

    def _request(self, method: str, path: str, body: bytes | None = None, ctype: str | None = None) -> tuple[int, dict]:
        for attempt in (0, 1):  # the server closes the connection after an error; reconnect once
            if self._conn is None:
                self._conn = http.client.HTTPConnection(self._host, self._port, timeout=self._timeout)
            try:
                headers = {"Content-Type": ctype} if ctype else {}
                self._conn.request(method, path, body=body, headers=headers)
                resp = self._conn.getresponse()
                data = resp.read()
                if resp.getheader("Connection", "").lower() == "close":
                    self.close()
                return resp.status, json.loads(data or b"{}")
            except (ConnectionError, http.client.HTTPException, OSError) as exc:
                self.close()
                if attempt:
                    raise MetaedgeError(f"cannot reach the runtime at {self.url} ({exc})",
                                        "start the bundle (docker run ... ) or check --url") from exc
        raise AssertionError("unreachable")

    def health(self) -> dict:
        status, body = self._request("GET", "/healthz")
        if status != 200:
            raise MetaedgeError(f"{self.url}/healthz answered {status}: {body}", "check the container logs")
        return body

    def metrics(self) -> dict:
        return self._request("GET", "/metrics")[1]

    def infer_npy(self, payload: bytes) -> dict:
        status, body = self._request("POST", "/infer", payload, "application/x-npy")
        if status != 200:
            raise MetaedgeError(f"{self.url}/infer answered {status}: {body.get('error', body)}",
                                "check the input shape against the model's manifest")
        return body

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None


def _npy(x: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, x, allow_pickle=False)
    return buf.getvalue()


def profile_url(url: str, batch_sizes: Sequence[int] = (1,), config: TimingConfig = TimingConfig(),
                seed: int = 0) -> list[HttpProfile]:
    """Time ``/infer`` for each batch size: ``config.warmup`` untimed calls, then ``config.repeats``."""
    client = HttpRuntimeClient(url)
    try:
        shape = client.health().get("input_shape")
        if not (isinstance(shape, list) and len(shape) == 4):
            raise MetaedgeError(f"{client.url}/healthz reports no input_shape", "is this a metaedge runtime server?")
        rng = np.random.default_rng(seed)
        results = []
        for batch in batch_sizes:
            payload = _npy(rng.standard_normal((batch, *shape[1:])).astype(np.float32))
            for _ in range(config.warmup):
                client.infer_npy(payload)
            samples, server = [], []
            t_start = time.perf_counter()
            for _ in range(config.repeats):
                t0 = time.perf_counter()
                body = client.infer_npy(payload)
                samples.append((time.perf_counter() - t0) * 1e3)
                if isinstance(body.get("latency_ms"), (int, float)):
                    server.append(float(body["latency_ms"]))
            wall = time.perf_counter() - t_start
            results.append(HttpProfile(
                url=client.url, batch=batch, request=summarize(samples),
                server=summarize(server) if server else None,
                throughput_sps=batch * config.repeats / wall if wall > 0 else float("nan"),
                payload_bytes=len(payload), samples_ms=tuple(samples),
            ))
        return results
    finally:
        client.close()
