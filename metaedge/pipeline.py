"""Runs the stages of ``metaedge compress`` in order; owns nothing else.

model -> baseline (train or reuse) -> prune -> quantize -> export + parity -> latency -> compile.
After every stage the manifest is rewritten atomically, so a killed run leaves a consistent
artifact directory, and long stages (training, PruningNet, search, QAT) resume from their
checkpoints under the cache directory when the same command is run again.
"""
from __future__ import annotations

import hashlib
import json
import platform
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.nn as nn

from metaedge.artifacts import ArtifactDir, atomic_path, atomic_write_json, file_sha256
from metaedge.compress.cost import count_cost
from metaedge.compress.train import evaluate, fit
from metaedge.config import PipelineConfig
from metaedge.data import DataSplits, load_data, make_loader
from metaedge.deploy.export import check_parity, export_onnx
from metaedge.errors import MetaedgeError
from metaedge.targets.measure.local import time_onnxruntime, time_torch_eager
from metaedge.zoo import build_model

__all__ = ["PipelineResult", "run_pipeline", "tool_versions"]

Log = Callable[[str], None]


@dataclass
class PipelineResult:
    out_dir: Path
    manifest: dict[str, Any]
    seconds: float
    rows: list[dict[str, Any]] = field(default_factory=list)


def tool_versions() -> dict[str, str]:
    import importlib.metadata as md

    versions = {"python": platform.python_version()}
    for pkg in ("metaedge", "torch", "onnx", "onnxruntime", "onnxscript", "apache-tvm", "numpy", "scikit-learn", "tensorly"):
        try:
            versions[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            pass
    return versions


def _model_kwargs(cfg: PipelineConfig, data: DataSplits) -> dict[str, Any]:
    kw: dict[str, Any] = {"num_classes": data.num_classes, "in_chans": data.in_chans, "input_size": data.input_size}
    if cfg.width_mult is not None:
        kw["width_mult"] = cfg.width_mult
    return kw


def _baseline_key(cfg: PipelineConfig, data: DataSplits) -> str:
    ident = {
        "model": cfg.model,
        "kwargs": _model_kwargs(cfg, data),
        "weights": file_sha256(cfg.weights) if cfg.weights else None,
        "data": asdict(cfg.data),
        "train": asdict(cfg.train),
    }
    return hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:16]


def _accuracy(model: nn.Module, data: DataSplits) -> dict[str, float]:
    return {
        "val": evaluate(model, make_loader(data.val, 256, False)),
        "test": evaluate(model, make_loader(data.test, 256, False)),
    }


def _onnx_accuracy(onnx_path: Path, data: DataSplits) -> float:
    from metaedge.deploy.backends.onnxruntime import OrtRunner

    runner = OrtRunner(onnx_path, threads=1)
    x, y = data.test.tensors
    logits = np.concatenate([runner.run(x[i : i + 128].numpy()) for i in range(0, len(x), 128)])
    return float((logits.argmax(1) == y.numpy()).mean())


def _stage_baseline(cfg: PipelineConfig, data: DataSplits, log: Log, quiet: bool) -> tuple[nn.Module, dict[str, Any]]:
    model = build_model(cfg.model, cfg.weights, **_model_kwargs(cfg, data))
    key = _baseline_key(cfg, data)
    cache = Path(cfg.cache_dir) / f"baseline-{key}"
    weights_path, result_path = cache / "model.pt", cache / "result.json"
    t0 = time.perf_counter()
    cached = weights_path.exists() and result_path.exists()
    if cached:
        model.load_state_dict(torch.load(weights_path, map_location="cpu", weights_only=True))
        info = json.loads(result_path.read_text())
        log(f"baseline: reusing cached model {weights_path}")
    else:
        train_seconds = 0.0
        if cfg.train.epochs > 0:
            log(f"baseline: training {cfg.model} for {cfg.train.epochs} epochs (checkpoint {cache / 'checkpoint.pt'})")
            res = fit(
                model,
                make_loader(data.train, cfg.train.batch_size, True, cfg.train.seed),
                make_loader(data.val, 256, False),
                cfg.train,
                checkpoint=cache / "checkpoint.pt",
                resume=True,
                desc="baseline",
                quiet=quiet,
            )
            train_seconds = res.seconds
        info = {"train_seconds": round(train_seconds, 2), "accuracy": _accuracy(model, data)}
        with atomic_path(weights_path) as tmp:
            torch.save(model.state_dict(), tmp)
        atomic_write_json(result_path, info)
    cost = count_cost(model, data.input_shape)
    info = {**info, "macs": cost.macs, "params": cost.params, "cached": cached, "seconds": round(time.perf_counter() - t0, 2)}
    return model.eval(), info


