"""Typed, validated configuration of a ``metaedge compress`` run, from a TOML/YAML file plus flags.

The file mirrors the dataclasses: top-level keys of :class:`PipelineConfig` plus the sections
``[data]``, ``[train]``, ``[export]`` and ``[timing]``. Unknown keys are errors (a typo must not
silently fall back to a default).
"""
from __future__ import annotations

import dataclasses
import tomllib
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from metaedge.compress.train import TrainConfig
from metaedge.data import DataConfig
from metaedge.deploy.export import ExportConfig
from metaedge.errors import MetaedgeError
from metaedge.latency import TimingConfig

__all__ = ["PipelineConfig", "load_config_file", "merge_overrides"]

_OFF = ("off", "none", "no", "false", "0", "")
PRUNERS = ("metapruning", "vib", "uniform", "l1", "none")
LOWRANK = ("off", "tucker")


@dataclass(frozen=True)
class PipelineConfig:
    model: str = "mobilenetv2_100"
    weights: str | None = None
    width_mult: float | None = None
    out: str = "metaedge-out"
    cache_dir: str = ".metaedge-cache"
    prune_macs: str | None = "0.5"  # fraction of the baseline ("0.5") or absolute ("20M"); None: no pruning
    prune_preset: str = "demo"
    prune_latency: str | None = None  # latency budget on targets[0]: "2ms", "500us", or a fraction of the measured baseline ("0.6")
    pruner: str = "metapruning"  # channel pruner: "metapruning" | "vib" | "uniform" | "l1" | "none" (with lowrank only)
    lowrank: str = "off"  # "tucker": kxk convs by Tucker-2, linears by SVD, after the pruner, to the same MACs budget
    # Every budget (same kind and syntax as prune_macs / prune_latency) one shared PruningNet trains for,
    # so the points of a `metaedge sweep` reuse it; None: a PruningNet for this run's budget alone.
    pruningnet_budgets: tuple[str, ...] | None = None
    quant: str | None = "w8a8"  # "w8a8", "w4a8", ...; None: no quantization
    quantizer: str = "metaquant"  # "metaquant" | "ste" | "lsq" | "ptq"
    quant_preset: str = "demo"
    quant_profile: str = "auto"  # QDQ export profile: "auto" (tensorrt when a backend needs it), "ort", "tensorrt"
    quant_layer_bits: str = "default"  # per-layer bits: first, last, depthwise at 8 ("uniform": all at --quant's bits)
    quant_kd: float | None = None  # distillation weight from the fp32 model (None: the preset's)
    targets: tuple[str, ...] = ("x86", "rpi4")
    device: str | None = None  # tracker-host:port/key or host:port for remote measurement
    backend: str = "auto"
    tune_trials: int = 0  # MetaSchedule trials per target for TVM (0: the database as it is + default schedules)
    seed: int = 0
    data: DataConfig = field(default_factory=DataConfig)  # input_size None: the data's own size, 16 for digits
    train: TrainConfig = field(default_factory=lambda: TrainConfig(epochs=8, batch_size=64, lr=0.05))
    export: ExportConfig = field(default_factory=ExportConfig)
    timing: TimingConfig = field(default_factory=lambda: TimingConfig(warmup=10, repeats=100, threads=1))

    def __post_init__(self) -> None:
        if int(self.tune_trials) < 0:
            raise MetaedgeError(f"--tune-trials {self.tune_trials} is negative", "pass 0 (no tuning) or a trial count such as 500")
        if self.width_mult is not None and self.width_mult <= 0:
            raise MetaedgeError(f"width multiplier {self.width_mult} must be positive", "pass e.g. --width-mult 0.5")
        if self.quantizer not in ("metaquant", "ste", "lsq", "ptq"):
            raise MetaedgeError(f"unknown quantizer {self.quantizer!r}", "use --quantizer metaquant, ste, lsq or ptq")
        if str(self.quant_profile).lower() not in ("auto", "ort", "tensorrt"):
            raise MetaedgeError(f"unknown QDQ profile {self.quant_profile!r}", "use --quant-profile auto, ort or tensorrt")
        from metaedge.compress.metaquant.policy import parse_bit_policy

        parse_bit_policy(self.quant_layer_bits)
        if self.quant_kd is not None and not 0.0 <= float(self.quant_kd) <= 1.0:
            raise MetaedgeError(f"--quant-kd {self.quant_kd} is outside [0, 1]", "pass e.g. --quant-kd 0.5 (0: no distillation)")
        if self.prune_preset not in ("demo", "bench", "full") or self.quant_preset not in ("demo", "full"):
            raise MetaedgeError("prune presets are demo, bench or full; quant presets demo or full", "fix --prune-preset / --quant-preset")
        if self.quantizer == "ptq" and self.quant_enabled and str(self.quant).lower() != "w8a8":
            raise MetaedgeError(f"--quantizer ptq gives int8 weights, not {self.quant}", "use --quant w8a8 with ptq, or --quantizer metaquant/ste for fewer bits")
        if self.pruner not in PRUNERS:
            raise MetaedgeError(f"unknown pruner {self.pruner!r}", f"use --pruner {', '.join(PRUNERS)}")
        if self.lowrank not in LOWRANK:
            raise MetaedgeError(f"unknown low-rank method {self.lowrank!r}", f"use --lowrank {' or '.join(LOWRANK)}")
        if self.lowrank == "tucker" and self.latency_budget_enabled:
            raise MetaedgeError("--lowrank tucker takes a MACs budget, not --prune-latency", "pass --prune-macs (e.g. 0.5) with --lowrank tucker, or --lowrank off")
        if self.lowrank == "tucker" and not self.prune_enabled:
            raise MetaedgeError("--lowrank tucker needs a MACs budget", "pass --prune-macs, e.g. 0.5 or 20M")
        if self.pruningnet_budgets is not None and (self.pruner != "metapruning" or self.lowrank != "off"):
            raise MetaedgeError("a shared PruningNet (pruningnet_budgets) serves --pruner metapruning alone", "drop pruningnet_budgets, or use --pruner metapruning --lowrank off")
        if self.pruner == "none" and self.lowrank == "off" and (self.prune_enabled or self.latency_budget_enabled):
            raise MetaedgeError("--pruner none leaves nothing to spend the budget on", "add --lowrank tucker, pick a pruner, or pass --prune-macs off")
        if self.latency_budget_enabled and not self.targets:
            raise MetaedgeError("--prune-latency needs a target to measure on", "add --target NAME (e.g. --target rpi4 --device host:port/key)")
        if self.timing.threads < 1:
            raise MetaedgeError(f"--threads {self.timing.threads} must be at least 1", "pass --threads 1 or more")

    @property
    def prune_enabled(self) -> bool:
        return self.prune_macs is not None and str(self.prune_macs).strip().lower() not in _OFF

    @property
    def latency_budget_enabled(self) -> bool:
        return self.prune_latency is not None and str(self.prune_latency).strip().lower() not in _OFF

    @property
    def quant_enabled(self) -> bool:
        return self.quant is not None and str(self.quant).strip().lower() not in _OFF

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


