"""``metaedge compile``: build an exported model for a target and record it in the manifest."""

from __future__ import annotations

import argparse
from pathlib import Path

from metaedge.cli._common import check_onnx_file, nonnegative_int, positive_int
from metaedge.errors import MetaedgeError

__all__ = ["add_parser", "run"]


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "compile",
        help="compile the model for a target (ONNX Runtime / TVM / TensorRT) and pick the fastest",
        description="Compile an artifact directory's model.onnx (or an ONNX file) for --target into "
        "compiled/<target>/<backend>/, check each artifact against ONNX Runtime, time it "
        "(here, or on --device through a TVM RPC tracker) and record the comparison and the "
        "chosen backend in manifest.json under `compiled`.",
    )
    p.add_argument("source", type=Path, nargs="?", default=Path("metaedge-out"), help="artifact directory (default metaedge-out) or an .onnx file")
    p.add_argument("--target", required=True, help="target name (see `metaedge targets`), e.g. x86, rpi4, cuda:sm_90")
    p.add_argument("--backend", default="auto", help="auto (measure all the target's backends, keep the fastest), onnxruntime, tvm, tensorrt, or a comma list")
    p.add_argument("--device", default=None, help="measure on a remote device: tracker-host:port/key or host:port")
    p.add_argument("--out", type=Path, default=None, help="artifact directory to write into when SOURCE is an .onnx file (default: its folder)")
    p.add_argument("--targets-file", type=Path, default=None, help="TOML file with extra targets")
    p.add_argument(
        "--tune-trials",
        type=nonnegative_int,
        default=0,
        help="MetaSchedule trials for TVM before building (0: apply the target's database as it is; see `metaedge tune`)",
    )
    p.add_argument("--tuning-dir", type=Path, default=None, help="TVM tuning database folder (default .metaedge-cache/tvm-tuning/<target>)")
    p.add_argument("--warmup", type=nonnegative_int, default=10)
    p.add_argument("--repeats", type=positive_int, default=50)
    p.add_argument("--threads", type=positive_int, default=1)
    p.add_argument("--no-cache", action="store_true", help="re-measure even when the latency cache has this model")
    return p


def run(args: argparse.Namespace) -> int:
    from metaedge.artifacts import MANIFEST_NAME, ArtifactDir
    from metaedge.deploy.compile import compile_for_target
    from metaedge.deploy.measure.cache import LatencyCache
    from metaedge.latency import TimingConfig
    from metaedge.targets.registry import get_target, load_targets_toml

    if args.targets_file is not None:
        load_targets_toml(args.targets_file)
    target = get_target(args.target)
    src: Path = args.source
    if src.is_dir():
        onnx_path, root = src / "model.onnx", src
    elif src.suffix == ".onnx":
        onnx_path, root = src, args.out or src.parent
    else:
        raise MetaedgeError(f"{src} is neither an artifact directory nor an .onnx file", "pass the folder written by `metaedge compress` or a model.onnx")
    if not onnx_path.is_file():
        raise MetaedgeError(f"{onnx_path} does not exist", "run `metaedge compress` (or export) first")
    check_onnx_file(onnx_path)
    from metaedge.deploy.backends.tvm import TvmOptions

    # The target's database is applied on every compile; --tune-trials adds to it first.
    tvm_options = TvmOptions(tune_trials=args.tune_trials, tuning_dir=args.tuning_dir, tune_device=args.device, threads=args.threads)
    timing = TimingConfig(warmup=args.warmup, repeats=args.repeats, threads=args.threads)
    cache = None if args.no_cache else LatencyCache()  # .metaedge-cache/latency.json in the working dir
    result = compile_for_target(onnx_path, target, root, backends=args.backend, timing=timing, device=args.device, tvm_options=tvm_options, cache=cache)
    if src.is_dir() or args.out is not None or (root / MANIFEST_NAME).exists():
        ArtifactDir(root).update(compiled={target.name: result})
    _print(result, target.name)
    return 0


def _print(entry: dict, target: str) -> None:
    from rich.table import Table

    from metaedge.cli._common import console

    table = Table(title=f"compiled for {target}")
    for col in ("backend", "status", "p50 ms", "p90 ms", "max |err|", "top-1", "path / reason"):
        table.add_column(col, overflow="fold")
    for name, rec in entry.items():
        if not isinstance(rec, dict) or "status" not in rec:
            continue
        lat, par = rec.get("latency") or {}, rec.get("parity") or {}
        mark = " (chosen)" if entry.get("chosen") == name else ""
        table.add_row(
            name + mark,
            rec["status"],
            _f(lat.get("p50_ms")),
            _f(lat.get("p90_ms")),
            _f(par.get("max_abs_err"), "{:.2e}"),
            _f(par.get("top1_agreement"), "{:.2f}"),
            rec.get("path", "") if rec["status"] == "ok" else rec.get("reason", rec.get("path", "")),
        )
    console().print(table)
    console().print(f"chosen: [bold]{entry.get('chosen')}[/bold] ({entry.get('chosen_by')})")


def _f(v, fmt: str = "{:.3f}") -> str:
    return "" if v is None else fmt.format(v)