def _method_tag(cfg: PipelineConfig) -> str:
    """Cache-directory suffix of the compression method ("" for MetaPruning alone, the original layout)."""
    return ("" if cfg.pruner == "metapruning" else f"-{cfg.pruner}") + ("-tucker" if cfg.lowrank == "tucker" else "") + _shared_pn_tag(cfg)


def _shared_pn_tag(cfg: PipelineConfig) -> str:
    """"-pn<hash>" when the PruningNet is shared over a sweep's budgets: its search, fine-tune and QAT
    caches must not mix with those of a PruningNet trained for one budget."""
    if cfg.pruningnet_budgets is None:
        return ""
    kind = f"latency-{cfg.targets[0]}" if cfg.latency_budget_enabled else "macs"
    return "-pn" + hashlib.sha256(json.dumps([kind, list(cfg.pruningnet_budgets)]).encode()).hexdigest()[:8]


def _shared_band(cfg: PipelineConfig, base_macs: int) -> tuple[float, float]:
    """The absolute cost band of every budget in ``cfg.pruningnet_budgets`` (see sampling.Band.around)."""
    from metaedge.compress import metapruning as mp
    from metaedge.compress.metapruning.sampling import Band
    from metaedge.latency import parse_latency_budget

    if cfg.latency_budget_enabled:
        try:  # absolute only: a fraction would follow each run's own baseline measurement, and the band with it
            budgets = [parse_latency_budget(b) for b in cfg.pruningnet_budgets]
        except ValueError as exc:
            raise MetaedgeError(str(exc), "a shared PruningNet needs absolute latency budgets such as 2ms or 500us") from exc
    else:
        budgets = [mp.parse_budget(b, base_macs) for b in cfg.pruningnet_budgets]
    band = Band.around(budgets)
    return band.lo, band.hi