_SECTIONS = {"data": DataConfig, "train": TrainConfig, "export": ExportConfig, "timing": TimingConfig}


def _build(cls: type, values: dict[str, Any], where: str) -> Any:
    known = {f.name: f for f in fields(cls)}
    unknown = sorted(set(values) - set(known))
    if unknown:
        raise MetaedgeError(f"{where}: unknown key(s) {', '.join(unknown)}", f"valid keys are: {', '.join(sorted(known))}")
    try:
        return cls(**values)
    except TypeError as exc:
        raise MetaedgeError(f"{where}: {exc}", "check the value types against the README's config section") from exc


def load_config_file(path: Path | str) -> dict[str, Any]:
    """Read a TOML or YAML file into override dicts (validated when merged)."""
    path = Path(path)
    if not path.is_file():
        raise MetaedgeError(f"config file {path} does not exist", "check the --config path")
    text = path.read_text()
    try:
        if path.suffix in (".toml",):
            raw = tomllib.loads(text)
        elif path.suffix in (".yaml", ".yml"):
            import yaml

            raw = yaml.safe_load(text) or {}
        else:
            raise MetaedgeError(f"config file {path} must end in .toml, .yaml or .yml", "rename it or convert it")
    except (tomllib.TOMLDecodeError, ValueError) as exc:
        raise MetaedgeError(f"{path} is not valid {path.suffix[1:].upper()} ({str(exc).splitlines()[0]})", "fix the syntax at the place named") from exc
    except Exception as exc:  # yaml.YAMLError and friends
        if type(exc).__module__.startswith("yaml"):
            raise MetaedgeError(f"{path} is not valid YAML ({str(exc).splitlines()[0]})", "fix the syntax at the place named") from exc
        raise
    if not isinstance(raw, dict):
        raise MetaedgeError(f"{path} must hold a mapping of settings", "see the README's config section")
    return raw


def merge_overrides(base: PipelineConfig, overrides: dict[str, Any], where: str = "flags") -> PipelineConfig:
    """Apply nested overrides (file or flags) to ``base``, validating every key."""
    top: dict[str, Any] = {}
    for key, value in overrides.items():
        if key in _SECTIONS:
            if not isinstance(value, dict):
                raise MetaedgeError(f"{where}: [{key}] must be a section of settings", "see the README's config section")
            current = dataclasses.asdict(getattr(base, key))
            current.update(value)
            top[key] = _build(_SECTIONS[key], current, f"{where} [{key}]")
        else:
            top[key] = value
    known = {f.name for f in fields(PipelineConfig)}
    unknown = sorted(set(top) - known)
    if unknown:
        raise MetaedgeError(f"{where}: unknown key(s) {', '.join(unknown)}", f"valid keys are: {', '.join(sorted(known))}")
    if "targets" in top and isinstance(top["targets"], (list, str)):
        top["targets"] = tuple([top["targets"]] if isinstance(top["targets"], str) else top["targets"])
    return replace(base, **top)
