"""Quantization benchmark on digits (16x16): fp32 vs ORT PTQ int8 vs STE vs MetaQuant QAT.

For MobileNetV2 and ResNet-20: top-1 test accuracy of the fp32 model, of ORT's static PTQ (int8
per-channel QDQ, run in ONNX Runtime), and of STE and MetaQuant QAT (same epochs, same seeds) at
w8a8, w4a8, w2a8, w1a8 (2..8 bits: symmetric per-channel; 1 bit: BWN); mean and spread over seeds.
The fp32 model is trained once per model (seed 0) so the spread is the QAT's own. The w8a8
MetaQuant model is exported to QDQ ONNX, parity-checked, and timed against fp32 and PTQ in ONNX
Runtime (one thread, batch 1, measured side by side in one run).

    python bench/quant.py --quick      # 1 seed, 2 QAT epochs
    python bench/quant.py              # 3 seeds, 6 QAT epochs
"""
from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from metaedge.artifacts import atomic_write_json  # noqa: E402
from metaedge.compress.metaquant import QuantConfig, default_weight_quantizer, parse_quant_spec, quantize_model  # noqa: E402
from metaedge.compress.metaquant.ptq import quantize_ptq  # noqa: E402
from metaedge.compress.train import TrainConfig, evaluate, fit  # noqa: E402
from metaedge.data import DataConfig, load_data, make_loader  # noqa: E402
from metaedge.deploy.backends.onnxruntime import OrtRunner  # noqa: E402
from metaedge.deploy.export import export_onnx  # noqa: E402
from metaedge.deploy.qdq import check_qdq_fusion, check_qdq_parity, export_qdq  # noqa: E402
from metaedge.latency import TimingConfig, time_callable  # noqa: E402
from metaedge.zoo import create_model  # noqa: E402

SPECS = ("w8a8", "w4a8", "w2a8", "w1a8")


def ort_accuracy(path: Path, ds) -> float:
    runner = OrtRunner(path, threads=1)
    x, y = ds.tensors
    pred = np.concatenate([runner.run(x[i : i + 256].numpy()).argmax(1) for i in range(0, len(x), 256)])
    return float((pred == y.numpy()).mean())


def ort_latency(path: Path, x: np.ndarray, timing: TimingConfig) -> dict:
    runner = OrtRunner(path, threads=1)
    return time_callable(lambda: runner.run(x), timing).to_dict()