def _stage_prune(cfg: PipelineConfig, model: nn.Module, data: DataSplits, workdir: Path, log: Log, quiet: bool, budget_fn=None, latency_budget_ms: float | None = None) -> tuple[nn.Module, dict[str, Any], Path | None]:
    """Channel pruning (--pruner) and/or Tucker low rank (--lowrank) to the budget. Combined, the pruner
    runs first on the original graph to its share of the budget (lowrank.pruning_budget), Tucker then
    factorizes the pruned layers to meet the budget exactly, and one fine-tune ends it, as for every method."""
    from metaedge.compress import metapruning as mp

    preset = mp.PRESETS[cfg.prune_preset]
    base = count_cost(model, data.input_shape)
    if budget_fn is not None:
        budget = float(latency_budget_ms)
        prune_cfg = replace(preset, budget_kind="latency", budget=budget)
        what = f"<= {budget:.3f} ms predicted on {cfg.targets[0]}"
    else:
        budget = mp.parse_budget(str(cfg.prune_macs), base.macs)
        prune_cfg = replace(preset, budget_kind="macs", budget=budget)
        what = f"<= {budget / 1e6:.2f}M MACs ({budget / base.macs:.0%} of {base.macs / 1e6:.2f}M)"
    tucker = cfg.lowrank == "tucker"
    method = "+".join(m for m in (cfg.pruner if cfg.pruner != "none" else "", "tucker" if tucker else "") if m)
    log(f"prune: {method} to {what}, preset {cfg.prune_preset}")
    small, info, plot = model, {}, None
    if cfg.pruner != "none":
        if tucker:
            from metaedge.compress.lowrank import pruning_budget

            # Tucker only removes MACs: the pruner must land close under its share (0.98, not the search's usual 0.95)
            prune_cfg = replace(prune_cfg, budget=pruning_budget(model, data.input_shape, budget, preset.channel_multiple), finetune_epochs=0,
                                search_floor=max(prune_cfg.search_floor, 0.98))
            log(f"prune: {cfg.pruner} to {prune_cfg.budget / 1e6:.2f}M MACs first, then Tucker on the pruned layers, then one fine-tune")
        shared_pn = None
        if cfg.pruningnet_budgets is not None:
            # workdir.parent is the baseline's run directory: one PruningNet per baseline, preset and band
            prune_cfg = replace(prune_cfg, band=_shared_band(cfg, base.macs))
            shared_pn = workdir.parent / f"pruningnet-{cfg.prune_preset}{_shared_pn_tag(cfg)}.pt"
            log(f"prune: {'reusing' if shared_pn.exists() else 'training'} the shared PruningNet {shared_pn} "
                f"(band {prune_cfg.band[0]:.4g}..{prune_cfg.band[1]:.4g}, budgets {', '.join(cfg.pruningnet_budgets)})")
        small, info, plot = _run_pruner(cfg, model, data, prune_cfg, workdir, quiet, budget_fn, shared_pn)
    if tucker:
        from metaedge.compress.lowrank import LowRankConfig, lowrank_model

        res = lowrank_model(small, data, LowRankConfig(budget=budget, rank_multiple=preset.channel_multiple, finetune=preset.finetune_config()),
                            workdir / "tucker", teacher=model, quiet=quiet)
        small, lowrank = res.model, res.summary()
        info.update(ranks=lowrank.pop("ranks"), lowrank=lowrank, seconds={**info.get("seconds", {}), **{f"tucker_{k}": v for k, v in res.seconds.items()}})
        if cfg.pruner != "none":
            info["prune_budget"] = prune_cfg.budget
    cost = count_cost(small, data.input_shape)
    if cost.macs > budget and budget_fn is None:
        raise MetaedgeError(f"pruned model has {cost.macs} MACs, over the budget {budget:.0f}", "this is a bug in the search; report it with the search log")
    info = {"method": method, "budget_kind": prune_cfg.budget_kind, "budget": budget, "macs": cost.macs, "params": cost.params,
            **({"budget_use": cost.macs / budget} if budget_fn is None else {}), **info, "accuracy": _accuracy(small, data)}
    return small.eval(), info, plot


def _run_pruner(cfg: PipelineConfig, model: nn.Module, data: DataSplits, prune_cfg, workdir: Path, quiet: bool, budget_fn=None,
                shared_pn: Path | None = None) -> tuple[nn.Module, dict[str, Any], Path | None]:
    """The --pruner's small model, its manifest entries (widths, seconds, method details) and search plot (MetaPruning only)."""
    from metaedge.compress import metapruning as mp

    if cfg.pruner == "metapruning":
        res = mp.prune_model(model, data, prune_cfg, workdir, budget_fn=budget_fn, quiet=quiet, pruningnet_checkpoint=shared_pn)
        info = {"pruningnet": str(shared_pn or workdir / "pruningnet.pt"), "widths": res.widths, "search_accuracy": res.search_accuracy, "search_log": str(res.search_log), "start": res.init,
                "start_accuracy": res.start_accuracy, "seconds": res.seconds}
        if res.rank_check is not None:
            info["rank_check"] = res.rank_check
        return res.model, info, res.plot
    if cfg.pruner == "vib":
        from metaedge.compress.vib import PRESETS as VIB_PRESETS, vib_prune

        out = vib_prune(model, data, prune_cfg, VIB_PRESETS[cfg.prune_preset], workdir, budget_fn=budget_fn, quiet=quiet)
    else:
        from metaedge.compress.metapruning.baselines import prune_baseline

        out = prune_baseline(model, data, cfg.pruner, prune_cfg, workdir, budget_fn=budget_fn, quiet=quiet)
    return out.model, {"widths": out.widths, "seconds": out.seconds, **out.details}, None


