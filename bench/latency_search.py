#!/usr/bin/env python3
"""Latency in the loop, end to end: MetaPruning under a measured-latency budget, searched with the
per-layer latency table vs with MACs only.

    python bench/latency_search.py                      # x86 (TVM, local), resnet20 w0.5 on digits
    python bench/latency_search.py --target rpi4 --device 127.0.0.1:9190/rpi4 --model mobilenetv2_050

The budget is ``--fraction`` of the baseline's latency measured on the target. "latency table" prices
every candidate with ``make_latency_fn`` (calibrated by that one measurement); "MACs only" assumes
latency scales with MACs and searches under ``fraction x baseline MACs``, which is what a FLOPs-only
tool does. Both pruned models are then compiled with TVM and measured on the target; the table says
which met the budget and at what accuracy. Prints a table, writes bench/results/latency_search.json.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch

from metaedge.artifacts import atomic_write_json
from metaedge.compress.cost import count_cost, layer_specs
from metaedge.compress.metapruning import PRESETS, prune_model
from metaedge.compress.train import TrainConfig, evaluate, fit
from metaedge.data import DataConfig, load_data, make_loader
from metaedge.deploy.compile import compile_for_target
from metaedge.deploy.export import export_onnx
from metaedge.deploy.latency_table import make_latency_fn
from metaedge.latency import TimingConfig
from metaedge.targets.registry import get_target
from metaedge.zoo import create_model


def measure(model, example, target, device, timing, tmp: Path, tag: str) -> float:
    onnx_path = tmp / f"{tag}.onnx"
    export_onnx(model, example, onnx_path)
    section = compile_for_target(onnx_path, target, tmp / tag, backends="tvm", timing=timing, device=device)
    lat = (section.get("tvm") or {}).get("latency") or {}
    if not lat.get("p50_ms"):
        raise SystemExit(f"could not measure {tag} on {target.name}: {section.get('tvm')}")
    return float(lat["p50_ms"])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="resnet20")
    ap.add_argument("--width", type=float, default=0.5)
    ap.add_argument("--hw", type=int, default=16)
    ap.add_argument("--target", default="x86")
    ap.add_argument("--device", default=None)
    ap.add_argument("--fraction", type=float, default=0.5, help="latency budget as a fraction of the measured baseline")
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--repeats", type=int, default=30)
    args = ap.parse_args()
    torch.manual_seed(0)
    t_start = time.perf_counter()
    data = load_data(DataConfig(input_size=args.hw))
    model = create_model(args.model, num_classes=data.num_classes, in_chans=data.in_chans, input_size=args.hw, width_mult=args.width)
    fit(model, make_loader(data.train, 64, True), make_loader(data.val, 256, False), TrainConfig(epochs=args.epochs, lr=0.05), quiet=True)
    model.eval()
    shape, example = data.input_shape, data.val.tensors[0][:1]
    target = get_target(args.target)
    timing = TimingConfig(warmup=5, repeats=args.repeats, threads=1)
    test = make_loader(data.test, 256, False)
    rows = []
    with tempfile.TemporaryDirectory() as tmpdir:
        tmp = Path(tmpdir)
        t0 = time.perf_counter()
        fn = make_latency_fn(target, args.device, specs=layer_specs(model, shape), width_multipliers=(0.25, 0.5, 0.75, 1.0))
        base_ms = measure(model, example, target, args.device, timing, tmp, "baseline")
        fn.table.calibrate(layer_specs(model, shape), base_ms)
        table_s = time.perf_counter() - t0
        budget_ms = args.fraction * base_ms
        base_macs = count_cost(model, shape).macs
        rows.append(
            {
                "method": "baseline (unpruned)",
                "macs": base_macs,
                "predicted_ms": fn(layer_specs(model, shape)),
                "measured_ms": base_ms,
                "test_acc": evaluate(model, test),
                "seconds": 0.0,
            }
        )
        runs = {
            "latency table": (replace(PRESETS["demo"], budget_kind="latency", budget=budget_ms), fn),
            "MACs only": (replace(PRESETS["demo"], budget_kind="macs", budget=args.fraction * base_macs), None),
        }
        for name, (cfg, budget_fn) in runs.items():
            t1 = time.perf_counter()
            res = prune_model(model, data, cfg, tmp / name.replace(" ", "_"), budget_fn=budget_fn, quiet=True)
            pruned = res.model.eval()
            rows.append(
                {
                    "method": name,
                    "macs": count_cost(pruned, shape).macs,
                    "predicted_ms": fn(layer_specs(pruned, shape)),
                    "measured_ms": measure(pruned, example, target, args.device, timing, tmp, name.replace(" ", "_")),
                    "test_acc": evaluate(pruned, test),
                    "seconds": time.perf_counter() - t1,
                }
            )
    where = args.device or "local"
    print(f"MetaPruning under a latency budget of {budget_ms:.3f} ms ({args.fraction:.0%} of the measured baseline) on {target.name} ({where}), TVM, 1 thread")
    print(f"{args.model} width {args.width} on digits {args.hw}x{args.hw}; latency table built and calibrated in {table_s:.0f} s")
    print(f"{'method':<22}{'MACs':>10}{'predicted ms':>14}{'measured ms':>13}{'in budget':>11}{'test acc':>10}{'wall s':>8}")
    for r in rows:
        ok = "-" if r["method"].startswith("baseline") else ("yes" if r["measured_ms"] <= budget_ms else "NO")
        print(
            f"{r['method']:<22}{r['macs'] / 1e6:>9.3f}M{r['predicted_ms']:>14.3f}{r['measured_ms']:>13.3f}{ok:>11}{100 * r['test_acc']:>9.2f}%{r['seconds']:>8.0f}"
        )
    out = Path(__file__).parent / "results" / "latency_search.json"
    atomic_write_json(out, {"args": vars(args), "budget_ms": budget_ms, "rows": rows, "seconds": time.perf_counter() - t_start})
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
