"""``python -m metaedge.deploy.runtime serve|run`` -- the device-side entry point (no torch)."""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
from typing import Sequence

import numpy as np

from metaedge.deploy.runtime.config import ServeConfig, default_workers
from metaedge.deploy.runtime.engines import ENGINES
from metaedge.deploy.runtime.errors import InputError
from metaedge.deploy.runtime.inputs import load_input_file
from metaedge.deploy.runtime.model import LoadedModel, load_model
from metaedge.deploy.runtime.server import make_server
from metaedge.errors import EXIT_USAGE, MetaedgeError

__all__ = ["main"]


def _env_float(name: str, default: float) -> float:
    return float(os.environ.get(name) or default)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m metaedge.deploy.runtime", description="metaedge device runtime (torch-free)")
    sub = p.add_subparsers(dest="cmd", required=True)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--artifact", default=os.environ.get("METAEDGE_ARTIFACT", "."), help="artifact directory with manifest.json")
    common.add_argument(
        "--backend",
        choices=ENGINES,
        default=os.environ.get("METAEDGE_BACKEND") or None,
        help="runtime to use (default: the one the compile stage chose for this machine, else onnxruntime)",
    )
    common.add_argument("--model", default=None, help="model file inside the artifact (default: from the manifest)")
    common.add_argument("--threads", type=int, default=int(os.environ.get("METAEDGE_THREADS", "1")), help="intra-op threads per inference")
    common.add_argument("--cache-dir", default=os.environ.get("METAEDGE_CACHE_DIR"), help="where device-built engines (TensorRT) are cached")
    s = sub.add_parser("serve", parents=[common], help="serve /healthz, /infer, /metrics over HTTP")
    s.add_argument("--host", default=os.environ.get("METAEDGE_HOST", "127.0.0.1"))
    s.add_argument("--port", type=int, default=int(os.environ.get("METAEDGE_PORT", "8080")), help="0 picks a free port")
    s.add_argument(
        "--workers", type=int, default=int(os.environ.get("METAEDGE_WORKERS") or 0), help="inference threads (default: cores / --threads, at most 8)"
    )
    s.add_argument(
        "--max-batch",
        type=int,
        default=int(os.environ.get("METAEDGE_MAX_BATCH") or 1),
        help="dynamic batching: gather concurrent requests into batches of up to N samples (default 1: off)",
    )
    s.add_argument(
        "--batch-timeout-ms", type=float, default=_env_float("METAEDGE_BATCH_TIMEOUT_MS", 2.0), help="how long a batch waits for more requests (default 2)"
    )
    s.add_argument(
        "--queue-limit",
        type=int,
        default=int(os.environ.get("METAEDGE_QUEUE_LIMIT") or 128),
        help="requests in flight before new ones get 503 + Retry-After (default 128)",
    )
    s.add_argument(
        "--max-body-mb", type=float, default=_env_float("METAEDGE_MAX_BODY_MB", 64.0), help="largest request body, checked before reading it (default 64)"
    )
    s.add_argument(
        "--read-timeout", type=float, default=_env_float("METAEDGE_READ_TIMEOUT", 30.0), help="seconds a started request may take to arrive (default 30)"
    )
    s.add_argument(
        "--idle-timeout", type=float, default=_env_float("METAEDGE_IDLE_TIMEOUT", 15.0), help="seconds an idle keep-alive connection stays open (default 15)"
    )
    s.add_argument(
        "--drain-timeout",
        type=float,
        default=_env_float("METAEDGE_DRAIN_TIMEOUT", 8.0),
        help="seconds SIGTERM waits for in-flight requests (default 8; docker stop allows 10)",
    )
    s.add_argument("--verbose", action="store_true", help="log every request")
    r = sub.add_parser("run", parents=[common], help="run inference on .npy or image files")
    r.add_argument("inputs", nargs="+", help=".npy arrays ([C,H,W] or [N,C,H,W] float32) or images")
    r.add_argument("--json", action="store_true", help="print one JSON object per input")
    return p


def _say_choice(model: LoadedModel) -> None:
    # Which backend and why, on stderr: stdout stays parseable (`run --json`, the serving line).
    print(f"metaedge-runtime: {model.backend} on {model.file}: {model.reason}", file=sys.stderr, flush=True)


def _serve(args: argparse.Namespace) -> int:
    cfg = ServeConfig(
        host=args.host,
        port=args.port,
        workers=args.workers or default_workers(args.threads),
        queue_limit=args.queue_limit,
        max_body_bytes=int(args.max_body_mb * (1 << 20)),
        read_timeout_s=args.read_timeout,
        idle_timeout_s=args.idle_timeout,
        drain_timeout_s=args.drain_timeout,
        max_batch=args.max_batch,
        batch_timeout_ms=args.batch_timeout_ms,
        quiet=not args.verbose,
    )
    try:
        server = make_server(None, config=cfg)
    except OSError as exc:
        raise MetaedgeError(
            f"cannot listen on {args.host}:{args.port} ({exc.strerror or exc})", "pick another --port (0 picks a free one) or stop the other server"
        ) from None
    failure: list[BaseException] = []

    def load() -> None:  # /healthz answers 503 meanwhile (a TensorRT build can take minutes)
        try:
            model = load_model(args.artifact, args.backend, args.model, args.threads, args.cache_dir)
            _say_choice(model)
            server.set_model(model)
            if args.max_batch > 1:
                print(f"metaedge-runtime: batching {server.batching['note']}", file=sys.stderr, flush=True)
            # One parseable line: tests and supervisors wait for it (port 0 resolves here).
            print(f"metaedge-runtime serving {model.spec.name} ({model.backend}) on {server.url}", flush=True)
        except BaseException as exc:  # reported by the main thread, which exits with it
            failure.append(exc)
            server.request_stop()

    threading.Thread(target=load, name="metaedge-load", daemon=True).start()
    try:
        server.serve_forever(handle_signals=True)  # SIGTERM/SIGINT: drain in-flight requests, then return
    finally:
        server.server_close()
    if failure:
        err = failure[0]
        if isinstance(err, MetaedgeError):
            raise err
        print(f"error: loading the model failed: {type(err).__name__}: {err}", file=sys.stderr)
        return 1
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.cmd == "serve":
            return _serve(args)
        model = load_model(args.artifact, args.backend, args.model, args.threads, args.cache_dir)
        _say_choice(model)
        status = 0
        for path in args.inputs:
            try:
                x = load_input_file(path, model.spec)
            except InputError as exc:
                print(f"error: {path}: {exc}", file=sys.stderr)
                status = EXIT_USAGE
                continue
            logits, ms = model.infer(x)
            top1 = np.argmax(logits, axis=1).astype(int).tolist()
            if args.json:
                print(json.dumps({"input": path, "top1": top1, "logits": logits.tolist(), "latency_ms": ms, "backend": model.backend}))
            else:
                print(f"{path}: top1={top1} latency={ms:.3f} ms ({model.backend})")
        return status
    except MetaedgeError as exc:
        print(f"error: {exc.one_line()}", file=sys.stderr)
        return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