def _latency_budget(cfg: PipelineConfig, baseline: nn.Module, data: DataSplits, out: ArtifactDir, log: Log):
    """A per-layer latency table measured on the first target, calibrated by one end-to-end
    measurement of the baseline there; returns (latency_fn, budget_ms, info)."""
    from metaedge.compress.cost import layer_specs
    from metaedge.deploy.compile import compile_for_target
    from metaedge.latency import parse_latency_budget
    from metaedge.targets.latency_table import make_latency_fn
    from metaedge.targets.registry import get_target

    target = get_target(cfg.targets[0])
    where = cfg.device or "this machine"
    log(f"prune: measuring the per-layer latency table of {cfg.model} on {target.name} ({where})")
    fn = make_latency_fn(target, cfg.device, model=baseline, input_shape=data.input_shape, width_multipliers=(0.25, 0.5, 0.75, 1.0))
    section = compile_for_target(out.path("baseline.onnx"), target, out.root / "latency-baseline", backends="tvm", timing=cfg.timing, device=cfg.device)
    measured = (section.get("tvm") or {}).get("latency", {}) or {}
    specs = layer_specs(baseline, data.input_shape)
    info: dict[str, Any] = {"target": target.name, "device": cfg.device, "table_raw_ms": fn.table.predict(specs)}
    if measured.get("p50_ms"):
        info["baseline_measured_ms"] = measured["p50_ms"]
        info["table_scale"] = fn.table.calibrate(specs, measured["p50_ms"])
    reference = measured.get("p50_ms") or fn.table.predict(specs)
    try:
        budget = parse_latency_budget(str(cfg.prune_latency), reference)
    except ValueError as exc:
        raise MetaedgeError(str(exc), "pass --prune-latency like 2ms, 500us or 0.6") from exc
    info["budget_ms"] = budget
    if budget < fn.table.overhead_ms:
        raise MetaedgeError(f"latency budget {budget:.3f} ms is below the target's fixed overhead {fn.table.overhead_ms:.3f} ms", "raise --prune-latency")
    return fn, budget, info


def _qdq_profile(cfg: PipelineConfig) -> tuple[str, str]:
    """The QDQ export profile for the backends this run compiles with (see deploy.qdq.choose_qdq_profile)."""
    from metaedge.deploy.qdq import choose_qdq_profile
    from metaedge.targets.registry import get_target

    chosen = [b.strip() for b in cfg.backend.split(",") if b.strip()] if cfg.backend != "auto" else []
    for name in cfg.targets:
        backends = list(get_target(name).backends) if cfg.backend == "auto" else chosen
        profile, why = choose_qdq_profile(cfg.quant_profile, backends)
        if profile != "ort":
            return profile, why if str(cfg.quant_profile).lower() != "auto" else f"{why} (target {name})"
    return choose_qdq_profile(cfg.quant_profile, chosen)


def _profile_accuracy(onnx_path: Path, data: DataSplits, profile: str) -> float:
    """Test accuracy in ORT with the session the parity gate uses for ``profile`` (for tensorrt: no
    int8 -> uint8 conversion, whose x86 kernels saturate; see deploy.qdq.ort_session)."""
    from metaedge.deploy.qdq import ort_session

    sess = ort_session(onnx_path, profile)
    name = sess.get_inputs()[0].name
    x, y = data.test.tensors
    logits = np.concatenate([sess.run(None, {name: x[i : i + 128].numpy()})[0] for i in range(0, len(x), 128)])
    return float((logits.argmax(1) == y.numpy()).mean())


