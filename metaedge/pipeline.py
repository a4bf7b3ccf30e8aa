"""Runs the stages of ``metaedge compress`` in order; owns nothing else.

data (validated) -> budget check -> baseline (train or reuse) -> prune -> quantize -> export +
parity -> latency -> compile. Each stage is one function that returns its typed manifest section
(:mod:`metaedge.manifest`); after every stage the manifest is rewritten atomically, so a killed run
leaves a consistent artifact directory, and long stages (training, PruningNet, search, QAT) resume
from their checkpoints under the cache directory when the same command is run again. The cache
directories are keyed on the resolved configuration of their stage and of every stage before it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import platform
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Callable, Sequence, cast

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
from metaedge.manifest import (
    Accuracy,
    BaselineStage,
    CostSection,
    DataSection,
    ExportSection,
    FinalStage,
    LatencyBudgetInfo,
    LatencyRatios,
    Manifest,
    ModelSection,
    Preprocess,
    PruneStage,
    QuantStage,
    RunSection,
)
from metaedge.deploy.measure.local import time_onnxruntime, time_torch_eager
from metaedge.zoo import build_model

__all__ = ["PipelineResult", "check_model_and_budget", "prune_cache_key", "quant_cache_key", "rank_check_line", "run_pipeline", "tool_versions"]

Log = Callable[[str], None]


@dataclass
class PipelineResult:
    out_dir: Path
    manifest: Manifest
    seconds: float


def tool_versions() -> dict[str, str]:
    import importlib.metadata as md

    versions = {"python": platform.python_version()}
    for pkg in ("metaedge", "torch", "onnx", "onnxruntime", "onnxscript", "apache-tvm", "numpy", "scikit-learn", "tensorly"):
        try:
            versions[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            pass
    return versions


def _digest(ident: Any, n: int = 16) -> str:
    return hashlib.sha256(json.dumps(ident, sort_keys=True, default=str).encode()).hexdigest()[:n]


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
    return _digest(ident)


def prune_cache_key(baseline_key: str, cfg: PipelineConfig, prune_cfg: Any) -> str:
    """Work directory key of the prune stage: the baseline, the method and the resolved PruneConfig
    (its budget in MACs or ms, whatever flag it came from), and the target a latency budget is priced on."""
    target = cfg.targets[0] if prune_cfg.budget_kind == "latency" else None
    return _digest(
        {
            "baseline": baseline_key,
            "pruner": cfg.pruner,
            "lowrank": cfg.lowrank,
            "prune": asdict(prune_cfg),
            "target": target,
            "device": cfg.device if target else None,
        }
    )


def quant_cache_key(upstream_key: str, qcfg: Any) -> str:
    """Work directory key of QAT: the model it starts from (the prune key, or the baseline key when
    not pruned) and the resolved QuantConfig."""
    return _digest({"upstream": upstream_key, "quant": asdict(qcfg)})


def _accuracy(model: nn.Module, data: DataSplits) -> Accuracy:
    return Accuracy(val=evaluate(model, make_loader(data.val, 256, False)), test=evaluate(model, make_loader(data.test, 256, False)))


def _onnx_accuracy(onnx_path: Path, data: DataSplits) -> float:
    from metaedge.deploy.backends.onnxruntime import OrtRunner

    runner = OrtRunner(onnx_path, threads=1)
    x, y = data.test.tensors
    logits = np.concatenate([runner.run(x[i : i + 128].numpy()) for i in range(0, len(x), 128)])
    return float((logits.argmax(1) == y.numpy()).mean())


def check_model_and_budget(cfg: PipelineConfig, data: DataSplits) -> None:
    """Before any training: build the model at the data's size with its ``--weights`` (a bad file or
    a mismatch fails here), and refuse a MACs budget the pruner cannot meet: at or above the baseline's
    MACs, or (channel pruning alone) below the narrowest width vector of the pruner's width space."""
    model = build_model(cfg.model, cfg.weights, **_model_kwargs(cfg, data)).eval()
    if cfg.prune_macs is None or cfg.latency_budget_enabled:
        return  # a latency budget is priced on the target's table, measured in the prune stage
    from metaedge.compress import metapruning as mp
    from metaedge.compress.cost import format_count
    from metaedge.compress.metapruning.budget import setup_pruning

    base = count_cost(model, data.input_shape).macs
    budget = cfg.prune_macs.resolve(base)
    if budget >= base:
        raise MetaedgeError(
            f"MACs budget {format_count(budget)} is not below the baseline's {format_count(base)}: nothing to prune",
            "pass a smaller --prune-macs (a fraction such as 0.5), or --prune-macs off",
        )
    if cfg.lowrank != "off" or cfg.pruner == "none":
        return  # Tucker ranks go below the narrowest width vector
    preset = mp.PRESETS[cfg.prune_preset]
    setup = setup_pruning(model, data.val.tensors[0][:1], "macs", budget, preset.choices, preset.channel_multiple)
    narrowest = setup.cost(setup.space.widths(setup.space.smallest()))
    if budget < narrowest:
        raise MetaedgeError(
            f"MACs budget {format_count(budget)} is below the narrowest network the width space allows ({format_count(narrowest)} of {format_count(base)})",
            f"pass --prune-macs {math.ceil(100 * narrowest / base) / 100:.2f} or more",
        )


