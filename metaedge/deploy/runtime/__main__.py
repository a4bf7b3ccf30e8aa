"""``python -m metaedge.deploy.runtime serve|run`` -- the device-side entry point (no torch)."""
from __future__ import annotations

import argparse
import json
import os
import signal
import sys
from typing import Sequence

import numpy as np

from metaedge.deploy.runtime.engines import ENGINES
from metaedge.deploy.runtime.errors import InputError
from metaedge.deploy.runtime.inputs import load_input_file
from metaedge.deploy.runtime.model import load_model
from metaedge.deploy.runtime.server import make_server
from metaedge.errors import EXIT_USAGE, MetaedgeError

__all__ = ["main"]


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m metaedge.deploy.runtime", description="metaedge device runtime (torch-free)")
    sub = p.add_subparsers(dest="cmd", required=True)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--artifact", default=os.environ.get("METAEDGE_ARTIFACT", "."), help="artifact directory with manifest.json")
    common.add_argument("--backend", choices=ENGINES, default=os.environ.get("METAEDGE_BACKEND") or None,
                        help="runtime to use (default: from the manifest, else the best one present)")
    common.add_argument("--model", default=None, help="model file inside the artifact (default: from the manifest)")
    common.add_argument("--threads", type=int, default=int(os.environ.get("METAEDGE_THREADS", "1")))
    common.add_argument("--cache-dir", default=os.environ.get("METAEDGE_CACHE_DIR"),
                        help="where device-built engines (TensorRT) are cached")
    s = sub.add_parser("serve", parents=[common], help="serve /healthz, /infer, /metrics over HTTP")
    s.add_argument("--host", default=os.environ.get("METAEDGE_HOST", "127.0.0.1"))
    s.add_argument("--port", type=int, default=int(os.environ.get("METAEDGE_PORT", "8080")), help="0 picks a free port")
    s.add_argument("--verbose", action="store_true", help="log every request")
    r = sub.add_parser("run", parents=[common], help="run inference on .npy or image files")
    r.add_argument("inputs", nargs="+", help=".npy arrays ([C,H,W] or [N,C,H,W] float32) or images")
    r.add_argument("--json", action="store_true", help="print one JSON object per input")
    return p


def _raise_interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        model = load_model(args.artifact, args.backend, args.model, args.threads, args.cache_dir)
        if args.cmd == "serve":
            server = make_server(model, args.host, args.port, quiet=not args.verbose)
            # One parseable line: tests and supervisors wait for it (port 0 resolves here).
            # As PID 1 in a container SIGTERM is ignored by default; make `docker stop` shut down cleanly.
            signal.signal(signal.SIGTERM, _raise_interrupt)
            print(f"metaedge-runtime serving {model.spec.name} ({model.backend}) on {server.url}", flush=True)
            try:
                server.serve_forever()
            except KeyboardInterrupt:
                pass
            finally:
                server.server_close()
            return 0
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