def _stage_quant(cfg: PipelineConfig, model: nn.Module, data: DataSplits, fp32_onnx: Path, onnx_path: Path, workdir: Path, log: Log, quiet: bool) -> tuple[nn.Module, dict[str, Any], dict[str, Any]]:
    """QAT (MetaQuant / STE / LSQ) or PTQ, written to ``onnx_path`` as QDQ in the profile the
    backends need, behind the parity gate (and, for tensorrt, the Q/DQ placement rules).
    Returns (model the parity gate compared against, quant info, parity report)."""
    from metaedge.compress import metaquant as mq
    from metaedge.deploy.trt_qdq_rules import require_tensorrt_qdq

    profile, why = _qdq_profile(cfg)
    example = data.val.tensors[0][:1]
    if cfg.quantizer == "ptq":
        info = _stage_ptq(fp32_onnx, onnx_path, data, log, profile)
        info["profile"], info["profile_reason"] = profile, why
        if profile == "tensorrt":
            info["tensorrt_rules"] = require_tensorrt_qdq(onnx_path, f"PTQ model {onnx_path.name}").to_dict()
        info["accuracy"] = {"val": None, "test": _profile_accuracy(onnx_path, data, profile)}
        parity = {"reference": "fp32 PyTorch (PTQ has no fake-quant model)", **check_parity(model, onnx_path, data.val.tensors[0], cfg.export, raise_on_fail=False).to_dict()}
        return model, info, parity
    from metaedge.deploy.qdq import check_qdq_fusion, check_qdq_parity, export_qdq

    wbits, abits = mq.parse_quant_spec(str(cfg.quant))
    qcfg = replace(mq.PRESETS[cfg.quant_preset], weight_bits=wbits, act_bits=abits, method=cfg.quantizer, weight_quantizer=mq.default_weight_quantizer(wbits),
                   profile=profile, layer_bits=cfg.quant_layer_bits, **({} if cfg.quant_kd is None else {"kd_alpha": cfg.quant_kd}))
    log(f"quant: {cfg.quantizer} QAT w{wbits}a{abits} ({qcfg.effective_weight_quantizer} weights, layer bits {mq.parse_bit_policy(qcfg.layer_bits).to_spec()}), "
        f"{profile} QDQ profile ({why}), preset {cfg.quant_preset}")
    tag = hashlib.sha256(json.dumps(asdict(qcfg), sort_keys=True).encode()).hexdigest()[:8]
    res = mq.quantize_model(model, data, qcfg, workdir / f"quant-{cfg.quant}-{cfg.quantizer}-{cfg.quant_preset}-{cfg.prune_macs}{_method_tag(cfg)}-{tag}", quiet=quiet)
    export = export_qdq(res.model, example, onnx_path, profile=profile)
    parity = check_qdq_parity(res.model, onnx_path, data.val.tensors[0])
    info = {
        "method": cfg.quantizer, "weight_bits": wbits, "act_bits": abits, "weight_quantizer": qcfg.effective_weight_quantizer,
        "profile": profile, "profile_reason": why, "layer_bits": mq.parse_bit_policy(qcfg.layer_bits).to_spec(),
        "kd_alpha": qcfg.kd_alpha, "layers": res.layers, "packed_bytes": res.packed_bytes,
        "accuracy": {"val": res.val_accuracy, "test": res.test_accuracy}, "seconds": round(res.seconds, 2), "export": export,
    }
    if profile == "ort":
        info["fusion"] = check_qdq_fusion(onnx_path)
    return res.model.eval(), info, parity


