"""``metaedge profile``: latency of an ONNX file or artifact directory with ONNX Runtime on this machine,
and/or of running runtime bundles over HTTP (``--url``): per batch size, latency distribution,
throughput, peak memory and model size; as a table, ``--json`` and a ``--plot`` PNG."""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

from metaedge.cli._common import check_onnx_file, console, positive_int

__all__ = ["add_parser", "run"]


def add_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "profile",
        help="measure latency of an ONNX model",
        description="Time an ONNX model (or an artifact directory's model.onnx) with ONNX Runtime: warm-up, repeats, p50/p90/p99. With --url, time a running bundle's /infer over HTTP.",
    )
    p.add_argument("model", nargs="?", help="model.onnx or an artifact directory (optional with --url)")
    p.add_argument("--input-shape", help="N,C,H,W (default: from the model, batch 1)")
    p.add_argument("--threads", type=positive_int, default=1)
    p.add_argument("--repeats", type=positive_int, default=100)
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument(
        "--url",
        action="append",
        default=[],
        metavar="http://HOST:PORT",
        help="also profile a running bundle (`docker run` of a `metaedge deploy` image) via /infer; repeatable",
    )
    p.add_argument("--batch-sizes", type=_batch_list, default=None, metavar="1,4,8", help="batch sizes to time (default: the --input-shape batch, else 1)")
    p.add_argument("--json", type=Path, default=None, metavar="FILE", help="write all results as JSON")
    p.add_argument("--plot", type=Path, default=None, metavar="FILE.png", help="latency histogram + percentiles (matplotlib)")
    return p


