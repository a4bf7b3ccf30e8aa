"""The HTTP inference server (stdlib only): /healthz, /infer, /metrics.

POST /infer takes JSON ``{"input": nested list}``, raw ``.npy`` bytes (``Content-Type:
application/x-npy``) or an image, and answers ``{"logits": [[...]], "top1": [...], ...}``.

One asyncio event loop owns every connection, so idle keep-alive clients and slow or dead sockets
cost a coroutine, not a thread; inference runs on a fixed pool of threads (:class:`Scheduler`).
Every resource a client can hold is bounded (see :class:`ServeConfig`): the listen backlog,
open connections, admitted requests and their bytes (503 + ``Retry-After`` beyond), the body size
(checked against Content-Length before reading), and read/idle/write timeouts. Bad requests get a
4xx with ``{"error": message}``; only a failure in the model path is a 500, and serving goes on.

Lifecycle: ``/healthz`` answers 503 until :meth:`InferenceServer.set_model` has loaded and warmed the
model; :meth:`shutdown` (SIGTERM in the CLI) stops accepting, lets in-flight requests finish for up
to ``drain_timeout_s`` and closes idle connections.
"""

from __future__ import annotations

import asyncio
import signal
import socket
import sys
import threading
import time
import traceback
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Dict, Optional, Set, Tuple

import numpy as np

from metaedge.deploy.runtime import http11
from metaedge.deploy.runtime.config import MAX_BODY_BYTES, ServeConfig
from metaedge.deploy.runtime.errors import InputError, UnsupportedContentType
from metaedge.deploy.runtime.http11 import HttpError, Request
from metaedge.deploy.runtime.inputs import IMAGE_TYPES, decode_request
from metaedge.deploy.runtime.metrics import Metrics
from metaedge.deploy.runtime.model import LoadedModel
from metaedge.deploy.runtime.scheduler import Scheduler

__all__ = ["MAX_BODY_BYTES", "InferenceServer", "make_server"]

# Below these sizes decoding/encoding on the event loop is cheaper than a hop to a thread.
_INLINE_DECODE_BYTES = 64 << 10
_INLINE_ENCODE_VALUES = 1 << 14
_RETRY = (("Retry-After", "1"),)
_LINGER_S = 2.0  # after an early error answer, read what the client still sends so it sees no reset
_TIMED_OUT = http11.json_response(408, {"error": "request not received within the read timeout"}, keep_alive=False)


class _Conn:
    """One client connection: its handler task, whether a request is in progress (drain waits for
    it), and one timer that closes the socket when the current phase (idle, reading, writing)
    overruns. A timer per phase costs far less than ``wait_for`` around every read."""

    __slots__ = ("task", "busy", "_transport", "_loop", "_timer", "_metrics")

    def __init__(self, writer: asyncio.StreamWriter, metrics: Metrics) -> None:
        self.task: "Optional[asyncio.Task[Any]]" = asyncio.current_task()
        self.busy = False
        self._transport = writer.transport
        self._loop = asyncio.get_running_loop()
        self._timer: Optional[asyncio.TimerHandle] = None
        self._metrics = metrics

    def arm(self, seconds: float, event: str, answer: bytes = b"") -> None:
        self.disarm()
        self._timer = self._loop.call_later(seconds, self._expire, event, answer)

    def disarm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _expire(self, event: str, answer: bytes) -> None:
        self._timer = None
        self._metrics.count(event)
        if answer and not self._transport.is_closing():
            self._transport.write(answer)
        self._transport.close()  # the pending read sees EOF and the handler returns


