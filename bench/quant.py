"""Quantization benchmark on Fashion-MNIST (16x16): fp32, PTQ, tuned STE, LSQ and MetaQuant.

For each model (ResNet-20, MobileNetV2) and weight spec (w8a8, w4a8, w2a8 symmetric per-channel;
w1a8 BWN and DoReFa), every QAT method starts from the same fp32 model (trained once, seed 0) and
trains the same epochs on the same data:

* ``ste``       straight-through estimator with the standard gradients (quantizers.py pins them)
* ``lsq``       learned step sizes for weights and activations (Esser et al. 2020)
* ``mq-fc``, ``mq-multifc``, ``mq-lstmfc``   MetaQuant's three meta networks (LSTMFC only where
  its per-weight LSTM state fits: not MobileNetV2's 2.2M weights)

Tuning, the same budget for every method: each (optimizer, lr) pair of the sweep grid is trained
with seed 0 and scored on the *validation* split (mean of the last K epochs); the best pair is then
run with every seed (the seed-0 sweep run is reused when the sweep trains as many epochs as the
final runs). Reported: test accuracy as the paper reports it, the mean over the last K epochs,
then mean +- population std over seeds. Layer policy: first, last and depthwise layers at 8 bits
(the default); distillation from the fp32 model (kd 0.5) for every method. PTQ is ONNX Runtime's
quantize_static (ort profile), evaluated in ONNX Runtime.

Export and latency: the w8a8 model of the best QAT method is exported in both QDQ profiles,
parity-checked in ONNX Runtime (tolerance in quantization steps) and the tensorrt one against
TensorRT's placement rules; ONNX Runtime latency of fp32, PTQ int8 and the two QDQ graphs is
measured side by side in one run (one thread, batch 1, two interleaved rounds, the faster kept).

    python bench/quant.py --quick      # smoke run: ResNet-20, w8a8 + w1a8, 3 methods, ~5 min on 2 busy cores
    python bench/quant.py              # the full table (hours on a CPU): 3 seeds, 2 models, 5 specs
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import TensorDataset

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from metaedge.artifacts import atomic_write_json, atomic_write_text  # noqa: E402
from metaedge.compress.metaquant import QuantConfig, quantize_model  # noqa: E402
from metaedge.compress.metaquant.export import check_qdq_parity, export_qdq, ort_session  # noqa: E402
from metaedge.compress.metaquant.ptq import quantize_ptq  # noqa: E402
from metaedge.compress.train import TrainConfig, evaluate, fit  # noqa: E402
from metaedge.data import DataConfig, load_data, make_loader  # noqa: E402
from metaedge.deploy.export import export_onnx  # noqa: E402
from metaedge.deploy.qdq import check_qdq_fusion  # noqa: E402
from metaedge.latency import TimingConfig, time_callable  # noqa: E402
from metaedge.qdq.tensorrt_rules import check_tensorrt_qdq  # noqa: E402
from metaedge.zoo import create_model  # noqa: E402

# spec name -> (weight bits, weight quantizer)
SPECS = {"w8a8": (8, "symmetric"), "w4a8": (4, "symmetric"), "w2a8": (2, "symmetric"), "w1a8-bwn": (1, "bwn"), "w1a8-dorefa": (1, "dorefa")}
METHODS = {
    "ste": ("ste", "fc"),
    "lsq": ("lsq", "fc"),
    "mq-fc": ("metaquant", "fc"),
    "mq-multifc": ("metaquant", "multifc"),
    "mq-lstmfc": ("metaquant", "lstmfc"),
}
SWEEP = (("sgd", 0.005), ("sgd", 0.02), ("adam", 1e-4), ("adam", 5e-4))
QUICK_SWEEP = (("sgd", 0.01), ("adam", 5e-4))
LSTM_LIMIT = 600_000  # weights; see qat.train_qat


def parse_sweep(text: str) -> tuple[tuple[str, float], ...]:
    out = []
    for item in text.split(","):
        opt, _, lr = item.strip().partition(":")
        out.append((opt, float(lr)))
    return tuple(out)


def subset(ds: TensorDataset, n: int | None, seed: int) -> TensorDataset:
    if n is None or n >= len(ds):
        return ds
    idx = torch.randperm(len(ds), generator=torch.Generator().manual_seed(seed))[:n]
    return TensorDataset(*(t[idx] for t in ds.tensors))


def ort_accuracy(path: Path, ds: TensorDataset, profile: str = "ort") -> float:
    sess = ort_session(path, profile)
    name = sess.get_inputs()[0].name
    x, y = ds.tensors
    pred = np.concatenate([sess.run(None, {name: x[i : i + 256].numpy()})[0].argmax(1) for i in range(0, len(x), 256)])
    return float((pred == y.numpy()).mean())


def ort_latency(path: Path, x: np.ndarray, timing: TimingConfig, profile: str = "ort") -> dict:
    sess = ort_session(path, profile)
    name = sess.get_inputs()[0].name
    return time_callable(lambda: sess.run(None, {name: x}), timing).to_dict()


def last_k(history: list[dict], key: str, k: int) -> float:
    vals = [h[key] for h in history[-k:] if key in h]  # test accuracy is measured in the last k epochs only
    return statistics.fmean(vals) if vals else float("nan")


def fmt(vals: list[float]) -> str:
    if not vals:
        return "-"
    m = 100 * statistics.fmean(vals)
    return f"{m:.2f}" if len(vals) == 1 else f"{m:.2f} ± {100 * statistics.pstdev(vals):.2f}"


class Runner:
    """One QAT run per (spec, method, optimizer, lr, seed), with per-epoch test accuracy."""

    def __init__(self, model, data, work: Path, epochs: int, k: int, quiet: bool = True, meta_lr: float | None = None) -> None:
        self.model, self.data, self.work, self.epochs, self.k, self.quiet = model, data, work, epochs, k, quiet
        self.meta_lr = meta_lr or QuantConfig().meta_lr
        self.test_loader = make_loader(data.test, 512, False)

    def run(self, spec: str, method: str, opt: str, lr: float, seed: int, epochs: int) -> dict:
        bits, wq = SPECS[spec]
        kind, variant = METHODS[method]
        cfg = QuantConfig(
            weight_bits=bits,
            weight_quantizer=wq,
            method=kind,
            meta_variant=variant,
            epochs=epochs,
            optimizer=opt,
            lr=lr,
            seed=seed,
            calib_batches=8,
            meta_lr=self.meta_lr,
        )
        wd = self.work / f"{spec}-{method}-{opt}-{lr}-{seed}-{epochs}"
        t0 = time.perf_counter()
        res = quantize_model(
            self.model,
            self.data,
            cfg,
            wd,
            quiet=self.quiet,
            on_epoch=lambda e, m: {"test_accuracy": evaluate(m, self.test_loader)} if e >= epochs - self.k else {},
        )
        shutil.rmtree(wd, ignore_errors=True)
        hist = res.history or []
        return {
            "optimizer": opt,
            "lr": lr,
            "seed": seed,
            "epochs": epochs,
            "val_last_k": last_k(hist, "val_accuracy", self.k),
            "test_last_k": last_k(hist, "test_accuracy", self.k),
            "test_final": res.test_accuracy,
            "val_final": res.val_accuracy,
            "calib_val": res.calib_val_accuracy,
            "seconds": time.perf_counter() - t0,
            "packed_bytes": res.packed_bytes,
            "history": hist,
            **({"_result": res} if spec == "w8a8" else {}),  # kept for the export; models of other specs are dropped
        }


def strip(run: dict) -> dict:
    return {k: v for k, v in run.items() if not k.startswith("_")}


def bench_model(
    name: str, data, args, sweep, specs, methods, seeds, work: Path, calib, reuse: dict | None = None, on_progress: Callable[[dict], None] | None = None
) -> dict:
    """The model's table; ``on_progress(partial)`` after each (spec, method), so a killed run keeps
    what it finished (``--reuse`` the written JSON to go on from there)."""
    print(f"== {name}", flush=True)
    torch.manual_seed(0)
    model = create_model(name, num_classes=data.num_classes, in_chans=data.in_chans, input_size=data.input_size)
    t0 = time.perf_counter()
    fit(
        model,
        make_loader(data.train, 64, True, drop_last=True),
        make_loader(data.val, 512, False),
        TrainConfig(epochs=args.fp32_epochs, lr=0.05, channels_last=False),
        quiet=True,
    )
    model.eval()
    test_loader = make_loader(data.test, 512, False)
    r: dict = {
        "fp32": {"test": evaluate(model, test_loader), "val": evaluate(model, make_loader(data.val, 512, False)), "train_seconds": time.perf_counter() - t0}
    }
    n_weights = sum(m.weight.numel() for m in model.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear)))
    fp32_path, ptq_path = work / f"{name}_fp32.onnx", work / f"{name}_ptq.onnx"
    export_onnx(model, data.train.tensors[0][:1], fp32_path)
    quantize_ptq(fp32_path, ptq_path, calib, profile="ort")
    r["ptq_int8"] = {"test": ort_accuracy(ptq_path, data.test), "fp32_ort_test": ort_accuracy(fp32_path, data.test)}
    print(f"fp32 test {r['fp32']['test']:.4f}  PTQ int8 (ORT) {r['ptq_int8']['test']:.4f}", flush=True)
    reuse = reuse or {}
    if reuse and abs(reuse["fp32"]["test"] - r["fp32"]["test"]) > 1e-9:
        raise SystemExit(f"--reuse: the fp32 {name} differs from the reused run's ({reuse['fp32']['test']:.4f} vs {r['fp32']['test']:.4f})")
    runner = Runner(model, data, work, args.epochs, args.last_k, quiet=True, meta_lr=args.meta_lr)
    best_w8 = None
    for spec in specs:
        r[spec] = {}
        for method in methods:
            if METHODS[method][1] == "lstmfc" and n_weights > LSTM_LIMIT:
                r[spec][method] = {"skipped": f"LSTMFC's per-weight LSTM state does not fit {n_weights} weights"}
                continue
            if method == "lsq" and spec == "w1a8-dorefa" and "w1a8-bwn" in r and "lsq" in r["w1a8-bwn"]:
                r[spec][method] = r["w1a8-bwn"]["lsq"]  # LSQ ignores the weight quantizer: one 1-bit run
                continue
            prev = reuse.get(spec, {}).get(method, {})
            if "chosen" in prev:  # --reuse: the sweep and the seeds already run, from an earlier run of the same settings
                sweep_summary, done = prev["sweep"], {x["seed"]: x for x in prev["runs"]}
                best = {**prev["chosen"], **done.get(0, {})}
                print(f"  reused {spec} {method}: {best['optimizer']} lr {best['lr']:g}, seeds {sorted(done)}", flush=True)
            else:
                sweep_runs = [runner.run(spec, method, opt, lr, 0, args.sweep_epochs) for opt, lr in sweep]
                for s in sweep_runs:
                    print(
                        f"  sweep {spec} {method} {s['optimizer']} lr {s['lr']:g}: val(last {args.last_k}) {s['val_last_k']:.4f} ({s['seconds']:.0f}s)",
                        flush=True,
                    )
                best = max(sweep_runs, key=lambda s: s["val_last_k"])
                sweep_summary = [{k: s[k] for k in ("optimizer", "lr", "val_last_k", "test_last_k", "seconds")} for s in sweep_runs]
                done = {0: best} if args.sweep_epochs == args.epochs else {}
            runs = [done[seed] if seed in done else runner.run(spec, method, best["optimizer"], best["lr"], seed, args.epochs) for seed in range(seeds)]
            print(f"{spec} {method}: {best['optimizer']} lr {best['lr']:g} -> test(last {args.last_k}) {fmt([x['test_last_k'] for x in runs])}", flush=True)
            r[spec][method] = {
                "chosen": {"optimizer": best["optimizer"], "lr": best["lr"], "val_last_k": best["val_last_k"]},
                "sweep": sweep_summary,
                "test_last_k": [x["test_last_k"] for x in runs],
                "test_final": [x["test_final"] for x in runs],
                "seconds": [x["seconds"] for x in runs],
                "packed_bytes": runs[0]["packed_bytes"],
                "runs": [strip(x) for x in runs],
            }
            if on_progress is not None:
                on_progress(r)
            if spec == "w8a8" and "_result" in best and (best_w8 is None or statistics.fmean(r[spec][method]["test_last_k"]) > best_w8[0]):
                best_w8 = (statistics.fmean(r[spec][method]["test_last_k"]), method, best)
    if best_w8 is not None and not args.no_export:
        r["export"] = export_and_time(name, best_w8, runner, data, fp32_path, ptq_path, work, args)
    return r


def export_and_time(name, best_w8, runner: Runner, data, fp32_path: Path, ptq_path: Path, work: Path, args) -> dict:
    _, method, best = best_w8
    out: dict = {"method": method}
    paths = {"fp32": (fp32_path, "ort"), "ptq_int8": (ptq_path, "ort")}
    for profile in ("ort", "tensorrt"):
        res = best["_result"]
        if profile == "tensorrt":  # the profile is a training-time choice: rerun with symmetric activations
            cfg = replace(res.config, profile="tensorrt")
            wd = work / f"{name}-w8a8-trt"
            res = quantize_model(runner.model, data, cfg, wd, quiet=True)
            shutil.rmtree(wd, ignore_errors=True)
        path = work / f"{name}_qat_w8a8_{profile}.onnx"
        info = export_qdq(res.model, data.train.tensors[0][:1], path, profile=profile)
        parity = check_qdq_parity(res.model, path, data.val.tensors[0][:1000], raise_on_fail=False)
        entry = {
            "torch_test": res.test_accuracy,
            "ort_test": ort_accuracy(path, data.test, profile),
            "parity": parity,
            "packed_bytes": info["packed_bytes"],
            "onnx_bytes": path.stat().st_size,
        }
        if profile == "ort":
            fusion = check_qdq_fusion(path)
            entry.update(fused=fusion["fused"], int8_kernels=fusion["int8_kernels"])
        else:
            entry["tensorrt_rules"] = check_tensorrt_qdq(path).to_dict()
        out[profile] = entry
        paths[f"qat_{profile}"] = (path, profile)
        print(
            f"{name} w8a8 {method} {profile}: ORT test {entry['ort_test']:.4f}, parity max {parity['max_err_steps']:.1f} / mean {parity['mean_err_steps']:.2f} steps, passed {parity['passed']}",
            flush=True,
        )
    timing = TimingConfig(warmup=20, repeats=args.repeats, threads=1)
    x1 = data.val.tensors[0][:1].numpy()
    lat: dict = {}
    for _ in range(2):  # interleave twice; keep the faster round of each
        for key, (p, profile) in paths.items():
            s = ort_latency(p, x1, timing, profile)
            if key not in lat or s["p50_ms"] < lat[key]["p50_ms"]:
                lat[key] = s
    out["latency"] = lat
    out["speedup_vs_fp32"] = {k: lat["fp32"]["p50_ms"] / v["p50_ms"] for k, v in lat.items() if k != "fp32"}
    print(json.dumps({k: round(v, 3) for k, v in out["speedup_vs_fp32"].items()}), flush=True)
    return out


def table(results: dict) -> str:
    st = results["settings"]
    lines = [
        f"Top-1 test accuracy (%) on Fashion-MNIST {st['input_size']}x{st['input_size']} ({st['train_images']} training images), "
        f"mean of the last {st['last_k']} of {st['qat_epochs']} QAT epochs, {st['seeds']} seed(s): mean ± population std. "
        f"Per method the (optimizer, lr) with the best validation score of the sweep {st['sweep']} (seed 0, {st['sweep_epochs']} epochs).",
        "",
        "| model | fp32 | PTQ int8 (ORT) | spec | " + " | ".join(st["methods"]) + " |",
        "|---|---|---|---|" + "---|" * len(st["methods"]),
    ]
    for name, r in results["models"].items():
        for i, spec in enumerate(s for s in st["specs"] if s in r):
            head = f"| {name} | {100 * r['fp32']['test']:.2f} | {100 * r['ptq_int8']['test']:.2f} " if i == 0 else "| | | "
            cells = []
            for m in st["methods"]:
                e = r[spec].get(m, {})
                if "skipped" in e:
                    cells.append("n/a")
                elif e:
                    c = e.get("chosen", {})
                    cells.append(f"{fmt(e['test_last_k'])} ({c.get('optimizer', '')} {c.get('lr', 0):g})")
                else:
                    cells.append("-")
            lines.append(f"{head}| {spec} | " + " | ".join(cells) + " |")
    if any(r.get("export") for r in results["models"].values()):  # --no-export runs time nothing
        lines += ["", "ONNX Runtime, 1 thread, batch 1, p50 ms, measured side by side in one run; QDQ graphs of the best w8a8 QAT method"]
    for name, r in results["models"].items():
        e = r.get("export")
        if not e:
            continue
        lat = e["latency"]
        lines.append(
            f"- {name} ({e['method']}): fp32 {lat['fp32']['p50_ms']:.3f}, PTQ int8 {lat['ptq_int8']['p50_ms']:.3f}, "
            f"QAT ort {lat['qat_ort']['p50_ms']:.3f}, QAT tensorrt-profile {lat['qat_tensorrt']['p50_ms']:.3f} ms; "
            f"speed-up vs fp32: " + ", ".join(f"{k} {v:.2f}x" for k, v in e["speedup_vs_fp32"].items())
        )
        for prof in ("ort", "tensorrt"):
            p = e[prof]["parity"]
            extra = f"fused {e[prof]['fused']}" if prof == "ort" else f"TensorRT rules passed {e[prof]['tensorrt_rules']['passed']}"
            lines.append(
                f"  - {prof} profile: ORT test {100 * e[prof]['ort_test']:.2f}% (torch {100 * e[prof]['torch_test']:.2f}%), parity max {p['max_err_steps']:.1f} / mean {p['mean_err_steps']:.2f} steps "
                f"(tolerance {p['max_steps']:g} / {p['mean_steps']:g}), top-1 agreement {p['top1_agreement']:.4f}, {extra}, packed {e[prof]['packed_bytes']} B"
            )
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="smoke run: ResNet-20, w8a8 and w1a8-bwn, ste/lsq/mq-fc, 2-point sweep, small subsets")
    ap.add_argument("--models", default=None, help="comma-separated (default resnet20,mobilenetv2_100)")
    ap.add_argument("--specs", default=None, help=f"comma-separated from {', '.join(SPECS)}")
    ap.add_argument("--methods", default=None, help=f"comma-separated from {', '.join(METHODS)}")
    ap.add_argument("--sweep", default=None, help="optimizer:lr pairs, e.g. sgd:0.005,adam:1e-4 (default " + ",".join(f"{o}:{lr:g}" for o, lr in SWEEP) + ")")
    ap.add_argument("--seeds", type=int, default=None)
    ap.add_argument("--epochs", type=int, default=None, help="QAT epochs (default 10; quick 2)")
    ap.add_argument("--sweep-epochs", type=int, default=None, help="epochs of each sweep run (default: --epochs, so seed 0 is reused)")
    ap.add_argument("--last-k", type=int, default=None, help="report the mean over the last K epochs (default 3; quick 1)")
    ap.add_argument("--fp32-epochs", type=int, default=None, help="default 15; quick 3")
    ap.add_argument("--train-subset", type=int, default=None, help="training images (default 12000; quick 600)")
    ap.add_argument("--val-subset", type=int, default=None, help="validation images (default all 9000; quick 1000)")
    ap.add_argument("--test-subset", type=int, default=None, help="test images (default all 10000; quick 2000)")
    ap.add_argument("--input-size", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=None, help="latency repeats (default 200; quick 50)")
    ap.add_argument("--no-export", action="store_true", help="skip the QDQ export, parity and latency part")
    ap.add_argument("--meta-lr", type=float, default=None, help=f"MetaQuant's meta-network Adam lr (default {QuantConfig().meta_lr:g})")
    ap.add_argument(
        "--reuse", default=None, help="results JSON of an earlier run with the same settings: keep its sweeps and runs, run only the missing seeds/methods"
    )
    ap.add_argument("--out", default=None, help="JSON path (default bench/results/quant_fashion_mnist[_quick].json; a .md table beside it)")
    args = ap.parse_args()
    q = args.quick
    args.models = args.models or ("resnet20" if q else "resnet20,mobilenetv2_100")
    specs = (args.specs or ("w8a8,w1a8-bwn" if q else ",".join(SPECS))).split(",")
    methods = (args.methods or ("ste,lsq,mq-fc" if q else ",".join(METHODS))).split(",")
    bad = [s for s in specs if s not in SPECS] + [m for m in methods if m not in METHODS]
    if bad:
        ap.error(f"unknown spec/method {bad[0]!r}")
    sweep = parse_sweep(args.sweep) if args.sweep else (QUICK_SWEEP if q else SWEEP)
    seeds = args.seeds or (1 if q else 3)
    args.epochs = args.epochs or (2 if q else 10)
    args.sweep_epochs = args.sweep_epochs or args.epochs
    args.last_k = min(args.last_k or (1 if q else 3), args.epochs)
    args.fp32_epochs = args.fp32_epochs or (3 if q else 15)
    args.repeats = args.repeats or (50 if q else 200)
    train_subset = args.train_subset or (600 if q else 12000)
    out = Path(args.out or ROOT / "bench" / "results" / f"quant_fashion_mnist{'_quick' if q else ''}.json")
    torch.set_num_threads(1)  # one thread: comparable, and the box is shared
    data = load_data(DataConfig(source="fashion-mnist", input_size=args.input_size, train_subset=train_subset))
    data.val = subset(data.val, args.val_subset or (1000 if q else None), 1)
    data.test = subset(data.test, args.test_subset or (2000 if q else None), 2)
    calib = [x.numpy() for x, _ in list(make_loader(data.train, 64, True, seed=1))[:8]]
    command = "python bench/quant.py " + " ".join(sys.argv[1:])
    results: dict = {
        "command": command.strip(),
        "settings": {
            "quick": q,
            "models": args.models.split(","),
            "specs": specs,
            "methods": methods,
            "sweep": [f"{o}:{lr:g}" for o, lr in sweep],
            "seeds": seeds,
            "qat_epochs": args.epochs,
            "sweep_epochs": args.sweep_epochs,
            "last_k": args.last_k,
            "fp32_epochs": args.fp32_epochs,
            "train_images": len(data.train),
            "val_images": len(data.val),
            "test_images": len(data.test),
            "input_size": data.input_size,
            "kd_alpha": QuantConfig().kd_alpha,
            "meta_lr": args.meta_lr or QuantConfig().meta_lr,
            "layer_bits": QuantConfig().layer_bits,
            "torch_threads": 1,
        },
        "models": {},
    }
    reuse = json.loads(Path(args.reuse).read_text()) if args.reuse else None
    if reuse is not None:
        keys = ("qat_epochs", "sweep_epochs", "last_k", "fp32_epochs", "train_images", "val_images", "test_images", "input_size", "sweep", "meta_lr")
        diff = [k for k in keys if reuse["settings"].get(k) != results["settings"].get(k)]
        if diff:
            ap.error(f"--reuse {args.reuse}: settings differ ({', '.join(diff)})")
    work = Path(tempfile.mkdtemp(prefix="metaedge-bench-quant-"))
    t_all = time.perf_counter()
    try:
        for name in args.models.split(","):

            def partial(r: dict, name: str = name) -> None:
                results["models"][name] = r
                atomic_write_json(out, results)

            prev = (reuse or {}).get("models", {}).get(name)
            results["models"][name] = bench_model(name, data, args, sweep, specs, methods, seeds, work, calib, prev, on_progress=partial)
            atomic_write_json(out, results)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    results["seconds"] = time.perf_counter() - t_all
    atomic_write_json(out, results)
    text = table(results)
    atomic_write_text(out.with_suffix(".md"), f"# {out.stem}\n\nCommand: `{results['command']}` ({results['seconds'] / 60:.1f} min)\n\n{text}\n")
    print("\n" + text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