def fmt(vals: list[float]) -> str:
    if not vals:
        return "-"
    m = 100 * statistics.fmean(vals)
    if len(vals) == 1:
        return f"{m:.2f}"
    return f"{m:.2f} ± {100 * statistics.pstdev(vals):.2f}"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="1 seed, 2 QAT epochs")
    ap.add_argument("--models", default="mobilenetv2_100,resnet20")
    ap.add_argument("--specs", default=",".join(SPECS))
    ap.add_argument("--seeds", type=int, default=None)
    ap.add_argument("--qat-epochs", type=int, default=None)
    ap.add_argument("--fp32-epochs", type=int, default=6)
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "quant.json"))
    args = ap.parse_args()
    torch.set_num_threads(1)  # one thread: comparable, and the box is shared
    seeds = args.seeds or (1 if args.quick else 3)
    epochs = args.qat_epochs or (2 if args.quick else 6)
    data = load_data(DataConfig(input_size=16))
    val_loader, test_loader = make_loader(data.val, 256, False), make_loader(data.test, 256, False)
    calib = [x.numpy() for x, _ in list(make_loader(data.train, 64, True, seed=1))[:8]]
    timing = TimingConfig(warmup=20, repeats=200 if not args.quick else 100, threads=1)
    results: dict = {"settings": {"seeds": seeds, "qat_epochs": epochs, "fp32_epochs": args.fp32_epochs, "quick": args.quick, "torch_threads": 1}, "models": {}}
    work = Path(tempfile.mkdtemp(prefix="metaedge-bench-quant-"))
    t_all = time.perf_counter()
    try:
        for name in args.models.split(","):
            print(f"== {name}", flush=True)
            torch.manual_seed(0)
            model = create_model(name, num_classes=data.num_classes, in_chans=data.in_chans, input_size=data.input_size)
            fit(model, make_loader(data.train, 64, True, drop_last=True), val_loader, TrainConfig(epochs=args.fp32_epochs, lr=0.05, channels_last=False), quiet=True)
            model.eval()
            r: dict = {"fp32": {"test": [evaluate(model, test_loader)]}}
            fp32_path, ptq_path = work / f"{name}_fp32.onnx", work / f"{name}_ptq.onnx"
            export_onnx(model, data.train.tensors[0][:1], fp32_path)
            quantize_ptq(fp32_path, ptq_path, calib)
            r["ptq_int8"] = {"test": [ort_accuracy(ptq_path, data.test)]}
            print(f"fp32 {r['fp32']['test'][0]:.4f}  ptq {r['ptq_int8']['test'][0]:.4f}", flush=True)
            for spec in args.specs.split(","):
                wbits, _ = parse_quant_spec(spec)
                for method in ("ste", "metaquant"):
                    accs, secs = [], []
                    for seed in range(seeds):
                        cfg = QuantConfig(weight_bits=wbits, weight_quantizer=default_weight_quantizer(wbits), method=method, epochs=epochs, seed=seed)
                        wd = work / f"{name}_{spec}_{method}_{seed}"
                        res = quantize_model(model, data, cfg, wd, quiet=True)
                        accs.append(res.test_accuracy)
                        secs.append(res.seconds)
                        print(f"{spec} {method} seed {seed}: test {res.test_accuracy:.4f} val {res.val_accuracy:.4f} ({res.seconds:.0f}s)", flush=True)
                        if spec == "w8a8" and method == "metaquant" and seed == 0:
                            qdq_path = work / f"{name}_qat_w8a8.onnx"
                            info = export_qdq(res.model, data.train.tensors[0][:1], qdq_path)
                            parity = check_qdq_parity(res.model, qdq_path, data.val.tensors[0])
                            fusion = check_qdq_fusion(qdq_path)
                            x1 = data.val.tensors[0][:1].numpy()
                            lat = {}
                            for _ in range(2):  # interleave twice; keep the faster round of each
                                for key, p in (("fp32", fp32_path), ("ptq_int8", ptq_path), ("qat_int8", qdq_path)):
                                    s = ort_latency(p, x1, timing)
                                    if key not in lat or s["p50_ms"] < lat[key]["p50_ms"]:
                                        lat[key] = s
                            r["export"] = {
                                "qat_ort_test": ort_accuracy(qdq_path, data.test), "parity": parity, "fused": fusion["fused"],
                                "int8_kernels": fusion["int8_kernels"], "packed_bytes": info["packed_bytes"],
                                "onnx_bytes": {"fp32": fp32_path.stat().st_size, "ptq": ptq_path.stat().st_size, "qat": qdq_path.stat().st_size},
                                "latency": lat,
                                "speedup_vs_fp32": {"ptq_int8": lat["fp32"]["p50_ms"] / lat["ptq_int8"]["p50_ms"], "qat_int8": lat["fp32"]["p50_ms"] / lat["qat_int8"]["p50_ms"]},
                            }
                            print(json.dumps(r["export"]["speedup_vs_fp32"]), flush=True)
                        shutil.rmtree(wd, ignore_errors=True)
                    r.setdefault(spec, {})[method] = {"test": accs, "seconds": secs}
            results["models"][name] = r
            atomic_write_json(args.out, results)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    results["seconds"] = time.perf_counter() - t_all
    atomic_write_json(args.out, results)
    print_table(results)
    return 0


def print_table(results: dict) -> None:
    st = results["settings"]
    print(f"\nTop-1 test accuracy (%) on digits 16x16, {st['seeds']} seed(s), {st['qat_epochs']} QAT epochs; mean ± spread (population std)")
    print("| model | fp32 | PTQ int8 (ORT) | spec | STE | MetaQuant |")
    print("|---|---|---|---|---|---|")
    for name, r in results["models"].items():
        for i, spec in enumerate(s for s in SPECS if s in r):
            head = f"| {name} | {fmt(r['fp32']['test'])} | {fmt(r['ptq_int8']['test'])} " if i == 0 else "| | | "
            print(f"{head}| {spec} | {fmt(r[spec]['ste']['test'])} | {fmt(r[spec]['metaquant']['test'])} |")
    print("\nONNX Runtime, 1 thread, batch 1, p50 ms (fp32 / PTQ int8 / QAT int8 QDQ), measured side by side")
    for name, r in results["models"].items():
        e = r.get("export")
        if e:
            lat = e["latency"]
            print(f"{name}: {lat['fp32']['p50_ms']:.3f} / {lat['ptq_int8']['p50_ms']:.3f} / {lat['qat_int8']['p50_ms']:.3f} ms; "
                  f"speed-up PTQ {e['speedup_vs_fp32']['ptq_int8']:.2f}x, QAT {e['speedup_vs_fp32']['qat_int8']:.2f}x; "
                  f"QAT w8a8 in ORT test {100 * e['qat_ort_test']:.2f}%, parity max err {e['parity']['max_abs_err']:.3g}, top-1 agree {e['parity']['top1_agreement']:.4f}, fused {e['fused']}")


if __name__ == "__main__":
    raise SystemExit(main())
