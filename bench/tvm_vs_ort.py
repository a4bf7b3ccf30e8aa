"""TVM (untuned default schedules, then MetaSchedule-tuned) against ONNX Runtime, one thread, batch 1.

For each network (fp32, and int8 QDQ from ONNX Runtime's static quantizer) the script times
ONNX Runtime and TVM side by side in one process (alternating rounds, the median of the rounds'
p50s), then tunes the same TVM database in steps (``--trials 64,192,384``: cumulative totals;
measurements already in the database count) until ``--minutes`` of tuning per network are spent,
timing both again after each step. It prints a table, writes JSON + markdown under ``--out`` and a
PNG of latency against trials with ONNX Runtime's line.

    python bench/tvm_vs_ort.py --out bench/results            # the committed table
    python bench/tvm_vs_ort.py --quick --out /tmp/tvm-quick    # smoke run: small model, 16 trials

Weights are random (latency does not depend on them); the int8 models are calibrated on random
inputs for the same reason.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("TVM_NUM_THREADS", "1")

import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def export_models(arch: str, size: int, work: Path) -> dict[str, Path]:
    import torch
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    from metaedge.deploy.export import export_onnx
    from metaedge.zoo import build_model

    torch.manual_seed(0)
    model = build_model(arch, None, num_classes=10, in_chans=1, input_size=size).eval()
    fp32 = work / f"{arch}_{size}_fp32.onnx"
    if not fp32.exists():
        export_onnx(model, torch.randn(1, 1, size, size), fp32)
    int8 = work / f"{arch}_{size}_int8.onnx"
    if not int8.exists():
        rng = np.random.default_rng(0)

        class Reader(CalibrationDataReader):
            def __init__(self) -> None:
                self.batches = iter([{"input": rng.random((8, 1, size, size), dtype=np.float32)} for _ in range(4)])

            def get_next(self):
                return next(self.batches, None)

        # reduce_range: 7-bit weights, as metaedge's `ort` profile, since AVX2 u8s8 kernels saturate.
        quantize_static(
            str(fp32),
            str(int8),
            Reader(),
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            weight_type=QuantType.QInt8,
            activation_type=QuantType.QUInt8,
            reduce_range=True,
        )
    return {"fp32": fp32, "int8": int8}


def side_by_side(onnx_path: Path, lib: Path | None, rounds: int, repeats: int) -> dict[str, float]:
    from metaedge.deploy.backends.onnxruntime import OrtRunner
    from metaedge.deploy.backends.tvm import TvmRunner, time_vm
    from metaedge.latency import TimingConfig, time_callable

    ort = OrtRunner(onnx_path, threads=1)
    x = np.random.default_rng(1).random((1,) + tuple(ort_shape(onnx_path)[1:]), dtype=np.float32)
    cfg = TimingConfig(warmup=10, repeats=repeats)
    tvm_runner = TvmRunner(lib, threads=1) if lib is not None else None
    o, t = [], []
    for _ in range(rounds):
        o.append(time_callable(lambda: ort.run(x), cfg).p50_ms)
        if tvm_runner is not None:
            t.append(time_vm(tvm_runner.vm, tvm_runner.dev, tvm_runner._tensor(x), cfg).p50_ms)
    out = {"ort_ms": statistics.median(o)}
    if t:
        out["tvm_ms"] = statistics.median(t)
        out["max_abs_err"] = float(np.abs(tvm_runner.run(x) - ort.run(x)).max())
    return out


def ort_shape(onnx_path: Path) -> tuple[int, ...]:
    from metaedge.onnx_graph import onnx_input_spec

    return onnx_input_spec(onnx_path)[1]


def compile_tvm(onnx_path: Path, db: Path, trials: int, out: Path):
    from metaedge.deploy.backends.tvm import TvmBackend, TvmOptions

    last = [0.0]

    def report(p) -> None:  # a line a minute: the bench runs unattended
        if time.time() - last[0] > 60:
            last[0] = time.time()
            best = "?" if p.best_ms is None else f"{p.best_ms:.3f} ms"
            print(f"    tuning: {p.trials}/{p.budget} trials, estimated {best}", flush=True)

    t0 = time.perf_counter()
    compiled = TvmBackend(TvmOptions(tune_trials=trials, tuning_dir=db, report=report)).compile(onnx_path, "x86", out)
    meta = json.loads((out / "model.json").read_text())
    return compiled.path, time.perf_counter() - t0, meta.get("tuning", {})


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--archs", default="resnet20,mobilenetv2_100")
    ap.add_argument("--size", type=int, default=28, help="input size (Fashion-MNIST's native 28)")
    ap.add_argument("--trials", default="64,192,384", help="cumulative MetaSchedule trial totals per network")
    ap.add_argument("--minutes", type=float, default=30.0, help="tuning wall time per network; later steps are skipped")
    ap.add_argument("--tune-int8", action="store_true", help="also tune the int8 models (default: untuned only)")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--repeats", type=int, default=100)
    ap.add_argument("--out", type=Path, default=Path("bench-out/tvm"))
    ap.add_argument("--quick", action="store_true")
    ap.add_argument(
        "--remeasure", action="store_true", help="re-time the libraries of an earlier run in --out side by side (no tuning), e.g. on a quiet machine"
    )
    args = ap.parse_args()
    if args.quick:
        args.archs, args.size, args.trials, args.rounds, args.repeats = "resnet20", 16, "16", 2, 20
    work = args.out / "work"
    work.mkdir(parents=True, exist_ok=True)
    steps = [int(s) for s in args.trials.split(",") if s.strip()]
    if args.remeasure:
        rows = json.loads((args.out / "tvm_vs_ort.json").read_text())
        for r in rows:
            onnx_path = work / f"{r['arch']}_{args.size}_{r['kind']}.onnx"
            lib = work / f"{r['arch']}-{r['kind']}-t{r['trials']}" / "model.so"
            r.update(side_by_side(onnx_path, lib if lib.is_file() else None, args.rounds, args.repeats), remeasured=True)
            print(f"{r['arch']} {r['kind']} {r['trials']}: ORT {r['ort_ms']:.3f} ms, TVM {r.get('tvm_ms', float('nan')):.3f} ms", flush=True)
        write_results(rows, args)
        return 0
    rows: list[dict] = []
    for arch in args.archs.split(","):
        models = export_models(arch, args.size, work)
        for kind, onnx_path in models.items():
            db = work / f"db-{arch}-{kind}"
            try:
                lib, secs, tuning = compile_tvm(onnx_path, db, 0, work / f"{arch}-{kind}-t0")
            except Exception as exc:  # noqa: BLE001 - record and go on to the next model
                print(f"{arch} {kind}: TVM failed: {str(exc).splitlines()[0][:300]}", flush=True)
                rows.append(
                    {
                        "arch": arch,
                        "kind": kind,
                        "trials": 0,
                        "tune_s": 0.0,
                        "error": str(exc)[:300],
                        **side_by_side(onnx_path, None, args.rounds, args.repeats),
                    }
                )
                continue
            row = {
                "arch": arch,
                "kind": kind,
                "trials": 0,
                "tune_s": 0.0,
                "compile_s": round(secs, 1),
                **side_by_side(onnx_path, lib, args.rounds, args.repeats),
            }
            rows.append(row)
            print(f"{arch} {kind} untuned: ORT {row['ort_ms']:.3f} ms, TVM {row['tvm_ms']:.3f} ms", flush=True)
            if kind == "int8" and not args.tune_int8:
                continue
            spent = 0.0
            for trials in steps:
                if spent / 60 >= args.minutes:
                    print(f"  {arch} {kind}: {args.minutes} min of tuning spent; skipping {trials} trials", flush=True)
                    break
                lib, secs, tuning = compile_tvm(onnx_path, db, trials, work / f"{arch}-{kind}-t{trials}")
                spent += float(tuning.get("seconds", 0.0))
                row = {
                    "arch": arch,
                    "kind": kind,
                    "trials": trials,
                    "tune_s": round(spent, 1),
                    "compile_s": round(secs, 1),
                    "estimated_ms": tuning.get("estimated_ms"),
                    **side_by_side(onnx_path, lib, args.rounds, args.repeats),
                }
                rows.append(row)
                print(f"{arch} {kind} {trials} trials ({spent / 60:.1f} min tuning): ORT {row['ort_ms']:.3f} ms, TVM {row['tvm_ms']:.3f} ms", flush=True)
                (args.out / "tvm_vs_ort.json").write_text(json.dumps(rows, indent=1))
    write_results(rows, args)
    return 0


def write_results(rows: list[dict], args) -> None:
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "tvm_vs_ort.json").write_text(json.dumps(rows, indent=1))
    lines = [
        f"# TVM vs ONNX Runtime, one thread, batch 1, {args.size}x{args.size} ({time.strftime('%Y-%m-%d')}, {platform.machine()}, {os.cpu_count()} cores)",
        "",
        "    python bench/tvm_vs_ort.py " + " ".join(sys.argv[1:]),
        "",
        "| network | model | TVM trials | tuning min | TVM p50 ms | ORT p50 ms | TVM / ORT | max abs err |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        if "tvm_ms" not in r:
            lines.append(f"| {r['arch']} | {r['kind']} | - | - | failed: {r.get('error', '?')[:80]} | {r['ort_ms']:.3f} | | |")
            continue
        lines.append(
            f"| {r['arch']} | {r['kind']} | {r['trials']} | {r['tune_s'] / 60:.1f} | {r['tvm_ms']:.3f} | "
            f"{r['ort_ms']:.3f} | {r['tvm_ms'] / r['ort_ms']:.2f}x | {r.get('max_abs_err', 0):.1e} |"
        )
    text = "\n".join(lines) + "\n"
    (args.out / "tvm_vs_ort.md").write_text(text)
    print(text)
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    archs = sorted({r["arch"] for r in rows})
    fig, axes = plt.subplots(1, len(archs), figsize=(5 * len(archs), 3.6), squeeze=False)
    for ax, arch in zip(axes[0], archs):
        for kind, color in (("fp32", "tab:blue"), ("int8", "tab:orange")):
            rs = [r for r in rows if r["arch"] == arch and r["kind"] == kind]
            if not rs:
                continue
            ax.plot([r["trials"] for r in rs], [r["tvm_ms"] for r in rs], "o-", color=color, label=f"TVM {kind}")
            ax.axhline(statistics.median(r["ort_ms"] for r in rs), color=color, ls="--", label=f"ORT {kind}")
        ax.set(title=arch, xlabel="MetaSchedule trials (0: metaedge default schedules)", ylabel="p50 ms, 1 thread")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(args.out / "tvm_vs_ort.png", dpi=120)


if __name__ == "__main__":
    raise SystemExit(main())