def _batch_list(text: str) -> tuple[int, ...]:
    try:
        sizes = tuple(int(s) for s in text.split(",") if s.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of batch sizes") from None
    if not sizes or any(b < 1 for b in sizes):
        raise argparse.ArgumentTypeError(f"{text!r}: batch sizes must be whole numbers >= 1")
    return sizes


def resolve_onnx(path_text: str) -> Path:
    path = Path(path_text)
    if path.is_dir():
        path = path / "model.onnx"
    check_onnx_file(path)
    return path


def model_input_shape(onnx_path: Path, shape_text: str | None) -> tuple[int, ...]:
    """The input shape to time: the model's own (dynamic batch -> 1), or ``--input-shape`` if it fits."""
    import onnx

    from metaedge.errors import MetaedgeError

    dims = onnx.load(str(onnx_path), load_external_data=False).graph.input[0].type.tensor_type.shape.dim
    declared = [d.dim_value if d.HasField("dim_value") else None for d in dims]
    if shape_text is None:
        return tuple(d if d else 1 for d in declared)
    try:
        shape = tuple(int(s) for s in shape_text.replace("x", ",").split(","))
    except ValueError:
        raise MetaedgeError(f"--input-shape {shape_text!r} is not a comma-separated list of integers", "pass e.g. --input-shape 1,3,224,224") from None
    if len(shape) != len(declared) or any(d is not None and d != s for d, s in zip(declared, shape)):
        want = ",".join("N" if d is None else str(d) for d in declared)
        raise MetaedgeError(
            f"--input-shape {shape_text} does not match {onnx_path}'s input {want}", f"pass --input-shape {want.replace('N', '1')} or leave it out"
        )
    return shape


def _rss_mb() -> tuple[float | None, float | None]:
    """(current RSS, peak RSS) of this process in MB; psutil if present, else /proc + resource."""
    from metaedge.deploy.runtime.metrics import memory_mb

    mem = memory_mb()
    try:
        import psutil

        mem["rss_mb"] = psutil.Process().memory_info().rss / 2**20
    except ImportError:
        pass
    return mem.get("rss_mb"), mem.get("peak_rss_mb")


def _profile_local(path: Path, shape: tuple[int, ...], batches: tuple[int, ...], args: argparse.Namespace) -> list[dict[str, Any]]:
    import numpy as np

    from metaedge.deploy.backends.onnxruntime import OrtRunner
    from metaedge.errors import MetaedgeError
    from metaedge.latency import summarize

    rss_before, _ = _rss_mb()
    runner = OrtRunner(path, threads=args.threads)
    rows = []
    for batch in batches:
        x = np.random.default_rng(0).standard_normal((batch, *shape[1:])).astype(np.float32)
        try:
            for _ in range(max(0, args.warmup)):
                runner.run(x)
        except Exception as exc:  # a static-batch model refuses other batch sizes
            raise MetaedgeError(
                f"{path} does not run with batch {batch} ({type(exc).__name__})",
                "the model has a fixed batch; drop --batch-sizes or re-export with a dynamic batch",
            ) from exc
        samples = []
        t_start = time.perf_counter()
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            runner.run(x)
            samples.append((time.perf_counter() - t0) * 1e3)
        wall = time.perf_counter() - t_start
        rss, peak = _rss_mb()
        rows.append(
            {
                "source": f"ort/{args.threads}t",
                "where": str(path),
                "batch": batch,
                "latency": summarize(samples).to_dict(),
                "samples_ms": samples,
                "throughput_sps": batch * args.repeats / wall,
                "rss_mb": rss,
                "peak_rss_mb": peak,
                "session_mb": (rss - rss_before) if rss is not None and rss_before is not None else None,
                "model_bytes": path.stat().st_size,
            }
        )
    return rows


def _profile_url(url: str, batches: tuple[int, ...], args: argparse.Namespace) -> list[dict[str, Any]]:
    from metaedge.deploy.measure.base import MeasureInput
    from metaedge.deploy.measure.http import HttpRunner, HttpRunnerConfig
    from metaedge.latency import TimingConfig
    from metaedge.targets.http import HttpRuntimeClient

    runner = HttpRunner(HttpRunnerConfig(url, TimingConfig(warmup=max(0, args.warmup), repeats=args.repeats)))
    results = runner.run([MeasureInput(None, batch=b) for b in batches])
    client = HttpRuntimeClient(url)
    try:
        health, metrics = client.health(), client.metrics()
    finally:
        client.close()
    rows = []
    for r in results:
        rows.append(
            {
                "source": f"http/{health.get('backend', '?')}",
                "where": r.measured_on,
                "batch": r.detail["batch"],
                "latency": r.latency.to_dict(),
                "server_latency": r.detail["server"],
                "samples_ms": list(r.samples_ms),
                "throughput_sps": r.detail["throughput_sps"],
                "rss_mb": metrics.get("rss_mb"),
                "peak_rss_mb": metrics.get("peak_rss_mb"),
                "model_bytes": health.get("model_bytes"),
                "payload_bytes": r.detail["payload_bytes"],
            }
        )
    return rows


def _fmt(v: float | None, spec: str = ".3f") -> str:
    return "-" if v is None else format(v, spec)


def _table(rows: list[dict[str, Any]]):
    from rich.table import Table

    t = Table(title="metaedge profile (ms; samples/s; MB)")
    for col in ("source", "N", "p50", "p90", "p99", "mean", "srv p50", "samp/s", "peak RSS", "model"):
        t.add_column(col, justify="left" if col == "source" else "right", no_wrap=col == "source")
    for r in rows:
        lat, srv = r["latency"], r.get("server_latency")
        t.add_row(
            r["source"],
            str(r["batch"]),
            _fmt(lat["p50_ms"]),
            _fmt(lat["p90_ms"]),
            _fmt(lat["p99_ms"]),
            _fmt(lat["mean_ms"]),
            _fmt(srv["p50_ms"]) if srv else "-",
            _fmt(r["throughput_sps"], ".0f"),
            _fmt(r.get("peak_rss_mb"), ".1f"),
            _fmt(r["model_bytes"] / 2**20 if r.get("model_bytes") else None, ".2f"),
        )
    return t


def run(args: argparse.Namespace) -> int:
    from metaedge.artifacts import atomic_write_json
    from metaedge.errors import MetaedgeError

    if args.model is None and not args.url:
        raise MetaedgeError("nothing to profile", "pass a model.onnx / artifact directory, or --url http://HOST:PORT of a running bundle")
    out = console()
    rows: list[dict[str, Any]] = []
    if args.model is not None:
        path = resolve_onnx(args.model)
        shape = model_input_shape(path, args.input_shape)
        batches = args.batch_sizes or (shape[0],)
        local = _profile_local(path, shape, batches, args)
        for r in local:
            lat = r["latency"]
            out.print(
                f"{path} input {(r['batch'], *shape[1:])} onnxruntime {args.threads} thread(s): p50 {lat['p50_ms']:.3f} ms, p90 {lat['p90_ms']:.3f} ms, p99 {lat['p99_ms']:.3f} ms over {lat['repeats']} runs"
            )
        rows += local
    for url in args.url:
        rows += _profile_url(url, args.batch_sizes or (1,), args)
    if len(rows) > 1 or args.url:
        out.print(_table(rows))
    if args.json:
        atomic_write_json(
            args.json,
            {
                "schema_version": 1,
                "repeats": args.repeats,
                "warmup": args.warmup,
                "threads": args.threads,
                "results": [{k: v for k, v in r.items() if k != "samples_ms"} | {"samples_ms": [round(s, 4) for s in r["samples_ms"]]} for r in rows],
            },
        )
        out.print(f"wrote {args.json}")
    if args.plot:
        from metaedge.report.plots import plot_latency

        series = {
            f"{r['source']} b{r['batch']}" + (f" @{r['where']}" if r["where"].startswith("http") and len(args.url) > 1 else ""): r["samples_ms"] for r in rows
        }
        plot_latency(series, args.plot, title="metaedge profile")
        out.print(f"wrote {args.plot}")
    return 0