@dataclass
class _Run:
    """What every stage shares: settings, data, the artifact directory and the manifest so far."""

    cfg: PipelineConfig
    data: DataSplits
    out: ArtifactDir
    manifest: Manifest
    log: Log
    quiet: bool

    def save(self, **changes: Any) -> None:
        """Replace manifest sections (``stage=...`` for ``stages.<stage>``) and rewrite manifest.json."""
        stages = {k: changes.pop(k) for k in ("baseline", "prune", "quant", "final") if k in changes}
        self.manifest = dataclasses.replace(self.manifest, **changes).with_stage(**stages)
        self.out.manifest = {"schema_version": self.out.manifest["schema_version"], **self.manifest.to_json(), "files": self.out.manifest.get("files", {})}
        self.out.save()

    @property
    def example(self) -> torch.Tensor:
        return self.data.val.tensors[0][:1]


def _initial_manifest(cfg: PipelineConfig, data: DataSplits) -> Manifest:
    return Manifest(
        tools=tool_versions(),
        config=cfg.to_dict(),
        data=DataSection(**data.summary()),
        model=ModelSection(
            name=cfg.model,
            num_classes=data.num_classes,
            input_shape=list(data.input_shape),
            preprocess=Preprocess(data.mean, data.std, data.input_size, data.in_chans),
        ),
    )


def _stage_baseline(run: _Run) -> nn.Module:
    cfg, data = run.cfg, run.data
    model = build_model(cfg.model, cfg.weights, **_model_kwargs(cfg, data))
    cache = Path(cfg.cache_dir) / f"baseline-{_baseline_key(cfg, data)}"
    weights_path, result_path = cache / "model.pt", cache / "result.json"
    t0 = time.perf_counter()
    cached = weights_path.exists() and result_path.exists()
    if cached:
        model.load_state_dict(torch.load(weights_path, map_location="cpu", weights_only=True))
        info = json.loads(result_path.read_text())
        run.log(f"baseline: reusing cached model {weights_path}")
    else:
        train_seconds = 0.0
        if cfg.train.epochs > 0:
            run.log(f"baseline: training {cfg.model} for {cfg.train.epochs} epochs (checkpoint {cache / 'checkpoint.pt'})")
            res = fit(
                model,
                make_loader(data.train, cfg.train.batch_size, True, cfg.train.seed),
                make_loader(data.val, 256, False),
                cfg.train,
                checkpoint=cache / "checkpoint.pt",
                resume=True,
                desc="baseline",
                quiet=run.quiet,
            )
            train_seconds = res.seconds
        info = {"train_seconds": round(train_seconds, 2), "accuracy": asdict(_accuracy(model, data))}
        with atomic_path(weights_path) as tmp:
            torch.save(model.state_dict(), tmp)
        atomic_write_json(result_path, info)
    cost = count_cost(model, data.input_shape)
    run.save(baseline=BaselineStage(Accuracy(**info["accuracy"]), cost.macs, cost.params, info["train_seconds"], cached, round(time.perf_counter() - t0, 2)))
    model.eval()
    export_onnx(model, run.example, run.out.path("baseline.onnx"), cfg.export)
    run.out.record_file("baseline.onnx", "baseline fp32 model (for comparison)")
    check_parity(model, run.out.path("baseline.onnx"), data.val.tensors[0], cfg.export)
    return model


