"""``metaedge compress``: the whole chain on the embedded default, or on your model and data."""

from __future__ import annotations

import argparse
import time
from typing import TYPE_CHECKING, Any

from metaedge.cli._common import console, nonnegative_int, positive_int
from metaedge.config import META_NETS

if TYPE_CHECKING:
    from metaedge.manifest import Manifest

__all__ = ["add_parser", "compiled_table", "ratio_lines", "run", "summary_table"]


def add_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "compress",
        help="train/reuse, prune, quantize, export with a parity gate, measure and compile",
        description="With no arguments: MobileNetV2 on scikit-learn's digits, MetaPruning to 50%% MACs, "
        "int8 MetaQuant QAT, ONNX export with parity gate, eager vs ONNX Runtime latency, TVM compile for "
        "the host and a cross-compile for rpi4. Re-running reuses the cached baseline and resumes stages.",
    )
    p.add_argument("--config", help="TOML or YAML file with settings (flags override it)")
    g = p.add_argument_group("model and data")
    g.add_argument("--model", help="registered name (see `metaedge info --list`), pkg.module:factory, or a .pt2 file")
    g.add_argument("--weights", help="state dict (.pt) loaded with torch.load(weights_only=True)")
    g.add_argument("--width-mult", type=float, help="width multiplier for zoo models")
    g.add_argument(
        "--data",
        help="'digits' (default), 'fashion-mnist' (Debian package dataset-fashion-mnist), a folder of MNIST-format IDX files, an image folder (one subfolder per class) or a .npz with x, y",
    )
    g.add_argument("--input-size", type=positive_int, help="square input size in pixels (default: the data's own size; 16 for digits)")
    g.add_argument(
        "--train-subset", type=positive_int, metavar="N", help="train on at most N images (stratified, seeded; val and test keep their size), for CPU runs"
    )
    g.add_argument("--in-chans", type=positive_int, help="input channels (default: the data's)")
    g.add_argument("--epochs", type=int, help="baseline training epochs (0: use --weights as they are)")
    g.add_argument("--batch-size", type=positive_int)
    g.add_argument("--lr", type=float)
    g.add_argument("--seed", type=int)
    g = p.add_argument_group("compression")
    g.add_argument("--prune-macs", help="MACs budget: fraction of the baseline (0.5) or absolute (20M); 'off' to skip")
    g.add_argument("--prune-preset", choices=("demo", "bench", "full"), help="PruningNet/search/fine-tune effort")
    g.add_argument("--prune-latency", help="latency budget on the first --target instead of MACs: 2ms, 500us, or a fraction of the measured baseline (0.6)")
    g.add_argument(
        "--pruner",
        choices=("metapruning", "vib", "uniform", "l1", "none"),
        help="channel pruner: metapruning (default: PruningNet + evolutionary search), vib (variational information bottleneck gates), "
        "uniform (one width ratio) or l1 (uniform widths, largest-L1 filters); none: --lowrank alone",
    )
    g.add_argument(
        "--prune-rank-check",
        type=nonnegative_int,
        metavar="N",
        help="MetaPruning: rank N random in-budget structures by the PruningNet's score and by a 1-epoch fine-tune, "
        "and record their Spearman correlation and its 90%% interval in the manifest (default 0: off; 10 or more to read it)",
    )
    g.add_argument(
        "--lowrank",
        choices=("off", "tucker"),
        help="tucker: after the pruner, kxk convs as 1x1-kxk-1x1 (Tucker-2) and linears by SVD, ranks chosen so the whole model meets --prune-macs; off (default)",
    )
    g.add_argument("--quant", help="w8a8, w4a8, w2a8, w1a8; 'off' to skip")
    g.add_argument(
        "--quantizer",
        choices=("metaquant", "ste", "lsq", "ptq"),
        help="QAT with MetaQuant (default), STE or LSQ (learned step sizes), or post-training int8 (ptq, w8a8 only)",
    )
    g.add_argument("--quant-preset", choices=("demo", "full"))
    g.add_argument(
        "--quant-profile",
        choices=("auto", "ort", "tensorrt"),
        help="QDQ export profile: ort (uint8 activations, ONNX Runtime's fused kernels), tensorrt (symmetric int8, TensorRT's explicit quantization); auto (default): tensorrt when a backend to compile with needs it (--backend tensorrt, Jetson and CUDA targets)",
    )
    g.add_argument(
        "--quant-layer-bits",
        metavar="SPEC",
        help="per-layer weight bits: 'default' (first, last and depthwise layers at 8), 'uniform' (all at --quant's bits), or items like first=8,depthwise=same,layer3.*=4",
    )
    g.add_argument("--quant-kd", type=float, metavar="ALPHA", help="weight of distillation from the fp32 model during QAT, 0..1 (default 0.5; 0: labels only)")
    g.add_argument(
        "--quant-meta-net",
        choices=META_NETS,
        help="MetaQuant's meta network: multifc (default: element-wise MLP that steers direction, not step size), fc (FC-Grad, the paper's: a learned lr multiplier) or lstmfc (LSTM cell; small models only)",
    )
    g = p.add_argument_group("targets and measurement")
    g.add_argument("--target", action="append", help="target to compile for (repeatable; 'none' to skip); default x86 and rpi4")
    g.add_argument("--device", help="remote device for measurement: tracker-host:port/key or host:port")
    g.add_argument("--backend", help="auto (default: fastest measured), onnxruntime, tvm, tensorrt")
    g.add_argument(
        "--tune-trials",
        type=int,
        metavar="N",
        help="MetaSchedule trials per target for TVM, kept in the target's tuning database under the cache (default 0: apply what the database has)",
    )
    g.add_argument("--threads", type=positive_int, help="threads for latency measurement (default 1)")
    g.add_argument("--repeats", type=positive_int, help="timed repeats (default 100)")
    g.add_argument("--warmup", type=int, help="warm-up runs (default 10)")
    g.add_argument("--parity-atol", type=float, help="max abs logit error allowed by the export parity gate (default 1e-3)")
    g = p.add_argument_group("output")
    g.add_argument("--out", help="artifact directory (default metaedge-out/)")
    g.add_argument("--cache-dir", help="baseline and checkpoint cache (default .metaedge-cache/)")
    g.add_argument("--quiet", action="store_true", help="no progress bars")
    return p


