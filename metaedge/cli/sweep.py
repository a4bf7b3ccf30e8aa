"""``metaedge sweep``: the accuracy-latency frontier of a model on a target, from one PruningNet."""

from __future__ import annotations

import argparse
import time
from typing import Any

from metaedge.cli._common import console, positive_int
from metaedge.config import META_NETS

__all__ = ["add_parser", "run"]


def add_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "sweep",
        help="many budgets from one baseline and one PruningNet: the accuracy-latency frontier, and the point to deploy",
        description="Trains (or reuses) the baseline and one PruningNet for all budgets, then runs every point (budget x "
        "--quant x --pruner) through the `metaedge compress` chain into <sweep-dir>/points/<name>/, each a deployable "
        "artifact folder with its manifest. Writes <sweep-dir>/sweep.json (after every point), frontier.csv and "
        "frontier.png (test accuracy of the deployed ONNX model against the measured latency of the backend chosen "
        "for the first --target), and prints the frontier. Re-running resumes: finished points are reused.",
    )
    p.add_argument("--config", help="TOML or YAML file with the per-point settings of `metaedge compress` (flags override it)")
    g = p.add_argument_group("the sweep")
    budgets = g.add_mutually_exclusive_group(required=True)
    budgets.add_argument("--prune-macs", metavar="LIST", help="MACs budgets: fractions of the baseline or counts, e.g. 0.5,0.25,0.1 or 20M,10M")
    budgets.add_argument("--prune-latency", metavar="LIST", help="latency budgets on the first --target, absolute: 2ms,1ms,500us")
    g.add_argument("--quant", default="w8a8", metavar="LIST", help="quant settings per budget: off, w8a8, w4a8, ... (default w8a8)")
    g.add_argument(
        "--pruner",
        default="metapruning",
        metavar="LIST",
        help="pruners per budget: metapruning (one shared PruningNet), vib, uniform, l1 (default metapruning)",
    )
    g.add_argument(
        "--jobs",
        type=positive_int,
        default=1,
        help="points run in parallel processes once the baseline and the PruningNet exist (default 1; "
        "parallel points share the cores they are timed on, so use 1 for latency numbers to quote)",
    )
    pick = g.add_mutually_exclusive_group()
    pick.add_argument("--pick", metavar="LATENCY", help="copy the most accurate point whose measured latency is at most this (1.5ms, 800us) to --out")
    pick.add_argument("--pick-acc", metavar="ACC", help="copy the fastest point whose test accuracy is at least this (0.97 or 97%%) to --out")
    g.add_argument("--out", help="where --pick / --pick-acc copy the chosen point (default metaedge-out/)")
    g.add_argument("--sweep-dir", help="the sweep's folder: points, sweep.json, frontier (default metaedge-sweep/)")
    g = p.add_argument_group("model and data (as for `metaedge compress`)")
    g.add_argument("--model")
    g.add_argument("--weights")
    g.add_argument("--width-mult", type=float)
    g.add_argument("--data")
    g.add_argument("--input-size", type=positive_int)
    g.add_argument("--train-subset", type=positive_int, metavar="N")
    g.add_argument("--in-chans", type=positive_int)
    g.add_argument("--epochs", type=int)
    g.add_argument("--batch-size", type=positive_int)
    g.add_argument("--lr", type=float)
    g.add_argument("--seed", type=int)
    g = p.add_argument_group("per-point settings (as for `metaedge compress`)")
    g.add_argument("--prune-preset", choices=("demo", "bench", "full"))
    g.add_argument("--quantizer", choices=("metaquant", "ste", "lsq", "ptq"))
    g.add_argument("--quant-preset", choices=("demo", "full"))
    g.add_argument("--quant-meta-net", choices=META_NETS, help="MetaQuant's meta network: multifc (default), fc or lstmfc")
    g.add_argument("--target", action="append", help="target(s) to compile for; the first is the frontier's (default x86 and rpi4)")
    g.add_argument("--device", help="remote device for measurement: tracker-host:port/key or host:port")
    g.add_argument("--backend", help="auto (default: fastest measured), onnxruntime, tvm, tensorrt")
    g.add_argument("--tune-trials", type=int, metavar="N")
    g.add_argument("--threads", type=positive_int)
    g.add_argument("--repeats", type=positive_int)
    g.add_argument("--warmup", type=int)
    g.add_argument("--cache-dir", help="baseline and checkpoint cache (default .metaedge-cache/)")
    g.add_argument("--quiet", action="store_true", help="no progress bars")
    return p