def _latency_budget(run: _Run, baseline: nn.Module) -> tuple[Callable[[Sequence[Any]], float], float, LatencyBudgetInfo]:
    """A per-layer latency table measured on the first target, calibrated by one end-to-end
    measurement of the baseline there; returns (latency_fn, budget_ms, info)."""
    from metaedge.compress.cost import layer_specs
    from metaedge.deploy.compile import compile_for_target
    from metaedge.deploy.latency_table import LatencyTable, make_latency_fn
    from metaedge.targets.registry import get_target

    cfg, data = run.cfg, run.data
    target = get_target(cfg.targets[0])
    run.log(f"prune: measuring the per-layer latency table of {cfg.model} on {target.name} ({cfg.device or 'this machine'})")
    specs = layer_specs(baseline, data.input_shape)
    fn = make_latency_fn(target, cfg.device, specs=specs, width_multipliers=(0.25, 0.5, 0.75, 1.0))
    section = compile_for_target(run.out.path("baseline.onnx"), target, run.out.root / "latency-baseline", backends="tvm", timing=cfg.timing, device=cfg.device)
    measured = ((section.get("tvm") or {}).get("latency") or {}).get("p50_ms")
    table: LatencyTable = cast(Any, fn).table  # make_latency_fn attaches its table to the function
    raw = table.predict(specs)
    scale = table.calibrate(specs, measured) if measured else None
    assert cfg.prune_latency is not None  # called only with a latency budget
    budget = cfg.prune_latency.resolve(measured or raw)
    if budget < table.overhead_ms:
        raise MetaedgeError(f"latency budget {budget:.3f} ms is below the target's fixed overhead {table.overhead_ms:.3f} ms", "raise --prune-latency")
    return fn, budget, LatencyBudgetInfo(target.name, cfg.device, raw, budget, measured, scale)


def _prune_config(run: _Run, base_macs: int, latency_ms: float | None):
    """The PruneConfig of this run, its budget resolved to MACs or ms."""
    from metaedge.compress import metapruning as mp

    preset = replace(mp.PRESETS[run.cfg.prune_preset], rank_check=run.cfg.prune_rank_check)
    if latency_ms is not None:
        return replace(preset, budget_kind="latency", budget=float(latency_ms))
    assert run.cfg.prune_macs is not None  # no latency budget: the prune stage runs for a MACs budget
    return replace(preset, budget_kind="macs", budget=run.cfg.prune_macs.resolve(base_macs))


def _shared_band(cfg: PipelineConfig, base_macs: int) -> tuple[float, float]:
    """The absolute cost band around every budget in ``cfg.pruningnet_budgets`` (see sampling.Band.around)."""
    from metaedge.compress.metapruning.sampling import Band
    from metaedge.config import LatencyBudget, MacsBudget

    budgets = cfg.pruningnet_budgets or ()
    if cfg.latency_budget_enabled:  # absolute ms, checked when the config was built
        values = [float(LatencyBudget.parse(b).ms) for b in budgets]  # type: ignore[arg-type]
    else:
        values = [MacsBudget.parse(b).resolve(base_macs) for b in budgets]
    band = Band.around(values)
    return band.lo, band.hi


