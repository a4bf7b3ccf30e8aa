"""Benchmark: MetaPruning vs uniform width, L1-norm channel pruning and random widths.

MobileNetV2 and ResNet-20 on digits (16x16, 1 channel) at 25%, 10% and 5% of the unpruned MACs.
Every method gets the same fine-tune (epochs, lr, KD from the unpruned model) and is scored on
the test split; each result is exported to ONNX and timed in ONNX Runtime with one thread.

  (a) metapruning  prune_model(): PruningNet (trained once per network) + evolutionary search
  (b) uniform      one width ratio for every group (largest under the budget), first-k channels
  (c) l1           uniform widths, channels of largest filter L1 norm (metaedge's materialiser)
  (c') tp_l1       Torch-Pruning MagnitudePruner (L1, per-layer ratio), when torch-pruning is installed
  (d) random       random widths under the budget (same sampler as the search), first-k channels

Run:  python bench/pruning.py --quick      (1 seed, short schedules)
      python bench/pruning.py               (3 seeds)
Writes bench-out/pruning/results.json and results.md (and resumes from results.json).
"""
from __future__ import annotations

import argparse
import copy
import json
import random
import shutil
import statistics
import sys
import tempfile
import time
import warnings
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from metaedge.compress.cost import count_cost
from metaedge.compress.graph import analyze_channels
from metaedge.compress.metapruning.search import _repair
from metaedge.compress.metapruning import PRESETS, Pricer, WidthSpace, l1_keep, materialize, prune_model
from metaedge.compress.train import TrainConfig, evaluate, fit
from metaedge.data import DataConfig, load_data, make_loader
from metaedge.latency import TimingConfig, time_callable
from metaedge.zoo import create_model

ARCHS = ("mobilenetv2_100", "resnet20")
BUDGETS = (0.25, 0.10, 0.05)


def ort_latency_ms(model: nn.Module, x: torch.Tensor) -> float:
    from metaedge.deploy.backends.onnxruntime import OrtRunner
    from metaedge.deploy.export import check_parity, export_onnx

    with tempfile.TemporaryDirectory() as d:
        path = export_onnx(model, x[:1], Path(d) / "m.onnx")
        check_parity(model, path, x)
        runner = OrtRunner(path, threads=1)
        one = x[:1].numpy()
        return time_callable(lambda: runner.run(one), TimingConfig(warmup=10, repeats=50)).p50_ms


def pick_multiple(space_for, pricer: Pricer, budget: float) -> int:
    """Largest channel multiple (8, 4, 2, 1) whose narrowest network fits the budget."""
    for m in (8, 4, 2, 1):
        sp = space_for(m)
        if pricer.macs(sp.widths(sp.smallest())) <= budget:
            return m
    return 1


def uniform_widths(space: WidthSpace, pricer: Pricer, budget: float) -> dict[str, int]:
    best = space.widths(space.smallest())
    for r in np.linspace(0.02, 1.0, 197):
        w = space.uniform(float(r))
        if pricer.macs(w) <= budget:
            best = w
    return best


def tp_l1(model: nn.Module, x: torch.Tensor, budget: float, multiple: int) -> nn.Module | None:
    try:
        import torch_pruning as tp  # benchmark-only dependency
    except ImportError:
        return None
    fc = [m for m in model.modules() if isinstance(m, nn.Linear)][-1]

    def prune(ratio: float) -> nn.Module:
        m = copy.deepcopy(model)
        fcm = [mm for mm in m.modules() if isinstance(mm, nn.Linear)][-1]
        pruner = tp.pruner.MagnitudePruner(m, x[:1], importance=tp.importance.MagnitudeImportance(p=1), pruning_ratio=ratio,
                                           ignored_layers=[fcm], round_to=multiple)
        pruner.step()
        return m

    # Torch-Pruning's MACs are not monotonic in the ratio once channels are rounded: scan a grid and
    # keep the pruned network with the most MACs under the budget.
    best, best_macs = None, -1
    for ratio in np.linspace(0.05, 0.97, 24):
        try:
            m = prune(float(ratio))
        except Exception:  # noqa: BLE001 - ratios that empty a layer
            continue
        macs = count_cost(m, x.shape).macs
        if best_macs < macs <= budget:
            best, best_macs = m, macs
    del fc
    return best