def _overrides(args: argparse.Namespace) -> dict[str, Any]:
    from metaedge.errors import MetaedgeError

    o: dict[str, Any] = {
        k: getattr(args, k)
        for k in (
            "model",
            "weights",
            "width_mult",
            "cache_dir",
            "prune_preset",
            "quantizer",
            "quant_preset",
            "quant_meta_net",
            "device",
            "backend",
            "tune_trials",
            "seed",
        )
        if getattr(args, k) is not None
    }
    if args.sweep_dir is not None:
        o["out"] = args.sweep_dir
    if args.target:
        o["targets"] = tuple(t for t in args.target if t.lower() != "none")
    if args.epochs is not None and args.epochs < 0:
        raise MetaedgeError(f"--epochs {args.epochs} is negative", "pass 0 or more")
    for section, pairs in (
        ("data", (("source", args.data), ("input_size", args.input_size), ("in_chans", args.in_chans), ("train_subset", args.train_subset))),
        ("train", (("epochs", args.epochs), ("batch_size", args.batch_size), ("lr", args.lr))),
        ("timing", (("threads", args.threads), ("repeats", args.repeats), ("warmup", args.warmup))),
    ):
        values = {k: v for k, v in pairs if v is not None}
        if values:
            o[section] = values
    return o


def sweep_config(args: argparse.Namespace):
    """Every value checked here, before any training: a bad one is one line and exit 2."""
    from dataclasses import replace

    from metaedge.config import PipelineConfig, load_config_file, merge_overrides
    from metaedge.sweep.config import SweepConfig, parse_accuracy, parse_budget_list, parse_pick_latency, split_list

    base = replace(PipelineConfig(), out="metaedge-sweep")
    if args.config:
        base = merge_overrides(base, load_config_file(args.config), where=args.config)
    base = merge_overrides(base, _overrides(args))
    kind = "macs" if args.prune_macs is not None else "latency"
    if args.pick is not None or args.pick_acc is not None:
        from metaedge.sweep.pick import check_destination

        check_destination(args.out or "metaedge-out")
    return SweepConfig(
        base=base,
        budget_kind=kind,
        budgets=parse_budget_list(args.prune_macs if kind == "macs" else args.prune_latency, kind),
        quants=split_list(args.quant, "--quant"),
        pruners=split_list(args.pruner, "--pruner"),
        jobs=args.jobs,
        pick_ms=parse_pick_latency(args.pick) if args.pick is not None else None,
        pick_acc=parse_accuracy(args.pick_acc) if args.pick_acc is not None else None,
        pick_out=args.out or "metaedge-out",
    )


def run(args: argparse.Namespace) -> int:
    from metaedge.sweep import choose_point, copy_point, run_sweep
    from metaedge.sweep.frontier import frontier_table
    from metaedge.sweep.runner import FRONTIER_CSV, FRONTIER_PNG, SUMMARY_NAME, frontier_title

    cfg = sweep_config(args)
    con = console()
    t0 = time.perf_counter()
    result = run_sweep(cfg, log=lambda m: con.print(f"[dim]{m}[/dim]"), quiet=args.quiet)
    con.print(frontier_table(result.rows, frontier_title(cfg)))
    pns = result.summary["pruningnets"]
    if pns:
        n_mp = sum(1 for p in result.summary["points"].values() if p["group"].startswith("metapruning-"))
        con.print(f"PruningNet: {len(pns)} shared by {n_mp} MetaPruning point(s): {', '.join(pns)}")
    con.print(f"frontier: {result.root / FRONTIER_PNG}, {result.root / FRONTIER_CSV}; summary {result.root / SUMMARY_NAME}; {time.perf_counter() - t0:.0f} s")
    if cfg.pick_ms is not None or cfg.pick_acc is not None:
        best = choose_point(result.rows, cfg.pick_ms, cfg.pick_acc)
        dest = copy_point(result.root / "points" / best.point, cfg.pick_out)
        con.print(f"picked {best.point}: {100 * best.test_acc:.2f}% test accuracy at {best.latency_ms:.3f} ms ({best.latency_source}) -> {dest}/")
    return 0