def _stage_prune(run: _Run, model: nn.Module, base_key: str) -> tuple[nn.Module, str]:
    """Channel pruning (--pruner) and/or Tucker low rank (--lowrank) to the budget. Combined, the pruner
    runs first on the original graph to its share of the budget (lowrank.pruning_budget), Tucker then
    factorizes the pruned layers to meet the budget exactly, and one fine-tune ends it, as for every method.
    Returns the pruned model and the prune stage's cache key."""
    from metaedge.compress.cost import layer_specs

    cfg, data = run.cfg, run.data
    budget_fn: Callable[[Sequence[Any]], float] | None = None
    budget_ms: float | None = None
    lat_info: LatencyBudgetInfo | None = None
    if cfg.latency_budget_enabled:
        budget_fn, budget_ms, lat_info = _latency_budget(run, model)
    base = count_cost(model, data.input_shape)
    prune_cfg = _prune_config(run, base.macs, budget_ms)
    shared_pn = None
    if cfg.pruningnet_budgets is not None:  # a sweep: one PruningNet over the band of all its budgets
        prune_cfg = replace(prune_cfg, band=_shared_band(cfg, base.macs))
        shared_pn = (
            Path(cfg.cache_dir)
            / f"run-{base_key}"
            / f"pruningnet-{_digest({'kind': prune_cfg.budget_kind, 'band': prune_cfg.band, 'target': cfg.targets[0] if budget_fn else None, 'preset': cfg.prune_preset})}.pt"
        )
        run.log(
            f"prune: {'reusing' if shared_pn.exists() else 'training'} the shared PruningNet {shared_pn} "
            f"(band {prune_cfg.band[0]:.4g}..{prune_cfg.band[1]:.4g}, budgets {', '.join(cfg.pruningnet_budgets)})"
        )
    key = prune_cache_key(base_key, cfg, prune_cfg)  # the band is part of prune_cfg: shared and own PruningNets never mix
    workdir = Path(cfg.cache_dir) / f"run-{base_key}" / f"prune-{key}"
    budget = float(prune_cfg.budget)
    what = (
        f"<= {budget:.3f} ms predicted on {cfg.targets[0]}"
        if budget_fn
        else f"<= {budget / 1e6:.2f}M MACs ({budget / base.macs:.0%} of {base.macs / 1e6:.2f}M)"
    )
    tucker = cfg.lowrank == "tucker"
    method = "+".join(m for m in (cfg.pruner if cfg.pruner != "none" else "", "tucker" if tucker else "") if m)
    run.log(f"prune: {method} to {what}, preset {cfg.prune_preset}")
    small, info, plot = model, {}, None
    if cfg.pruner != "none":
        run_cfg = prune_cfg
        if tucker:
            from metaedge.compress.lowrank import pruning_budget

            # Tucker only removes MACs: the pruner must land close under its share (0.98, not the search's usual 0.95)
            run_cfg = replace(
                prune_cfg,
                budget=pruning_budget(model, data.input_shape, budget, prune_cfg.channel_multiple),
                finetune_epochs=0,
                search_floor=max(prune_cfg.search_floor, 0.98),
            )
            run.log(f"prune: {cfg.pruner} to {run_cfg.budget / 1e6:.2f}M MACs first, then Tucker on the pruned layers, then one fine-tune")
            info["prune_budget"] = run_cfg.budget
        small, pruner_info, plot = _run_pruner(cfg, model, data, run_cfg, workdir, run.quiet, budget_fn, shared_pn)
        info.update(pruner_info)
        if "rank_check" in info:
            run.log(rank_check_line(info["rank_check"]))
    if tucker:
        from metaedge.compress.lowrank import LowRankConfig, lowrank_model

        res = lowrank_model(
            small,
            data,
            LowRankConfig(budget=budget, rank_multiple=prune_cfg.channel_multiple, finetune=prune_cfg.finetune_config()),
            workdir / "tucker",
            teacher=model,
            quiet=run.quiet,
        )
        small, lowrank = res.model, res.summary()
        info.update(ranks=lowrank.pop("ranks"), lowrank=lowrank, seconds={**info.get("seconds", {}), **{f"tucker_{k}": v for k, v in res.seconds.items()}})
    cost = count_cost(small, data.input_shape)
    if cost.macs > budget and budget_fn is None:
        raise MetaedgeError(f"pruned model has {cost.macs} MACs, over the budget {budget:.0f}", "this is a bug in the search; report it with the search log")
    used: float = cost.macs  # of the budget: MACs, or the predicted ms with a latency budget
    if lat_info is not None:
        assert budget_fn is not None  # set together with lat_info
        used = budget_fn(layer_specs(small, data.input_shape))
        lat_info = replace(lat_info, predicted_ms=used)
    budget_use = used / budget
    widths, seconds = info.pop("widths", {}), info.pop("seconds", None)
    info.pop("budget_use", None)  # the pruners' own share of their (pre-Tucker) budget; the stage's is above
    run.save(
        prune=PruneStage(method, prune_cfg.budget_kind, budget, cost.macs, cost.params, _accuracy(small, data), widths, budget_use, seconds, lat_info, info)
    )
    if plot is not None and Path(plot).exists():
        with atomic_path(run.out.path("pruning_search.png")) as tmp:
            tmp.write_bytes(Path(plot).read_bytes())
        run.out.record_file("pruning_search.png", "accuracy vs MACs of evaluated candidates")
    return small.eval(), key


