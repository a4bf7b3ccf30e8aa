"""Measuring a running runtime bundle from the client over HTTP (:class:`HttpRunner`).

Reads the input shape from ``/healthz``, POSTs random float32 ``.npy`` batches of each input's
``batch`` to ``/infer`` over one keep-alive connection (:class:`metaedge.targets.http.HttpRuntimeClient`)
and times each round trip; an input's ``inputs`` are sent once, untimed, for their logits (parity). The server's own inference time (``latency_ms`` in each answer) is
kept in ``detail["server"]``, so network + serialization overhead is visible. Torch-free.
"""

from __future__ import annotations

import io
import time
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from metaedge.deploy.measure.base import MeasureInput, MeasureResult, Runner
from metaedge.errors import MetaedgeError
from metaedge.latency import TimingConfig, summarize
from metaedge.targets.http import HttpRuntimeClient

__all__ = ["HttpRunner", "HttpRunnerConfig"]


@dataclass(frozen=True)
class HttpRunnerConfig:
    url: str
    timing: TimingConfig = TimingConfig()
    seed: int = 0


def _npy(x: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, x, allow_pickle=False)
    return buf.getvalue()


class HttpRunner(Runner):
    """Time ``/infer``: ``timing.warmup`` untimed calls, then ``timing.repeats`` sequential ones."""

    def __init__(self, config: HttpRunnerConfig) -> None:
        self.config = config

    def run(self, inputs: Sequence[MeasureInput]) -> list[MeasureResult]:
        cfg = self.config
        client = HttpRuntimeClient(cfg.url)
        try:
            shape = client.health().get("input_shape")
            if not (isinstance(shape, list) and len(shape) == 4):
                raise MetaedgeError(f"{client.url}/healthz reports no input_shape", "is this a metaedge runtime server?")
            rng = np.random.default_rng(cfg.seed)
            results = []
            for inp in inputs:
                outputs = None
                if inp.inputs is not None:
                    rows = [np.asarray(r, dtype=np.float32).reshape(-1, *shape[1:]) for r in np.asarray(inp.inputs)]
                    body = client.infer_npy(_npy(np.concatenate(rows)))
                    outputs = np.asarray(body["logits"], dtype=np.float32).reshape(len(rows), rows[0].shape[0], -1)
                payload = _npy(rng.standard_normal((inp.batch, *shape[1:])).astype(np.float32))
                for _ in range(cfg.timing.warmup):
                    client.infer_npy(payload)
                samples, server = [], []
                t_start = time.perf_counter()
                for _ in range(cfg.timing.repeats):
                    t0 = time.perf_counter()
                    body = client.infer_npy(payload)
                    samples.append((time.perf_counter() - t0) * 1e3)
                    if isinstance(body.get("latency_ms"), (int, float)):
                        server.append(float(body["latency_ms"]))
                wall = time.perf_counter() - t_start
                detail = {
                    "batch": inp.batch,
                    "server": summarize(server).to_dict() if server else None,
                    "throughput_sps": inp.batch * cfg.timing.repeats / wall if wall > 0 else float("nan"),
                    "payload_bytes": len(payload),
                }
                results.append(MeasureResult(summarize(samples), outputs, client.url, wall, inp.tag, detail, tuple(samples)))
            return results
        finally:
            client.close()
