"""Benchmark: does the PruningNet rank structures, and which PruningNet ranks them best?

The search trusts the PruningNet's score (generated weights, BN re-estimated, validation top-1).
This script checks that proxy against a truth that does not depend on any PruningNet: the same
random in-budget structures (the search's sampler and repair) are each trained for a short
fine-tune from the trained baseline's largest-L1 channels (KD from the baseline), twice with two
seeds. It reports, per budget:

- Spearman(PruningNet score, truth) for every PruningNet variant: generators initialised from the
  trained model (metaedge's default) against generators from scratch (the paper's), and one band
  over all budgets against a band around each budget alone;
- the noise ceiling: Spearman(truth seed 0, truth seed 1). A proxy cannot rank better than the
  truth agrees with itself; where the ceiling is low, the structures differ by less than one short
  fine-tune's noise and no proxy can pass a fixed bar;
- the spread of the truth (max - min val top-1 over the structures);
- two reference proxies that need no PruningNet (largest-L1 channels, BN re-estimated, no training; the
  parameter count): a PruningNet that ranks no better than these is not worth its training time.

Run:  python bench/pruning_proxy.py --quick     (smoke run)
      python bench/pruning_proxy.py             (ResNet-20, Fashion-MNIST 16x16; resumes from results.json)
Writes OUT/results.json and OUT/results.md.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch

from metaedge.compress.graph import analyze_channels
from metaedge.compress.metapruning import PRESETS, Pricer, PruningNet, WidthSpace
from metaedge.compress.metapruning.diagnostic import spearman, spearman_interval
from metaedge.compress.metapruning.sampling import Band, WidthSampler
from metaedge.compress.metapruning.space import repair
from metaedge.compress.metapruning.starts import start_model
from metaedge.compress.metapruning.training import PNTrainConfig, recalib_batches, score_candidate, train_pruningnet
from metaedge.compress.train import TrainConfig, evaluate, fit
from metaedge.data import DataConfig, load_data, make_loader
from metaedge.zoo import create_model


@dataclass(frozen=True)
class Variant:
    name: str
    init_from_model: bool
    lr: float
    per_budget_band: bool  # one PruningNet per budget (band around it) instead of one for all budgets


VARIANTS = {
    "model": Variant("model", True, PRESETS["bench"].pruningnet_lr, False),
    "scratch": Variant("scratch", False, 0.1, False),  # random generators: the base model's lr
    "model-band": Variant("model-band", True, PRESETS["bench"].pruningnet_lr, True),
}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="smoke run: small subset, one budget, 4 structures, 1-epoch PruningNets")
    ap.add_argument("--data", default="fashion-mnist")
    ap.add_argument("--input-size", type=int, default=16)
    ap.add_argument("--train-subset", type=int, default=8000)
    ap.add_argument("--val-frac", type=float, default=5000 / 60000)
    ap.add_argument("--arch", default="resnet20")
    ap.add_argument("--budgets", default="0.25,0.1,0.05")
    ap.add_argument("--variants", default=",".join(VARIANTS), help=f"comma-separated from {', '.join(VARIANTS)}")
    ap.add_argument("--structures", type=int, default=12, help="random in-budget structures per budget")
    ap.add_argument("--truth-epochs", type=int, default=1)
    ap.add_argument("--truth-seeds", type=int, default=2)
    ap.add_argument("--base-epochs", type=int, default=10)
    ap.add_argument("--pn-epochs", type=int, default=PRESETS["bench"].pruningnet_epochs)
    ap.add_argument("--multiple", type=int, default=4, help="channel multiple (bench/pruning.py uses 4 on ResNet-20 at 5%%)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default="bench-out/pruning-proxy")
    args = ap.parse_args(argv)
    unknown = [v for v in args.variants.split(",") if v not in VARIANTS]
    if unknown:
        ap.error(f"unknown variant(s) {', '.join(unknown)}; use {', '.join(VARIANTS)}")
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore")
    q = args.quick
    out = Path(args.out + ("-quick" if q else ""))
    out.mkdir(parents=True, exist_ok=True)
    budgets = [0.1] if q else [float(b) for b in args.budgets.split(",")]
    n_struct = 4 if q else args.structures
    pn_epochs = 1 if q else args.pn_epochs
    base_epochs = 1 if q else args.base_epochs
    pcfg = PRESETS["bench"]
    data = load_data(DataConfig(source=args.data, input_size=args.input_size, train_subset=1000 if q else args.train_subset, seed=0, val_frac=args.val_frac))
    print(f"data {data.name}: {data.summary()['sizes']} at {args.input_size}x{args.input_size}", flush=True)
    val_loader = make_loader(data.val, 256, False)
    res_path = out / "results.json"
    res: dict = json.loads(res_path.read_text()) if res_path.exists() else {"truth": {}, "scores": {}, "seconds": {}}

    def save() -> None:
        tmp = res_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(res, indent=1))
        tmp.replace(res_path)

    model = create_model(args.arch, num_classes=data.num_classes, in_chans=data.in_chans, input_size=data.input_size)
    ck = out / f"base_{args.arch}.pt"
    if ck.exists():
        model.load_state_dict(torch.load(ck, weights_only=True))
    else:
        fit(model, make_loader(data.train, 64, True), val_loader, TrainConfig(epochs=base_epochs, lr=0.1), quiet=True)
        torch.save(model.state_dict(), ck)
    model.eval()
    analysis = analyze_channels(model, data.train.tensors[0][:1], warn=False)
    pricer = Pricer(model, analysis, data.input_shape)
    cost = lambda w: float(pricer.macs(w))  # noqa: E731
    space = WidthSpace(analysis, pcfg.choices, args.multiple)
    recalib = recalib_batches(data.train, pcfg.batch_size, pcfg.recalib_batches, 0)

    # 1. the structures and their PruningNet-free truth
    structures: dict[str, list[dict[str, int]]] = {}
    for frac in budgets:
        budget = frac * pricer.base_macs
        rng = random.Random(4242 + int(frac * 1000))
        # Discovery order, so that a larger --structures extends the same list and the cached truth stays valid.
        found: list[tuple[int, ...]] = []
        while len(found) < n_struct:
            genes = repair(space.sample(rng), space, cost, pcfg.search_floor * budget, budget, rng)
            if genes is not None and genes not in found:
                found.append(genes)
        structures[str(frac)] = [space.widths(g) for g in found]
        for i, widths in enumerate(structures[str(frac)]):
            for seed in range(args.truth_seeds):
                key = f"{frac}/{i}/{seed}"
                if key in res["truth"]:
                    continue
                t = time.perf_counter()
                tcfg = TrainConfig(epochs=args.truth_epochs, batch_size=pcfg.batch_size, lr=pcfg.finetune_lr, distill_alpha=pcfg.distill, seed=seed)
                small = start_model("l1", model, analysis, widths, recalib, seed=seed)
                fit(small, make_loader(data.train, tcfg.batch_size, True, seed), val_loader, tcfg, teacher=model, quiet=True)
                res["truth"][key] = evaluate(small.eval(), val_loader)
                res["seconds"]["truth"] = res["seconds"].get("truth", 0.0) + time.perf_counter() - t
                save()
                print(f"  truth {frac:.2f} #{i} seed {seed}: {res['truth'][key]:.4f} ({time.perf_counter() - t:.0f} s)", flush=True)

    # 2. reference proxies that need no PruningNet: a PruningNet worth its training cost beats them
    for f, ws in structures.items():
        for i, widths in enumerate(ws):
            if f"l1-recal/{f}/{i}" not in res["scores"]:
                small = start_model("l1", model, analysis, widths, recalib)
                res["scores"][f"l1-recal/{f}/{i}"] = evaluate(small.eval(), val_loader)
                res["scores"][f"params/{f}/{i}"] = float(sum(p.numel() for p in small.parameters()))
    save()

    # 3. every PruningNet variant scores the same structures
    for vname in args.variants.split(","):
        v = VARIANTS[vname]
        bands = (
            {str(f): Band.around([f * pricer.base_macs]) for f in budgets}
            if v.per_budget_band
            else {"all": Band.around([f * pricer.base_macs for f in budgets])}
        )
        for band_key, band in bands.items():
            fracs = [band_key] if v.per_budget_band else [str(f) for f in budgets]
            if all(f"{vname}/{f}/{i}" in res["scores"] for f in fracs for i in range(n_struct)):
                continue
            t = time.perf_counter()
            torch.manual_seed(0)
            pn = PruningNet(model, analysis, hidden=pcfg.hidden, init_from_model=v.init_from_model)
            sampler = WidthSampler(space, cost, band, pcfg.random_widths, pcfg.sandwich, largest=pcfg.sandwich_largest)
            ptrain = TrainConfig(epochs=pn_epochs, batch_size=pcfg.batch_size, lr=v.lr, weight_decay=0.0, distill_alpha=pcfg.distill, seed=0)
            train_pruningnet(pn, space, data.train, PNTrainConfig(ptrain), out / f"pn_{vname}_{band_key}.pt", teacher=model, quiet=True, sampler=sampler)
            pn.eval()
            res["seconds"][f"pn_{vname}"] = res["seconds"].get(f"pn_{vname}", 0.0) + time.perf_counter() - t
            for f in fracs:
                for i, widths in enumerate(structures[f]):
                    s = score_candidate(pn, widths, recalib, data.val)
                    res["scores"][f"{vname}/{f}/{i}"] = s["accuracy"]
            save()
            print(f"  PruningNet {vname} band {band_key}: trained and scored ({time.perf_counter() - t:.0f} s)", flush=True)

    table = render(res, budgets, args.variants.split(",") + list(REFERENCES), n_struct, args.truth_seeds)
    (out / "results.md").write_text(table + "\n")
    print(table)
    return 0


# Scored without a PruningNet (section 2 of main): largest-L1 channels of the trained model with BN
# re-estimated and no training, and the parameter count (all structures spend ~the same MACs).
REFERENCES = ("l1-recal", "params")


def render(res: dict, budgets: list[float], variants: list[str], n: int, seeds: int) -> str:
    head = "| MACs budget | structures | truth spread (val top-1 points) | noise ceiling: Spearman(truth seed 0, seed 1) |"
    head += "".join(f" Spearman({v}, truth) |" for v in variants)
    head += "".join(f" {v} score spread |" for v in variants)
    lines = [head, "|" + "---|" * (3 + 2 * len(variants) + 1)]
    for frac in budgets:
        f = str(frac)
        truth = [[res["truth"][f"{f}/{i}/{s}"] for s in range(seeds)] for i in range(n)]
        mean_truth = [statistics.fmean(t) for t in truth]
        ceiling = spearman([t[0] for t in truth], [t[1] for t in truth]) if seeds >= 2 else float("nan")
        row = f"| {frac:.0%} | {n} | {100 * (max(mean_truth) - min(mean_truth)):.2f} | {ceiling:.3f} |"
        for v in variants:
            sc = [res["scores"].get(f"{v}/{f}/{i}") for i in range(n)]
            if None in sc:
                row += " - |"
                continue
            lo, hi = spearman_interval(sc, mean_truth)
            row += f" {spearman(sc, mean_truth):.3f} [{lo:.2f}, {hi:.2f}] |"
        for v in variants:
            sc = [res["scores"].get(f"{v}/{f}/{i}") for i in range(n)]
            if v == "params":
                row += f" {(max(sc) - min(sc)) / 1e3:.1f}K params |" if None not in sc else " - |"
            else:
                row += f" {100 * (max(sc) - min(sc)):.2f} |" if None not in sc else " - |"
        lines.append(row)
    secs = ", ".join(f"{k} {v:.0f}" for k, v in res["seconds"].items())
    return "\n".join(lines) + (
        f"\n\nTruth: mean val top-1 over {seeds} fine-tune seeds from the L1 start. Brackets: 90% bootstrap interval over the structures. Wall s: {secs}."
    )


if __name__ == "__main__":
    raise SystemExit(main())