def rank_check_line(check: dict[str, Any]) -> str:
    """One log line for the PruningNet rank diagnostic, with what to do when the fitness does not rank."""
    rho, (lo, hi) = check["spearman"], check["interval_90"]
    line = f"prune: PruningNet rank diagnostic: Spearman {rho:.2f} (90% interval {lo:.2f}..{hi:.2f}) over {check['n']} structures"
    if not rho >= 0.6:  # nan too: a constant score ranks nothing
        line += "; the search's fitness ranks structures poorly here: compare with --pruner uniform at the same budget"
    return line


def _run_pruner(
    cfg: PipelineConfig, model: nn.Module, data: DataSplits, prune_cfg, workdir: Path, quiet: bool, budget_fn=None, shared_pn: Path | None = None
) -> tuple[nn.Module, dict[str, Any], Path | None]:
    """The --pruner's small model, its manifest entries (widths, seconds, method details) and search plot (MetaPruning only)."""
    from metaedge.compress import metapruning as mp

    if cfg.pruner == "metapruning":
        res = mp.prune_model(model, data, prune_cfg, workdir, budget_fn=budget_fn, quiet=quiet, pruningnet_checkpoint=shared_pn)
        info = {
            "pruningnet": str(shared_pn or workdir / "pruningnet.pt"),
            "widths": res.widths,
            "search_accuracy": res.search_accuracy,
            "search_log": str(res.search_log),
            "start": res.init,
            "start_accuracy": res.start_accuracy,
            "finetuned_accuracy": res.finetuned_accuracy,
            "seconds": res.seconds,
        }
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


def _qdq_profile(cfg: PipelineConfig) -> tuple[str, str]:
    """The QDQ export profile for the backends this run compiles with (see deploy.qdq.choose_qdq_profile)."""
    from metaedge.deploy.qdq import choose_qdq_profile
    from metaedge.targets.registry import get_target

    chosen = cfg.backend.split(",") if cfg.backend != "auto" else []
    for name in cfg.targets:
        backends = list(get_target(name).backends) if cfg.backend == "auto" else chosen
        profile, why = choose_qdq_profile(cfg.quant_profile, backends)
        if profile != "ort":
            return profile, why if str(cfg.quant_profile).lower() != "auto" else f"{why} (target {name})"
    return choose_qdq_profile(cfg.quant_profile, chosen)


def _profile_accuracy(onnx_path: Path, data: DataSplits, profile: str) -> float:
    """Test accuracy in ORT with the session the parity gate uses for ``profile`` (for tensorrt: no
    int8 -> uint8 conversion, whose x86 kernels saturate; see compress.metaquant.export.ort_session)."""
    from metaedge.compress.metaquant.export import ort_session

    sess = ort_session(onnx_path, profile)
    name = sess.get_inputs()[0].name
    x, y = data.test.tensors
    logits = np.concatenate([sess.run(None, {name: x[i : i + 128].numpy()})[0] for i in range(0, len(x), 128)])
    return float((logits.argmax(1) == y.numpy()).mean())


def _stage_ptq(run: _Run, model: nn.Module, fp32_onnx: Path, onnx_path: Path, profile: str, why: str) -> tuple[nn.Module, dict[str, Any]]:
    """Post-training int8 (ONNX Runtime's quantize_static, QDQ, per-channel) on training batches."""
    from metaedge.compress.metaquant.ptq import quantize_ptq
    from metaedge.qdq.tensorrt_rules import require_tensorrt_qdq

    run.log(f"quant: post-training int8 with ONNX Runtime quantize_static (QDQ, per-channel, {profile} profile), 8 calibration batches of 32")
    x = run.data.train.tensors[0]
    t0 = time.perf_counter()
    quantize_ptq(fp32_onnx, onnx_path, [x[i : i + 32].numpy() for i in range(0, min(len(x), 256), 32)], profile=profile)
    seconds = round(time.perf_counter() - t0, 2)
    rules = require_tensorrt_qdq(onnx_path, f"PTQ model {onnx_path.name}").to_dict() if profile == "tensorrt" else None
    run.save(quant=QuantStage("ptq", 8, 8, profile, why, Accuracy(test=_profile_accuracy(onnx_path, run.data, profile)), seconds, tensorrt_rules=rules))
    parity = {
        "reference": "fp32 PyTorch (PTQ has no fake-quant model)",
        **check_parity(model, onnx_path, run.data.val.tensors[0], run.cfg.export, raise_on_fail=False).to_dict(),
    }
    return model, parity