def _stage_ptq(fp32_onnx: Path, onnx_path: Path, data: DataSplits, log: Log, profile: str = "ort") -> dict[str, Any]:
    """Post-training int8 (ONNX Runtime's quantize_static, QDQ, per-channel) on training batches."""
    from metaedge.compress.metaquant.ptq import quantize_ptq

    log(f"quant: post-training int8 with ONNX Runtime quantize_static (QDQ, per-channel, {profile} profile), 8 calibration batches of 32")
    x = data.train.tensors[0]
    t0 = time.perf_counter()
    quantize_ptq(fp32_onnx, onnx_path, [x[i : i + 32].numpy() for i in range(0, min(len(x), 256), 32)], profile=profile)
    return {"method": "ptq", "weight_bits": 8, "act_bits": 8, "seconds": round(time.perf_counter() - t0, 2)}


def _tvm_options(cfg: PipelineConfig, target_name: str):
    from metaedge.deploy.backends.tvm import TvmOptions, tuning_dir_for

    return TvmOptions(tune_trials=int(cfg.tune_trials), tuning_dir=tuning_dir_for(target_name, cfg.cache_dir),
                      tune_device=cfg.device, threads=cfg.timing.threads)


def run_pipeline(cfg: PipelineConfig, log: Log = print, quiet: bool = False) -> PipelineResult:
    t_start = time.perf_counter()
    torch.manual_seed(cfg.seed)
    out = ArtifactDir(cfg.out)
    data = load_data(cfg.data)
    out.update(
        tools=tool_versions(),
        config=json.loads(json.dumps(cfg.to_dict(), default=str)),
        data=data.summary(),
        model={
            "name": cfg.model,
            "num_classes": data.num_classes,
            "input_shape": list(data.input_shape),
            "input_name": "input",
            "output_name": "logits",
            "dtype": "float32",
            "preprocess": {"mean": data.mean, "std": data.std, "input_size": data.input_size, "in_chans": data.in_chans},
        },
        stages={},
    )
    example = data.val.tensors[0][:1]

    # 1. baseline
    model, base_info = _stage_baseline(cfg, data, log, quiet)
    out.update(stages={"baseline": base_info})
    baseline_model = model
    export_onnx(baseline_model, example, out.path("baseline.onnx"), cfg.export)
    out.record_file("baseline.onnx", "baseline fp32 model (for comparison)")
    check_parity(baseline_model, out.path("baseline.onnx"), data.val.tensors[0], cfg.export)

    # 2. prune
    workdir = Path(cfg.cache_dir) / f"run-{_baseline_key(cfg, data)}"
    if cfg.prune_enabled or cfg.latency_budget_enabled:
        budget_fn, lat_info = None, None
        if cfg.latency_budget_enabled:
            budget_fn, budget_ms, lat_info = _latency_budget(cfg, model, data, out, log)
        tag = f"lat{cfg.prune_latency}-{cfg.targets[0]}" if budget_fn is not None else f"{cfg.prune_macs}"
        model, prune_info, plot = _stage_prune(cfg, model, data, workdir / f"prune-{tag}-{cfg.prune_preset}{_method_tag(cfg)}", log, quiet, budget_fn=budget_fn, latency_budget_ms=budget_ms if budget_fn else None)
        if lat_info is not None:
            from metaedge.compress.cost import layer_specs

            lat_info["predicted_ms"] = budget_fn(layer_specs(model, data.input_shape))
            prune_info["budget_use"] = lat_info["predicted_ms"] / budget_ms
            prune_info["latency_budget"] = lat_info
        if plot is not None and Path(plot).exists():
            with atomic_path(out.path("pruning_search.png")) as tmp:
                tmp.write_bytes(Path(plot).read_bytes())
            out.record_file("pruning_search.png", "accuracy vs MACs of evaluated candidates")
        out.update(stages={"prune": prune_info})
    fp32_model = model
    cost = count_cost(fp32_model, data.input_shape)

    # 3. quantize + 4. export with parity gate
    onnx_path = out.path("model.onnx")
    if cfg.quant_enabled:
        # The fp32 model of this stage is exported too: the int8 / fp32 latency ratio is measured on it.
        fp32_onnx = out.path("model_fp32.onnx")
        export_onnx(fp32_model, example, fp32_onnx, cfg.export)
        check_parity(fp32_model, fp32_onnx, data.val.tensors[0], cfg.export)
        out.record_file("model_fp32.onnx", "fp32 model before quantization (for comparison)")
        final_torch, quant_info, parity = _stage_quant(cfg, model, data, fp32_onnx, onnx_path, workdir, log, quiet)
        out.update(stages={"quant": quant_info})
    else:
        export_onnx(fp32_model, example, onnx_path, cfg.export)
        parity = check_parity(fp32_model, onnx_path, data.val.tensors[0], cfg.export).to_dict()
        final_torch = fp32_model
    with atomic_path(out.path("model.pt")) as tmp:
        torch.save(final_torch.state_dict(), tmp)
    out.record_file("model.onnx", "deployable model")
    out.record_file("model.pt", "PyTorch state dict of the final model")
    log(f"export: {onnx_path} passed the parity gate (max abs err {parity['max_abs_err']:.2e}, top-1 agreement {parity['top1_agreement']:.4f})")
    final_acc = _onnx_accuracy(onnx_path, data)
    out.update(
        export={"opset": cfg.export.opset, "parity": parity},
        cost={"macs": cost.macs, "params": cost.params, "baseline_macs": base_info["macs"], "baseline_params": base_info["params"]},
        stages={"final": {"accuracy": {"test": final_acc}, "measured_on": "onnxruntime", "model_sha256": file_sha256(onnx_path)}},
    )

    # 5. latency on this machine, same input for every backend
    log(f"latency: {cfg.timing.repeats} repeats after {cfg.timing.warmup} warm-up, {cfg.timing.threads} thread(s)")
    x = example
    lat = {
        "torch_eager": time_torch_eager(fp32_model, x, cfg.timing).to_dict(),
        "onnxruntime": time_onnxruntime(onnx_path, x.numpy(), cfg.timing).to_dict(),
        "torch_eager_baseline": time_torch_eager(baseline_model, x, cfg.timing).to_dict(),
        "onnxruntime_baseline": time_onnxruntime(out.path("baseline.onnx"), x.numpy(), cfg.timing).to_dict(),
    }
    if cfg.quant_enabled:
        lat["onnxruntime_fp32"] = time_onnxruntime(out.path("model_fp32.onnx"), x.numpy(), cfg.timing).to_dict()
    ratios = {
        "eager_over_onnxruntime_baseline": lat["torch_eager_baseline"]["p50_ms"] / lat["onnxruntime_baseline"]["p50_ms"],
        "eager_over_onnxruntime": lat["torch_eager"]["p50_ms"] / lat["onnxruntime"]["p50_ms"],
        "baseline_over_final_onnxruntime": lat["onnxruntime_baseline"]["p50_ms"] / lat["onnxruntime"]["p50_ms"],
    }
    if cfg.quant_enabled:
        ratios["fp32_over_int8_onnxruntime"] = lat["onnxruntime_fp32"]["p50_ms"] / lat["onnxruntime"]["p50_ms"]
    out.update(latency=lat, latency_ratios=ratios)

    # 6. compile for targets
    if cfg.targets:
        from metaedge.deploy.compile import compile_for_target
        from metaedge.targets.registry import get_target

        for name in cfg.targets:
            target = get_target(name)
            log(f"compile: {name} ({cfg.backend})")
            section = compile_for_target(onnx_path, target, out.root, backends=cfg.backend, timing=cfg.timing, device=cfg.device,
                                         tvm_options=_tvm_options(cfg, name))
            out.update(compiled={name: section})

    seconds = time.perf_counter() - t_start
    out.update(run={"seconds": round(seconds, 1), "finished_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())})
    return PipelineResult(out.root, out.manifest, seconds)