def _overrides(args: argparse.Namespace) -> dict[str, Any]:
    from metaedge.errors import MetaedgeError

    o: dict[str, Any] = {}
    for flag in (
        "model",
        "weights",
        "width_mult",
        "out",
        "cache_dir",
        "prune_macs",
        "prune_preset",
        "prune_latency",
        "pruner",
        "prune_rank_check",
        "lowrank",
        "quant",
        "quantizer",
        "quant_preset",
        "quant_profile",
        "quant_layer_bits",
        "quant_kd",
        "quant_meta_net",
        "device",
        "backend",
        "tune_trials",
        "seed",
    ):
        v = getattr(args, flag)
        if v is not None:
            o[flag] = v
    if args.target:
        o["targets"] = tuple(t for t in args.target if t.lower() != "none")
    data = {
        k: v
        for k, v in (("source", args.data), ("input_size", args.input_size), ("in_chans", args.in_chans), ("train_subset", args.train_subset))
        if v is not None
    }
    if data:
        o["data"] = data
    train = {k: v for k, v in (("epochs", args.epochs), ("batch_size", args.batch_size), ("lr", args.lr)) if v is not None}
    if args.epochs is not None and args.epochs < 0:
        raise MetaedgeError(f"--epochs {args.epochs} is negative", "pass 0 or more")
    if train:
        o["train"] = train
    timing = {k: v for k, v in (("threads", args.threads), ("repeats", args.repeats), ("warmup", args.warmup)) if v is not None}
    if timing:
        o["timing"] = timing
    if args.parity_atol is not None:
        if args.parity_atol <= 0:
            raise MetaedgeError(f"--parity-atol {args.parity_atol} must be positive", "pass e.g. 1e-3")
        o["export"] = {"atol": args.parity_atol}
    return o


def _fmt_ms(stats: dict | None) -> str:
    return f"{stats['p50_ms']:.3f}" if stats else "-"


def _pct(a: float | None) -> str:
    return f"{100 * a:.2f}%" if a is not None else "-"


