#!/usr/bin/env python3
"""Latency in the loop: does the per-layer latency table rank pruned networks like the device does?

For a zoo CNN and a target (this x86 box, or the emulated ARM64 device through a tracker):
1. build the per-layer latency table the MetaPruning search prices candidates with
   (``make_latency_fn``, seeded with the model's layers at several widths);
2. draw pruned width configurations from the pruning search space (uniform ratios + random ones),
   materialise each as a real pruned network (L1 channel selection), export it to ONNX, compile it
   with TVM for the target and measure it end to end;
3. compare predicted vs measured latency (rank correlation, mean abs. % error) against MACs as a
   proxy, and report the table-building cost.

    python bench/latency_loop.py                         # x86, local
    python bench/latency_loop.py --target arm64 --device 127.0.0.1:9190/arm64
    python bench/latency_loop.py --target arm64 --emulated   # start the emulated device itself (root)

Writes a JSON report to $OUT/latency_loop.json (or ./bench-out/latency_loop.json).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def spearman(a, b) -> float:
    ra = np.argsort(np.argsort(a))
    rb = np.argsort(np.argsort(b))
    return float(np.corrcoef(ra, rb)[0, 1])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="mobilenetv2_050")
    ap.add_argument("--hw", type=int, default=32)
    ap.add_argument("--target", default="x86")
    ap.add_argument("--device", default=None, help="tracker-host:port/key of the target device")
    ap.add_argument("--emulated", action="store_true", help="start a tracker + the emulated ARM64 device (root)")
    ap.add_argument("--configs", type=int, default=8, help="pruned configurations to measure")
    ap.add_argument("--repeats", type=int, default=30)
    args = ap.parse_args()

    import torch

    from metaedge.compress.graph import analyze_channels
    from metaedge.compress.metapruning.materialize import l1_keep, materialize
    from metaedge.compress.metapruning.space import Pricer, WidthSpace
    from metaedge.deploy.backends.base import get_backend
    from metaedge.deploy.latency_table import make_latency_fn
    from metaedge.deploy.measure.base import MeasureInput
    from metaedge.deploy.measure.select import runner_for
    from metaedge.latency import TimingConfig
    from metaedge.targets import rpc
    from metaedge.targets.registry import get_target
    from metaedge.zoo import create_model

    target = get_target(args.target)
    timing = TimingConfig(warmup=5, repeats=args.repeats)
    procs = []
    device = args.device
    if args.emulated:
        tproc, tport = rpc.start_local_tracker(port=9690)
        procs.append(tproc)
        subprocess.run([str(ROOT / "tools/arm64_device/setup.sh")], check=True, stdout=subprocess.DEVNULL)
        subprocess.run(
            [str(ROOT / "tools/arm64_device/start_device.sh"), "--tracker", f"127.0.0.1:{tport}", "--key", "arm64-bench", "--port", "9700", "--name", "bench"],
            check=True,
        )
        device = f"127.0.0.1:{tport}/arm64-bench"
        rpc.wait_for_servers(device, 1, timeout_s=120)
    try:
        torch.manual_seed(0)
        model = create_model(args.model, num_classes=10).eval()
        shape = (1, 3, args.hw, args.hw)
        example = torch.zeros(shape)
        analysis = analyze_channels(model, example)
        space = WidthSpace(analysis)
        pricer = Pricer(model, analysis, shape)

        t0 = time.perf_counter()
        with tempfile.TemporaryDirectory() as cache_dir:
            fn = make_latency_fn(
                target, device, specs=pricer.specs({}), timing=timing, cache_path=Path(cache_dir) / "layers.json", width_multipliers=(0.25, 0.5, 0.75, 1.0)
            )
        table_s = time.perf_counter() - t0
        print(f"[latency_loop] table: {len(fn.table.entries)} layer shapes measured in {table_s:.1f} s", flush=True)

        rng = random.Random(0)
        configs = [("full", {})] + [(f"uniform{r}", space.uniform(r)) for r in (0.25, 0.5, 0.75)]
        while len(configs) < args.configs:
            configs.append((f"random{len(configs)}", space.widths(space.sample(rng))))

        be = get_backend("tvm")
        runner = runner_for(target, "tvm", device, timing)
        rows = []
        with tempfile.TemporaryDirectory() as work:
            for name, widths in configs:
                pruned = materialize(model, analysis, l1_keep(model, analysis, widths)).eval() if widths else model
                onnx_path = Path(work) / f"{name}.onnx"
                torch.onnx.export(pruned, example, str(onnx_path), input_names=["input"], output_names=["logits"], opset_version=17, dynamo=False)
                c = be.compile(onnx_path, target, Path(work) / name)
                lat = runner.measure(MeasureInput(c)).latency
                pred = fn(pricer.specs(widths))
                macs = pricer.macs(widths)
                rows.append({"config": name, "macs": int(macs), "predicted_ms": pred, "measured_ms": lat.p50_ms})
                print(f"[latency_loop] {name:10s} MACs {macs / 1e6:7.2f}M  predicted {pred:8.3f} ms  measured {lat.p50_ms:8.3f} ms", flush=True)
        pred = np.array([r["predicted_ms"] for r in rows])
        meas = np.array([r["measured_ms"] for r in rows])
        macs = np.array([r["macs"] for r in rows], dtype=float)
        report = {
            "model": args.model,
            "target": target.name,
            "device": device,
            "input_shape": list(shape),
            "table_shapes": len(fn.table.entries),
            "table_build_s": round(table_s, 1),
            "rows": rows,
            "spearman_table_vs_measured": spearman(pred, meas),
            "spearman_macs_vs_measured": spearman(macs, meas),
            "mape_table": float(np.mean(np.abs(pred - meas) / meas)),
            # the table sums isolated layers; a single scale factor absorbs the fused/VM overheads
            "scale_measured_over_table": float(np.median(meas / pred)),
        }
        # what the search sees after LatencyTable.calibrate() on one full-model measurement
        k = meas[0] / pred[0]
        report["mape_table_calibrated_on_full"] = float(np.mean(np.abs(k * pred[1:] - meas[1:]) / meas[1:]))
        print(json.dumps({k: v for k, v in report.items() if k != "rows"}, indent=2))
        out = Path(os.environ.get("OUT") or ROOT / "bench-out")
        out.mkdir(parents=True, exist_ok=True)
        (out / "latency_loop.json").write_text(json.dumps(report, indent=2))
        return 0
    finally:
        if args.emulated:
            subprocess.run([str(ROOT / "tools/arm64_device/stop_device.sh"), "--name", "bench"], check=False)
        for p in procs:
            p.terminate()


if __name__ == "__main__":
    sys.exit(main())