def _stage_quant(run: _Run, model: nn.Module, fp32_onnx: Path, onnx_path: Path, upstream_key: str) -> tuple[nn.Module, dict[str, Any]]:
    """QAT (MetaQuant / STE / LSQ) or PTQ, written to ``onnx_path`` as QDQ in the profile the
    backends need, behind the parity gate (and, for tensorrt, the Q/DQ placement rules).
    Returns (model the parity gate compared against, parity report)."""
    from metaedge.compress import metaquant as mq

    cfg = run.cfg
    profile, why = _qdq_profile(cfg)
    if cfg.quantizer == "ptq":
        return _stage_ptq(run, model, fp32_onnx, onnx_path, profile, why)
    from metaedge.compress.metaquant.export import check_qdq_parity, export_qdq
    from metaedge.deploy.qdq import check_qdq_fusion

    assert cfg.quant is not None  # the export stage quantizes only when quant is enabled
    wbits, abits = cfg.quant.weight_bits, cfg.quant.act_bits
    kd: dict[str, Any] = {} if cfg.quant_kd is None else {"kd_alpha": cfg.quant_kd}
    meta: dict[str, Any] = {} if cfg.quant_meta_net is None else {"meta_variant": cfg.quant_meta_net}
    qcfg = replace(
        mq.PRESETS[cfg.quant_preset],
        weight_bits=wbits,
        act_bits=abits,
        method=cfg.quantizer,
        weight_quantizer=mq.default_weight_quantizer(wbits),
        profile=profile,
        layer_bits=cfg.quant_layer_bits,
        **kd,
        **meta,
    )
    layer_bits = mq.parse_bit_policy(qcfg.layer_bits).to_spec()
    run.log(
        f"quant: {cfg.quantizer} QAT w{wbits}a{abits} ({qcfg.effective_weight_quantizer} weights, layer bits {layer_bits}), "
        f"{profile} QDQ profile ({why}), preset {cfg.quant_preset}"
    )
    key = quant_cache_key(upstream_key, qcfg)
    res = mq.quantize_model(
        model, run.data, qcfg, Path(cfg.cache_dir) / f"run-{_baseline_key(cfg, run.data)}" / f"quant-{cfg.quant}-{cfg.quantizer}-{key}", quiet=run.quiet
    )
    export = export_qdq(res.model, run.example, onnx_path, profile=profile)
    parity = check_qdq_parity(res.model, onnx_path, run.data.val.tensors[0])
    run.save(
        quant=QuantStage(
            cfg.quantizer,
            wbits,
            abits,
            profile,
            why,
            Accuracy(val=res.val_accuracy, test=res.test_accuracy),
            round(res.seconds, 2),
            weight_quantizer=qcfg.effective_weight_quantizer,
            layer_bits=layer_bits,
            kd_alpha=qcfg.kd_alpha,
            meta_net=qcfg.meta_variant if qcfg.method == "metaquant" else None,
            layers=res.layers,
            packed_bytes=res.packed_bytes,
            export=export,
            fusion=check_qdq_fusion(onnx_path) if profile == "ort" else None,
            history=res.history,
        )
    )
    return res.model.eval(), parity


def _stage_export(run: _Run, fp32_model: nn.Module, upstream_key: str) -> Path:
    """Quantize (when asked) and export model.onnx behind the parity gate; the fp32 model of this
    stage is exported too when quantized: the int8 / fp32 latency ratio is measured on it."""
    cfg, data = run.cfg, run.data
    onnx_path = run.out.path("model.onnx")
    if cfg.quant_enabled:
        fp32_onnx = run.out.path("model_fp32.onnx")
        export_onnx(fp32_model, run.example, fp32_onnx, cfg.export)
        check_parity(fp32_model, fp32_onnx, data.val.tensors[0], cfg.export)
        run.out.record_file("model_fp32.onnx", "fp32 model before quantization (for comparison)")
        final_torch, parity = _stage_quant(run, fp32_model, fp32_onnx, onnx_path, upstream_key)
    else:
        export_onnx(fp32_model, run.example, onnx_path, cfg.export)
        parity = check_parity(fp32_model, onnx_path, data.val.tensors[0], cfg.export).to_dict()
        final_torch = fp32_model
    with atomic_path(run.out.path("model.pt")) as tmp:
        torch.save(final_torch.state_dict(), tmp)
    run.out.record_file("model.onnx", "deployable model")
    run.out.record_file("model.pt", "PyTorch state dict of the final model")
    run.log(f"export: {onnx_path} passed the parity gate (max abs err {parity['max_abs_err']:.2e}, top-1 agreement {parity['top1_agreement']:.4f})")
    cost = count_cost(fp32_model, data.input_shape)
    base = run.manifest.stages.baseline
    assert base is not None  # the baseline stage ran first
    run.save(
        export=ExportSection(cfg.export.opset, parity),
        cost=CostSection(cost.macs, cost.params, base.macs, base.params),
        final=FinalStage(Accuracy(test=_onnx_accuracy(onnx_path, data)), file_sha256(onnx_path)),
    )
    return onnx_path