def finetune(model, teacher, data, tcfg: TrainConfig) -> None:
    fit(model, make_loader(data.train, tcfg.batch_size, True, tcfg.seed), make_loader(data.val, 256, False), tcfg, teacher=teacher, desc="fine-tune", quiet=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="1 seed, short schedules")
    ap.add_argument("--archs", default=",".join(ARCHS))
    ap.add_argument("--budgets", default=",".join(str(b) for b in BUDGETS))
    ap.add_argument("--methods", default="metapruning,uniform,l1,tp_l1,random")
    ap.add_argument("--seeds", type=int, default=None)
    ap.add_argument("--out", default="bench-out/pruning")  # git-ignored: holds checkpoints
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    seeds = args.seeds or (1 if args.quick else 3)
    base_epochs, ft_epochs = (4, 3) if args.quick else (10, 8)
    pcfg = replace(PRESETS["demo"], pruningnet_epochs=3 if args.quick else 8, population=12 if args.quick else 30,
                   generations=3 if args.quick else 8, parents=4 if args.quick else 8, recalib_batches=4 if args.quick else 10,
                   finetune_epochs=ft_epochs)
    methods = args.methods.split(",")
    data = load_data(DataConfig(input_size=16))
    test_loader = make_loader(data.test, 256, False)
    results_path = out / "results.json"
    rows: list[dict] = json.loads(results_path.read_text()) if results_path.exists() else []
    done = {(r["arch"], r["budget"], r["method"], r["seed"]) for r in rows}
    x_par = data.val.tensors[0][:64]
    for arch in args.archs.split(","):
        t = time.perf_counter()
        model = create_model(arch, num_classes=10, in_chans=1, input_size=16)
        ck = out / f"base_{arch}.pt"
        if ck.exists():
            model.load_state_dict(torch.load(ck, weights_only=True))
        else:
            fit(model, make_loader(data.train, 64, True), make_loader(data.val, 256, False), TrainConfig(epochs=base_epochs), desc=f"base {arch}", quiet=True)
            torch.save(model.state_dict(), ck)
        model.eval()
        base_acc = evaluate(model, test_loader)
        analysis = analyze_channels(model, data.train.tensors[0][:1])
        pricer = Pricer(model, analysis, data.input_shape)
        if not any(r["arch"] == arch and r["method"] == "unpruned" for r in rows):
            rows.append({"arch": arch, "budget": 1.0, "method": "unpruned", "seed": 0, "macs": pricer.base_macs, "params": pricer.base_params,
                         "test_acc": base_acc, "latency_ms": ort_latency_ms(model, x_par), "seconds": time.perf_counter() - t})
        print(f"{arch}: base test acc {base_acc:.4f}, {pricer.base_macs / 1e6:.2f} MMACs", flush=True)
        fracs = [float(b) for b in args.budgets.split(",")]
        # one channel multiple per network (8 unless the smallest budget needs finer steps: ResNet-20 at 5%)
        multiple = pick_multiple(lambda m: WidthSpace(analysis, pcfg.choices, m), pricer, min(fracs) * pricer.base_macs)
        space = WidthSpace(analysis, pcfg.choices, multiple)
        for frac in fracs:
            budget = frac * pricer.base_macs
            for seed in range(seeds):
                tcfg = TrainConfig(epochs=ft_epochs, batch_size=pcfg.batch_size, lr=pcfg.finetune_lr, distill_alpha=pcfg.distill, seed=seed)
                for method in methods:
                    key = (arch, frac, method, seed)
                    if key in done:
                        continue
                    t = time.perf_counter()
                    if method == "metapruning":
                        work = out / f"work_{arch}_{frac}_{seed}"
                        shared = out / f"pruningnet_{arch}_m{multiple}.pt"
                        if shared.exists() and not (work / "pruningnet.pt").exists():
                            work.mkdir(parents=True, exist_ok=True)
                            shutil.copyfile(shared, work / "pruningnet.pt")  # one PruningNet per network, shared by budgets
                        res = prune_model(model, data, replace(pcfg, budget=budget, channel_multiple=multiple, seed=seed), work, quiet=True)
                        if not shared.exists():
                            shutil.copyfile(work / "pruningnet.pt", shared)
                        small, extra = res.model, {"search_acc": res.search_accuracy, "phase_seconds": res.seconds}
                    elif method == "tp_l1":
                        small = tp_l1(model, data.train.tensors[0][:1], budget, multiple)
                        if small is None:
                            continue
                        finetune(small, model, data, tcfg)
                        extra = {}
                    else:
                        if method == "uniform":
                            widths, keep_fn = uniform_widths(space, pricer, budget), analysis.crop_keep
                        elif method == "l1":
                            widths = uniform_widths(space, pricer, budget)
                            keep_fn = lambda w: l1_keep(model, analysis, w)  # noqa: E731
                        elif method == "random":
                            rng = random.Random(1000 + seed)  # the search's sampler and budget repair, no scoring
                            genes = None
                            while genes is None:
                                genes = _repair(space.sample(rng), space, pricer.macs, 0.9 * budget, budget, rng)
                            widths = space.widths(genes)
                            keep_fn = analysis.crop_keep
                        else:
                            raise SystemExit(f"unknown method {method}")
                        small = materialize(model, analysis, keep_fn(widths))
                        finetune(small, model, data, tcfg)
                        extra = {}
                    small.eval()
                    cost = count_cost(small, data.input_shape)
                    row = {"arch": arch, "budget": frac, "method": method, "seed": seed, "multiple": multiple, "macs": cost.macs, "params": cost.params,
                           "test_acc": evaluate(small, test_loader), "latency_ms": ort_latency_ms(small, x_par), "seconds": round(time.perf_counter() - t, 1), **extra}
                    rows.append(row)
                    done.add(key)
                    print(f"  {arch} {frac:.2f} {method:12s} seed {seed}: acc {row['test_acc']:.4f} {cost.macs / 1e6:.3f} MMACs "
                          f"{row['latency_ms']:.3f} ms  ({row['seconds']:.0f} s)", flush=True)
                    results_path.write_text(json.dumps(rows, indent=1))
    table = render(rows)
    (out / "results.md").write_text(table + "\n")
    print(table)
    return 0


def render(rows: list[dict]) -> str:
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault((r["arch"], r["budget"], r["method"]), []).append(r)
    lines = ["| network | MACs budget | method | top-1 test (mean ± sd) | seeds | MMACs | params | ORT 1-thread p50 ms | wall s |",
             "|---|---|---|---|---|---|---|---|---|"]
    order = {"unpruned": 0, "metapruning": 1, "uniform": 2, "l1": 3, "tp_l1": 4, "random": 5}
    for (arch, budget, method), rs in sorted(groups.items(), key=lambda kv: (kv[0][0], -kv[0][1], order.get(kv[0][2], 9))):
        accs = [r["test_acc"] * 100 for r in rs]
        sd = statistics.stdev(accs) if len(accs) > 1 else 0.0
        lines.append(f"| {arch} | {budget:.0%} | {method} | {statistics.mean(accs):.2f} ± {sd:.2f} | {len(rs)} | "
                     f"{statistics.mean(r['macs'] for r in rs) / 1e6:.3f} | {statistics.mean(r['params'] for r in rs) / 1e3:.1f}K | "
                     f"{statistics.mean(r['latency_ms'] for r in rs):.3f} | {statistics.mean(r['seconds'] for r in rs):.0f} |")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