class InferenceServer:
    def __init__(self, config: ServeConfig, model: Optional[LoadedModel] = None) -> None:
        self.config = config
        self.metrics = Metrics()
        self.model: Optional[LoadedModel] = None
        self.batching: Dict[str, Any] = {"max_batch": 1, "timeout_ms": 0.0, "note": "off"}
        self._scheduler: Optional[Scheduler] = None
        self._state = "loading"  # -> ready -> draining
        self._sock = _listen(config.host, config.port, config.backlog)
        self.server_address: Tuple[str, int] = self._sock.getsockname()[:2]
        self._loop: Optional[asyncio.AbstractEventLoop] = None
        self._stop: Optional[asyncio.Event] = None
        self._stop_early = False
        self._lifecycle = threading.Lock()  # serve_forever vs shutdown from another thread
        self._done = threading.Event()
        self._conns: Set[_Conn] = set()
        self._admitted = 0
        self._admitted_bytes = 0
        self._pool = ThreadPoolExecutor(config.workers, thread_name_prefix="metaedge-decode")
        if model is not None:
            self.set_model(model)

    @property
    def url(self) -> str:
        host, port = self.server_address
        return f"http://{host}:{port}"

    @property
    def state(self) -> str:
        return self._state

    # --- lifecycle ---------------------------------------------------------------------------
    def set_model(self, model: LoadedModel, warmup: bool = True) -> None:
        """Warm ``model`` up, start the inference pool and turn /healthz green (any thread)."""
        cfg = self.config
        limit = model.batch_limit
        batch = cfg.max_batch if limit is None else min(cfg.max_batch, limit)
        if cfg.max_batch > 1 and batch <= 1:
            note = f"off: {model.path.name} takes a fixed batch of {limit} (export with a dynamic batch axis)"
        elif batch > 1:
            note = f"on: up to {batch} samples, {cfg.batch_timeout_ms:g} ms wait"
        else:
            note = "off"
        if warmup:
            model.warmup((1, batch) if batch > 1 else (1,))
        self.batching = {"max_batch": batch, "timeout_ms": cfg.batch_timeout_ms if batch > 1 else 0.0, "note": note}
        self._scheduler = Scheduler(model.infer, cfg.workers, batch, cfg.batch_timeout_ms, self.metrics.record_batch)
        self.model = model
        if self._state == "loading":
            self._state = "ready"

    def serve_forever(self, handle_signals: bool = False) -> None:
        """Serve until :meth:`shutdown` (or SIGTERM/SIGINT with ``handle_signals``, main thread only)."""
        with self._lifecycle:
            if self._stop_early:  # shut down before it started
                self._done.set()
                return
            loop = self._loop = asyncio.new_event_loop()
        try:
            asyncio.set_event_loop(loop)
            loop.run_until_complete(self._serve(handle_signals))
        finally:
            try:
                _cancel_all(loop)
                loop.run_until_complete(loop.shutdown_asyncgens())
            finally:
                asyncio.set_event_loop(None)
                loop.close()
                self._done.set()

    def request_stop(self) -> None:
        """Begin draining from any thread; returns at once."""
        with self._lifecycle:
            loop = self._loop
            if loop is None:
                self._stop_early = True
                return
        try:
            loop.call_soon_threadsafe(self._begin_stop)
        except RuntimeError:  # the loop already closed
            pass

    def shutdown(self) -> None:
        """Drain and stop ``serve_forever``; blocks until it returned."""
        self.request_stop()
        with self._lifecycle:
            started = self._loop is not None
        if started:
            self._done.wait(self.config.drain_timeout_s + 10)

    def server_close(self) -> None:
        self._sock.close()
        if self._scheduler is not None:
            self._scheduler.stop(timeout=1.0)
        self._pool.shutdown(wait=False)

    def _begin_stop(self) -> None:
        self._state = "draining"
        if self._stop is not None:
            self._stop.set()

    async def _serve(self, handle_signals: bool) -> None:
        loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        if self._stop_early or self._state == "draining":
            self._stop.set()
        server = await asyncio.start_server(self._on_connection, sock=self._sock, backlog=self.config.backlog, limit=http11.MAX_HEAD_BYTES)
        if handle_signals:
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(sig, self._begin_stop)
        try:
            await self._stop.wait()
        finally:
            self._state = "draining"
            server.close()  # no new connections; the kernel refuses them from here on
            for conn in list(self._conns):
                if not conn.busy and conn.task is not None:
                    conn.task.cancel()  # idle keep-alive or a head still trickling in
            end = loop.time() + self.config.drain_timeout_s
            while any(c.busy for c in self._conns) and loop.time() < end:
                await asyncio.sleep(0.01)
            tasks = [c.task for c in self._conns if c.task is not None]
            for task in tasks:
                task.cancel()
            if tasks:  # let cancelled handlers close their sockets
                await asyncio.wait(tasks, timeout=1.0)
            if handle_signals:
                for sig in (signal.SIGTERM, signal.SIGINT):
                    loop.remove_signal_handler(sig)
            if self._scheduler is not None:
                await loop.run_in_executor(None, self._scheduler.stop, 2.0)

    # --- connections -------------------------------------------------------------------------
    async def _on_connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conn = _Conn(writer, self.metrics)
        self._conns.add(conn)
        self.metrics.count("opened")
        try:
            if len(self._conns) > self.config.max_connections or self._state == "draining":
                self.metrics.count("refused")
                await self._error_and_close(conn, reader, writer, HttpError(503, "too many connections; retry", _RETRY))
                return
            await self._serve_connection(conn, reader, writer)
        except (ConnectionError, OSError, asyncio.IncompleteReadError, asyncio.TimeoutError):
            pass  # the client went away, or a timer closed a slow or idle connection
        except asyncio.CancelledError:
            pass  # drain closed an idle connection
        except Exception:  # a bug here must not take the server down
            traceback.print_exc(file=sys.stderr)
        finally:
            conn.disarm()
            self._conns.discard(conn)
            writer.close()

    async def _serve_connection(self, conn: _Conn, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        cfg = self.config
        while True:
            conn.arm(cfg.idle_timeout_s, "idle_closed")
            try:
                line = await http11.read_request_line(reader)
                if line is None:
                    return  # closed by the client, or idle past idle_timeout_s
                # From the first line on, the whole request (head and body) has read_timeout_s.
                conn.arm(cfg.read_timeout_s, "read_timeout", _TIMED_OUT)
                req = await http11.read_head(reader, line)
                conn.busy = True
                keep = await self._handle(conn, req, reader, writer)
            except HttpError as exc:
                self.metrics.count("bad_request")
                await self._error_and_close(conn, reader, writer, exc)
                return
            finally:
                conn.busy = False
            if not keep or self._state == "draining":
                return

    async def _write(self, conn: _Conn, writer: asyncio.StreamWriter, data: bytes) -> None:
        writer.write(data)
        if writer.transport.get_write_buffer_size():  # the kernel did not take it all: wait, bounded
            conn.arm(self.config.read_timeout_s, "write_timeout")
            await writer.drain()
            conn.disarm()

    async def _error_and_close(self, conn: _Conn, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, exc: HttpError) -> None:
        """Answer, then close gracefully: half-close, and read what the client still sends for a
        moment, so an unread request body does not turn the close into a TCP reset."""
        conn.disarm()
        await self._write(conn, writer, http11.json_response(exc.status, {"error": str(exc)}, False, exc.headers))
        if writer.can_write_eof():
            writer.write_eof()
        loop = asyncio.get_running_loop()
        end, budget = loop.time() + _LINGER_S, self.config.max_body_bytes
        while budget > 0 and loop.time() < end:
            data = await asyncio.wait_for(reader.read(65536), end - loop.time())
            if not data:
                break
            budget -= len(data)

    # --- requests ----------------------------------------------------------------------------
    async def _handle(self, conn: _Conn, req: Request, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        """Answer one request; True when the connection stays open for the next one."""
        t0 = time.perf_counter()
        keep = req.keep_alive and self._state != "draining"
        if req.method == "POST" and req.path == "/infer":
            return await self._infer(conn, req, reader, writer, t0, keep)
        length = req.content_length(required=False)
        if length > self.config.max_body_bytes:
            raise HttpError(413, f"body of {length} bytes exceeds the {self.config.max_body_bytes}-byte limit")
        await http11.read_body(reader, length)  # discarded, so the connection stays usable
        conn.disarm()
        status, payload, headers = self._route(req)
        await self._write(conn, writer, http11.json_response(status, payload, keep, headers))
        return keep

    def _route(self, req: Request) -> Tuple[int, Dict[str, Any], Tuple[Tuple[str, str], ...]]:
        if req.method not in ("GET", "POST"):
            return 405, {"error": f"method {req.method} not allowed; use GET or POST"}, (("Allow", "GET, POST"),)
        if req.method == "GET" and req.path == "/healthz":
            if self._state != "ready" or self.model is None:
                return 503, {"status": self._state}, _RETRY
            return 200, {"status": "ok", **self.model.describe(), "batching": self.batching}, ()
        if req.method == "GET" and req.path == "/metrics":
            return 200, self._metrics(), ()
        if req.method == "GET":
            return 404, {"error": f"no route GET {req.path}; use /healthz, /metrics or POST /infer"}, ()
        return 404, {"error": f"no route POST {req.path}; use POST /infer"}, ()

    def _metrics(self) -> Dict[str, Any]:
        sched = self._scheduler
        gauges = {
            "backend": self.model.backend if self.model is not None else None,
            "state": self._state,
            "queue": {
                "depth": sched.depth if sched else 0,
                "max_depth": sched.max_depth if sched else 0,
                "in_flight": self._admitted,
                "limit": self.config.queue_limit,
            },
            "open_connections": len(self._conns),
            "batching": self.batching,
        }
        return self.metrics.snapshot(gauges)

    async def _infer(self, conn: _Conn, req: Request, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, t0: float, keep: bool) -> bool:
        cfg = self.config
        try:
            length = req.content_length(required=True)
            if length > cfg.max_body_bytes:
                raise HttpError(413, f"body of {length} bytes exceeds the {cfg.max_body_bytes}-byte limit")
            if self._state != "ready" or self._scheduler is None:
                raise HttpError(503, f"not ready ({self._state}); retry", _RETRY)
            if self._admitted >= cfg.queue_limit or self._admitted_bytes + length > cfg.inflight_bytes:
                raise HttpError(503, f"queue full ({self._admitted} requests in flight); retry", _RETRY)
        except HttpError as exc:
            self.metrics.record(exc.status, (time.perf_counter() - t0) * 1e3)
            raise
        # Admitted: counted until answered, so the queue and the bodies in memory stay bounded.
        self._admitted += 1
        self._admitted_bytes += length
        try:
            if req.expects_continue:
                await self._write(conn, writer, b"HTTP/1.1 100 Continue\r\n\r\n")
            body = await http11.read_body(reader, length)
            conn.disarm()
            status, answer, ms = await self._run(req.content_type, body)
            keep = keep and self._state != "draining"  # drain began meanwhile: tell the client
            if status != 200:
                data = http11.json_response(status, answer, keep)
            elif answer["logits"].size <= _INLINE_ENCODE_VALUES:
                data = _encode(answer, keep)
            else:
                data = await asyncio.get_running_loop().run_in_executor(self._pool, _encode, answer, keep)
        finally:
            self._admitted -= 1
            self._admitted_bytes -= length
        total_ms = (time.perf_counter() - t0) * 1e3
        self.metrics.record(status, total_ms, ms.get("infer"), int(ms.get("samples", 0)), ms.get("queue"))
        if not cfg.quiet:
            print(f"POST /infer {status} {total_ms:.2f} ms", file=sys.stderr, flush=True)
        await self._write(conn, writer, data)
        return keep

    async def _run(self, ctype: str, body: bytes) -> Tuple[int, Dict[str, Any], Dict[str, float]]:
        """(status, answer or error payload, stage timings) for one /infer body."""
        model, sched = self.model, self._scheduler
        assert model is not None and sched is not None
        try:
            if len(body) <= _INLINE_DECODE_BYTES and ctype not in IMAGE_TYPES:
                x = decode_request(body, ctype, model.spec)
            else:
                x = await asyncio.get_running_loop().run_in_executor(self._pool, decode_request, body, ctype, model.spec)
            res = await asyncio.wrap_future(sched.submit(x))
            answer = {
                "logits": res.logits,
                "shape": list(res.logits.shape),
                "latency_ms": res.infer_ms,
                "queue_ms": res.queue_ms,
                "batch": res.batch,
                "backend": model.backend,
            }
            return 200, answer, {"infer": res.infer_ms, "queue": res.queue_ms, "samples": x.shape[0]}
        except UnsupportedContentType as exc:
            return 415, {"error": str(exc)}, {}
        except InputError as exc:
            return 400, {"error": str(exc)}, {}
        except Exception as exc:  # a bug or runtime failure: report it, keep serving
            traceback.print_exc(file=sys.stderr)
            return 500, {"error": f"inference failed: {type(exc).__name__}: {exc}"}, {}


def _encode(answer: Dict[str, Any], keep: bool) -> bytes:
    logits = answer["logits"]
    body = {**answer, "logits": logits.tolist(), "top1": np.argmax(logits, axis=1).astype(int).tolist()}
    return http11.json_response(200, body, keep)


def _cancel_all(loop: asyncio.AbstractEventLoop) -> None:
    """Cancel what is left (as ``asyncio.run`` does) so no task is destroyed while pending."""
    pending = [t for t in asyncio.all_tasks(loop) if not t.done()]
    for task in pending:
        task.cancel()
    if pending:
        loop.run_until_complete(asyncio.wait(pending, timeout=2.0))


def _listen(host: str, port: int, backlog: int) -> socket.socket:
    """Bind and listen now, so the port is known (port 0) and early connects queue in the backlog."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    family, socktype, proto, _, addr = infos[0]
    sock = socket.socket(family, socktype, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(addr)
        sock.listen(backlog)
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    return sock


def make_server(
    model: Optional[LoadedModel], host: str = "127.0.0.1", port: int = 8080, quiet: bool = True, config: Optional[ServeConfig] = None
) -> InferenceServer:
    """A bound server for ``model`` (None: load later with ``set_model``; /healthz says 503 until then)."""
    if config is None:
        config = ServeConfig(host=host, port=port, quiet=quiet)
    return InferenceServer(config, model)