def summary_table(manifest: Manifest):
    from rich.table import Table

    from metaedge.compress.cost import format_count

    stages, lat, cost = manifest.stages, manifest.latency or {}, manifest.cost
    t = Table(title=f"metaedge summary: {manifest.model.name} on {manifest.data.source}")
    for col in ("stage", "val acc", "test acc", "MACs", "params", "ORT p50 ms", "eager p50 ms"):
        t.add_column(col, justify="right" if col != "stage" else "left")
    base = stages.baseline
    assert base is not None and cost is not None and stages.final is not None  # a finished run's manifest
    t.add_row(
        "baseline fp32",
        _pct(base.accuracy.val),
        _pct(base.accuracy.test),
        format_count(base.macs),
        format_count(base.params),
        _fmt_ms(lat.get("onnxruntime_baseline")),
        _fmt_ms(lat.get("torch_eager_baseline")),
    )
    if stages.prune is not None:
        pr = stages.prune
        t.add_row(
            f"pruned ({pr.method})",
            _pct(pr.accuracy.val),
            _pct(pr.accuracy.test),
            format_count(pr.macs),
            format_count(pr.params),
            "-" if stages.quant else _fmt_ms(lat.get("onnxruntime")),
            _fmt_ms(lat.get("torch_eager")),
        )
    if stages.quant is not None:
        q = stages.quant
        t.add_row(
            f"quantized w{q.weight_bits}a{q.act_bits} ({q.method})",
            _pct(q.accuracy.val),
            _pct(q.accuracy.test),
            format_count(cost.macs),
            format_count(cost.params),
            _fmt_ms(lat.get("onnxruntime")),
            "-",
        )
    t.add_row(
        "[bold]deployed model.onnx[/bold]",
        "-",
        _pct(stages.final.accuracy.test),
        format_count(cost.macs),
        format_count(cost.params),
        _fmt_ms(lat.get("onnxruntime")),
        "-",
    )
    return t


def ratio_lines(manifest: Manifest) -> list[str]:
    r, lines = manifest.latency_ratios, []
    if r is not None:
        line = f"baseline eager / ONNX Runtime: {r.eager_over_onnxruntime_baseline:.2f}x   final eager / ONNX Runtime: {r.eager_over_onnxruntime:.2f}x   baseline ORT / final ORT: {r.baseline_over_final_onnxruntime:.2f}x"
        if r.fp32_over_int8_onnxruntime is not None:
            line += f"   fp32 / int8 ORT: {r.fp32_over_int8_onnxruntime:.2f}x"
        lines.append(line)
    if manifest.export is not None:
        p = manifest.export.parity
        lines.append(f"parity gate: max abs err {p['max_abs_err']:.2e}, top-1 agreement {p['top1_agreement']:.4f} on {p['samples']} validation images")
    return lines


def compiled_table(manifest: Manifest):
    from rich.table import Table

    compiled = manifest.compiled or {}
    if not compiled:
        return None
    t = Table(title="targets: latency p50 (ms) per backend; vs eager = local PyTorch eager / backend (local only)")
    for col in ("target", "backend", "where", "p50 ms", "vs eager", "parity max err", "artifact"):
        t.add_column(col)
    eager = (manifest.latency or {}).get("torch_eager", {}).get("p50_ms")
    for target, section in compiled.items():
        chosen = section.get("chosen")
        for backend, entry in section.items():
            if not isinstance(entry, dict) or "status" not in entry:
                continue  # "chosen", "chosen_by" and other scalars sit beside the backends
            lat = entry.get("latency") or {}
            p50 = lat.get("p50_ms")
            parity = (entry.get("parity") or {}).get("max_abs_err")
            mark = " *" if backend == chosen else ""
            where = entry.get("measured_on") or f"{entry.get('status', '-')}: {str(entry.get('reason', ''))[:60]}"
            t.add_row(
                target,
                backend + mark,
                str(where),
                f"{p50:.3f}" if p50 else "-",
                f"{eager / p50:.2f}x" if (p50 and eager and entry.get("measured_on") == "local") else "-",
                f"{parity:.1e}" if parity is not None else "-",
                str(entry.get("path", "-")),
            )
    return t


def run(args: argparse.Namespace) -> int:
    from metaedge.config import PipelineConfig, load_config_file, merge_overrides

    cfg = PipelineConfig()
    if args.config:
        cfg = merge_overrides(cfg, load_config_file(args.config), where=args.config)
    cfg = merge_overrides(cfg, _overrides(args))
    # only now: every setting above is checked without torch, whose import alone takes seconds here
    from metaedge.pipeline import run_pipeline

    con = console()
    t0 = time.perf_counter()
    result = run_pipeline(cfg, log=lambda m: con.print(f"[dim]{m}[/dim]"), quiet=args.quiet)
    con.print(summary_table(result.manifest))
    ct = compiled_table(result.manifest)
    if ct is not None:
        con.print(ct)
    for line in ratio_lines(result.manifest):
        con.print(line)
    con.print(f"artifacts in {result.out_dir}/ (manifest.json), {time.perf_counter() - t0:.0f} s")
    return 0
