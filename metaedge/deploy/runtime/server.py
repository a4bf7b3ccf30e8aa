"""Minimal threaded HTTP inference server (stdlib only): /healthz, /infer, /metrics.

POST /infer takes JSON ``{"input": nested list}`` or raw ``.npy`` bytes with
``Content-Type: application/x-npy``, and answers ``{"logits": [[...]], "top1": [...], ...}``.
Any bad request is answered 4xx with ``{"error": message}``; only a bug in the model path is a 500,
and the server keeps serving either way.
"""
from __future__ import annotations

import json
import sys
import time
import traceback
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import numpy as np

from metaedge.deploy.runtime.errors import InputError
from metaedge.deploy.runtime.inputs import load_image, npy_from_bytes
from metaedge.deploy.runtime.metrics import Metrics
from metaedge.deploy.runtime.model import LoadedModel

__all__ = ["MAX_BODY_BYTES", "InferenceServer", "make_server"]

MAX_BODY_BYTES = 64 << 20  # a 64-sample 3x224x224 float32 batch is ~38 MB
NPY_TYPES = ("application/x-npy", "application/octet-stream")
IMAGE_TYPES = ("image/png", "image/jpeg", "image/bmp", "image/webp")


class _HTTPError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class InferenceServer(ThreadingHTTPServer):
    daemon_threads = True  # a hung client never blocks shutdown
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], model: LoadedModel, quiet: bool = True) -> None:
        super().__init__(address, _Handler)
        self.model = model
        self.metrics = Metrics()
        self.quiet = quiet

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host}:{port}"


class _Handler(BaseHTTPRequestHandler):
    server: InferenceServer
    protocol_version = "HTTP/1.1"  # keep-alive: a profiling client reuses its connection
    server_version = "metaedge-runtime/1"

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
        if not self.server.quiet:
            super().log_message(format, *args)

    def _send(self, status: int, body: dict[str, Any]) -> None:
        data = (json.dumps(body) + "\n").encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:  # noqa: N802 - stdlib name
        path = self.path.split("?", 1)[0]
        if path == "/healthz":
            self._send(200, {"status": "ok", **self.server.model.describe()})
        elif path == "/metrics":
            self._send(200, {**self.server.metrics.snapshot(), "backend": self.server.model.backend})
        else:
            self._send(404, {"error": f"no route GET {path}; use /healthz, /metrics or POST /infer"})

    def do_POST(self) -> None:  # noqa: N802
        t0 = time.perf_counter()
        path = self.path.split("?", 1)[0]
        infer_ms: float | None = None
        batch = 0
        try:
            if path != "/infer":
                raise _HTTPError(404, f"no route POST {path}; use POST /infer")
            x = self._read_input()
            batch = int(x.shape[0])
            logits, infer_ms = self.server.model.infer(x)
            body = {
                "logits": logits.tolist(),
                "top1": np.argmax(logits, axis=1).astype(int).tolist(),
                "shape": list(logits.shape),
                "latency_ms": infer_ms,
                "backend": self.server.model.backend,
            }
            status = 200
        except _HTTPError as exc:
            status, body = exc.status, {"error": str(exc)}
        except InputError as exc:
            status, body = 400, {"error": str(exc)}
        except Exception as exc:  # a bug or runtime failure: report it, keep serving
            traceback.print_exc(file=sys.stderr)
            status, body = 500, {"error": f"inference failed: {type(exc).__name__}: {exc}"}
        self.server.metrics.record(status, (time.perf_counter() - t0) * 1e3, infer_ms, batch)
        if status >= 400 and status != 404:
            self.close_connection = True  # the body may not have been read; do not reuse the socket
        self._send(status, body)

    def _read_input(self) -> np.ndarray:
        length_header = self.headers.get("Content-Length")
        if length_header is None:
            raise _HTTPError(411, "Content-Length header required")
        try:
            length = int(length_header)
        except ValueError:
            raise _HTTPError(400, f"bad Content-Length {length_header!r}") from None
        if length < 0 or length > MAX_BODY_BYTES:
            raise _HTTPError(413, f"body of {length} bytes exceeds the {MAX_BODY_BYTES}-byte limit")
        data = self.rfile.read(length)
        ctype = (self.headers.get("Content-Type") or "application/json").split(";", 1)[0].strip().lower()
        spec = self.server.model.spec
        if ctype in NPY_TYPES:
            return npy_from_bytes(data, spec)
        if ctype in IMAGE_TYPES:
            return load_image(data, spec)
        if ctype == "application/json":
            try:
                payload = json.loads(data)
            except (json.JSONDecodeError, UnicodeDecodeError) as exc:
                raise InputError(f"body is not valid JSON ({exc})") from None
            if not isinstance(payload, dict) or "input" not in payload:
                raise InputError('JSON body must be an object {"input": [[[[...]]]]}')
            return spec.from_nested_list(payload["input"])
        raise _HTTPError(415, f"unsupported Content-Type {ctype!r}; use application/json or application/x-npy")


def make_server(model: LoadedModel, host: str = "127.0.0.1", port: int = 8080, quiet: bool = True) -> InferenceServer:
    return InferenceServer((host, port), model, quiet)