def _stage_latency(run: _Run, baseline: nn.Module, fp32_model: nn.Module, onnx_path: Path) -> None:
    """Latency on this machine, same input for every backend."""
    cfg, x = run.cfg, run.example
    run.log(f"latency: {cfg.timing.repeats} repeats after {cfg.timing.warmup} warm-up, {cfg.timing.threads} thread(s)")
    lat = {
        "torch_eager": time_torch_eager(fp32_model, x, cfg.timing).to_dict(),
        "onnxruntime": time_onnxruntime(onnx_path, x.numpy(), cfg.timing).to_dict(),
        "torch_eager_baseline": time_torch_eager(baseline, x, cfg.timing).to_dict(),
        "onnxruntime_baseline": time_onnxruntime(run.out.path("baseline.onnx"), x.numpy(), cfg.timing).to_dict(),
    }
    if cfg.quant_enabled:
        lat["onnxruntime_fp32"] = time_onnxruntime(run.out.path("model_fp32.onnx"), x.numpy(), cfg.timing).to_dict()
    p50 = {k: v["p50_ms"] for k, v in lat.items()}
    ratios = LatencyRatios(
        eager_over_onnxruntime_baseline=p50["torch_eager_baseline"] / p50["onnxruntime_baseline"],
        eager_over_onnxruntime=p50["torch_eager"] / p50["onnxruntime"],
        baseline_over_final_onnxruntime=p50["onnxruntime_baseline"] / p50["onnxruntime"],
        fp32_over_int8_onnxruntime=p50["onnxruntime_fp32"] / p50["onnxruntime"] if cfg.quant_enabled else None,
    )
    run.save(latency=lat, latency_ratios=ratios)


def _tvm_options(cfg: PipelineConfig, target_name: str):
    from metaedge.deploy.backends.tvm import TvmOptions, tuning_dir_for

    return TvmOptions(
        tune_trials=int(cfg.tune_trials), tuning_dir=tuning_dir_for(target_name, cfg.cache_dir), tune_device=cfg.device, threads=cfg.timing.threads
    )


def _stage_compile(run: _Run, onnx_path: Path) -> None:
    from metaedge.deploy.compile import compile_for_target
    from metaedge.targets.registry import get_target

    cfg = run.cfg
    for name in cfg.targets:
        run.log(f"compile: {name} ({cfg.backend})")
        section = compile_for_target(
            onnx_path, get_target(name), run.out.root, backends=cfg.backend, timing=cfg.timing, device=cfg.device, tvm_options=_tvm_options(cfg, name)
        )
        run.save(compiled={**(run.manifest.compiled or {}), name: section})


def run_pipeline(cfg: PipelineConfig, log: Log = print, quiet: bool = False) -> PipelineResult:
    """Run every enabled stage of ``cfg`` and write the artifact directory ``cfg.out``."""
    t_start = time.perf_counter()
    torch.manual_seed(cfg.seed)
    data = load_data(cfg.data)
    check_model_and_budget(cfg, data)
    run = _Run(cfg, data, ArtifactDir(cfg.out), _initial_manifest(cfg, data), log, quiet)
    run.save()
    baseline = _stage_baseline(run)
    model, key = baseline, _baseline_key(cfg, data)
    if cfg.prune_enabled or cfg.latency_budget_enabled:
        model, key = _stage_prune(run, baseline, key)
    onnx_path = _stage_export(run, model, key)
    _stage_latency(run, baseline, model, onnx_path)
    if cfg.targets:
        _stage_compile(run, onnx_path)
    seconds = time.perf_counter() - t_start
    run.save(run=RunSection(round(seconds, 1), time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())))
    return PipelineResult(run.out.root, run.manifest, seconds)
