"""Typed, validated configuration of a ``metaedge compress`` run, from a TOML/YAML file plus flags.

The file mirrors the dataclasses: top-level keys of :class:`PipelineConfig` plus the sections
``[data]``, ``[train]``, ``[export]`` and ``[timing]``. Unknown keys are errors (a typo must not
silently fall back to a default). Every setting that can be checked without data is checked when
the config is built (budgets, quant spec, targets, backends, device, timing), and budgets and the
quant spec are parsed there into typed values, so a bad setting costs a second, not a training run.
"""

from __future__ import annotations

import dataclasses
import re
import tomllib
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from metaedge.compress.train_config import TrainConfig
from metaedge.data.config import DataConfig
from metaedge.deploy.export_config import ExportConfig
from metaedge.errors import MetaedgeError
from metaedge.latency import TimingConfig, parse_latency_budget

__all__ = ["LatencyBudget", "MacsBudget", "PipelineConfig", "QuantSpec", "load_config_file", "merge_overrides"]

_OFF = ("off", "none", "no", "false", "")
PRUNERS = ("metapruning", "vib", "uniform", "l1", "none")
LOWRANK = ("off", "tucker")
QUANTIZERS = ("metaquant", "ste", "lsq", "ptq")
# MetaQuant's meta networks (compress.metaquant.meta.META_VARIANTS; kept here so the config stays torch-free, a test pins the two equal)
META_NETS = ("fc", "multifc", "lstmfc")
_COUNT_SUFFIX = {"K": 1e3, "M": 1e6, "G": 1e9}


def _is_off(value: Any) -> bool:
    return value is None or value is False or str(value).strip().lower() in _OFF


@dataclass(frozen=True)
class MacsBudget:
    """``--prune-macs``: a fraction in (0, 1) of the baseline's MACs ("0.5") or an absolute count ("20M")."""

    value: float
    fraction: bool
    spec: str = field(compare=False)  # as written, for logs and cache directory names

    @classmethod
    def parse(cls, text: str | float) -> MacsBudget:
        s = str(text).strip().upper().replace("_", "")
        m = re.fullmatch(r"([-+]?[0-9]*\.?[0-9]+(?:E[-+]?[0-9]+)?)\s*([KMG]?)", s)
        if not m:
            raise MetaedgeError(
                f"cannot read the MACs budget {text!r}", "write a fraction of the baseline (--prune-macs 0.5) or an absolute count (20M, 1.5G, 300K)"
            )
        value = float(m.group(1))
        if value < 0:
            raise MetaedgeError(f"--prune-macs {text} is negative", "pass a fraction in (0, 1) such as 0.5, or an absolute budget such as 20M")
        if value == 0:
            raise MetaedgeError(
                "--prune-macs 0 leaves no MACs to spend", "pass a fraction in (0, 1) such as 0.5, an absolute budget such as 20M, or 'off' to skip pruning"
            )
        if m.group(2):
            return cls(value * _COUNT_SUFFIX[m.group(2)], False, s)
        if value == 1.0:
            raise MetaedgeError(
                f"--prune-macs {text} keeps the whole baseline: nothing to prune", "pass a fraction below 1 such as 0.5, or 'off' to skip pruning"
            )
        return cls(value, value < 1.0, s)  # above 1: an absolute count

    def resolve(self, baseline_macs: float) -> float:
        """The budget in MACs for a baseline of ``baseline_macs``."""
        return self.value * baseline_macs if self.fraction else self.value

    def __str__(self) -> str:
        return self.spec


@dataclass(frozen=True)
class LatencyBudget:
    """``--prune-latency``: milliseconds ("2ms", "500us") or a fraction in (0, 1] of the measured baseline ("0.6")."""

    ms: float | None
    fraction: float | None
    spec: str = field(compare=False)

    @classmethod
    def parse(cls, text: str | float) -> LatencyBudget:
        s = str(text).strip()
        if s.startswith("-"):
            raise MetaedgeError(f"--prune-latency {text} is negative", "pass e.g. 2ms, 500us or a fraction such as 0.6")
        try:
            return cls(parse_latency_budget(s), None, s)
        except ValueError:
            pass  # no unit: a fraction of the baseline, or not a budget at all
        try:
            return cls(None, parse_latency_budget(s, 1.0), s)
        except ValueError as exc:
            raise MetaedgeError(str(exc), "pass --prune-latency like 2ms, 500us or a fraction such as 0.6") from exc

    def resolve(self, baseline_ms: float) -> float:
        """The budget in milliseconds for a baseline measured at ``baseline_ms``."""
        if self.ms is not None:
            return self.ms
        assert self.fraction is not None  # parse gives one of ms and fraction
        return float(self.fraction) * baseline_ms

    def __str__(self) -> str:
        return self.spec


@dataclass(frozen=True)
class QuantSpec:
    """``--quant wKaM``: weight and activation bits, checked against what the quantizers support."""

    weight_bits: int
    act_bits: int

    @classmethod
    def parse(cls, text: str) -> QuantSpec:
        from metaedge.qdq.spec import parse_quant_spec

        return cls(*parse_quant_spec(str(text).strip().lower()))

    def __str__(self) -> str:
        return f"w{self.weight_bits}a{self.act_bits}"


def _typed(cls: type[MacsBudget | LatencyBudget | QuantSpec], value: Any) -> Any:
    """``None`` for off, else ``value`` parsed into ``cls`` (an instance passes through)."""
    if isinstance(value, cls) or _is_off(value):
        return None if _is_off(value) else value
    return cls.parse(value)


def _check_backend(backend: str) -> str:
    names = [b.strip() for b in str(backend).split(",") if b.strip()]
    if names == ["auto"]:
        return "auto"
    from metaedge.deploy.backends.base import list_backends

    known = list_backends()
    bad = [b for b in names if b not in known]
    if bad or not names:
        raise MetaedgeError(f"unknown backend {', '.join(bad) or repr(backend)}", f"use --backend auto or one or more of {', '.join(known)} (comma-separated)")
    return ",".join(names)


def _check_targets(targets: tuple[str, ...]) -> None:
    from metaedge.targets.registry import get_target

    for name in targets:
        get_target(name)


def _check_device(device: str | None) -> None:
    if device is not None:
        from metaedge.targets.rpc import parse_device

        parse_device(device)


@dataclass(frozen=True)
class PipelineConfig:
    model: str = "mobilenetv2_100"
    weights: str | None = None
    width_mult: float | None = None
    out: str = "metaedge-out"
    cache_dir: str = ".metaedge-cache"
    prune_macs: MacsBudget | None = MacsBudget(0.5, True, "0.5")  # from "0.5" (fraction of the baseline) or "20M"; None / "off": no MACs budget
    prune_preset: str = "demo"
    prune_latency: LatencyBudget | None = None  # latency budget on targets[0], from "2ms", "500us", or a fraction of the measured baseline ("0.6")
    pruner: str = "metapruning"  # channel pruner: "metapruning" | "vib" | "uniform" | "l1" | "none" (with lowrank only)
    lowrank: str = "off"  # "tucker": kxk convs by Tucker-2, linears by SVD, after the pruner, to the same MACs budget
    # Every budget (same kind and syntax as prune_macs / prune_latency) one shared PruningNet trains for,
    # so the points of a `metaedge sweep` reuse it; None: a PruningNet for this run's budget alone.
    pruningnet_budgets: tuple[str, ...] | None = None
    # Structures in the PruningNet rank diagnostic (Spearman of its score vs a 1-epoch fine-tune,
    # with a bootstrap interval, in the manifest): 0 (default) skips it; each costs a short fine-tune.
    prune_rank_check: int = 0
    quant: QuantSpec | None = QuantSpec(8, 8)  # from "w8a8", "w4a8", ...; None / "off": no quantization
    quantizer: str = "metaquant"  # "metaquant" | "ste" | "lsq" | "ptq"
    quant_preset: str = "demo"
    quant_profile: str = "auto"  # QDQ export profile: "auto" (tensorrt when a backend needs it), "ort", "tensorrt"
    quant_layer_bits: str = "default"  # per-layer bits: first, last, depthwise at 8 ("uniform": all at --quant's bits)
    quant_kd: float | None = None  # distillation weight from the fp32 model (None: the preset's)
    quant_meta_net: str | None = None  # MetaQuant's meta network: fc, multifc, lstmfc (None: the quantizer's default, multifc)
    targets: tuple[str, ...] = ("x86", "rpi4")
    device: str | None = None  # tracker-host:port/key or host:port for remote measurement
    backend: str = "auto"  # "auto" or comma-separated backend names
    tune_trials: int = 0  # MetaSchedule trials per target for TVM (0: the database as it is + default schedules)
    seed: int = 0
    data: DataConfig = field(default_factory=DataConfig)  # input_size None: the data's own size, 16 for digits
    train: TrainConfig = field(default_factory=lambda: TrainConfig(epochs=8, batch_size=64, lr=0.05))
    export: ExportConfig = field(default_factory=ExportConfig)
    timing: TimingConfig = field(default_factory=lambda: TimingConfig(warmup=10, repeats=100, threads=1))

    def __post_init__(self) -> None:
        # Strings from files and flags become typed values here, once; the stages never re-parse them.
        object.__setattr__(self, "prune_macs", _typed(MacsBudget, self.prune_macs))
        object.__setattr__(self, "prune_latency", _typed(LatencyBudget, self.prune_latency))
        object.__setattr__(self, "quant", _typed(QuantSpec, self.quant))
        object.__setattr__(self, "targets", tuple([self.targets] if isinstance(self.targets, str) else self.targets))
        object.__setattr__(self, "backend", _check_backend(self.backend))
        if isinstance(self.tune_trials, bool) or not isinstance(self.tune_trials, int) or self.tune_trials < 0:
            raise MetaedgeError(f"--tune-trials {self.tune_trials!r} is not a trial count", "pass 0 (no tuning) or a trial count such as 500")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            raise MetaedgeError(f"seed {self.seed!r} is not a whole number", "pass e.g. --seed 0")
        if self.width_mult is not None and not self.width_mult > 0:
            raise MetaedgeError(f"width multiplier {self.width_mult} must be positive", "pass e.g. --width-mult 0.5")
        if self.quantizer not in QUANTIZERS:
            raise MetaedgeError(f"unknown quantizer {self.quantizer!r}", f"use --quantizer {', '.join(QUANTIZERS)}")
        if str(self.quant_profile).lower() not in ("auto", "ort", "tensorrt"):
            raise MetaedgeError(f"unknown QDQ profile {self.quant_profile!r}", "use --quant-profile auto, ort or tensorrt")
        from metaedge.qdq.policy import parse_bit_policy

        parse_bit_policy(self.quant_layer_bits)
        if self.quant_kd is not None and not 0.0 <= float(self.quant_kd) <= 1.0:
            raise MetaedgeError(f"--quant-kd {self.quant_kd} is outside [0, 1]", "pass e.g. --quant-kd 0.5 (0: no distillation)")
        if self.quant_meta_net is not None:
            if self.quant_meta_net not in META_NETS:
                raise MetaedgeError(f"unknown MetaQuant meta network {self.quant_meta_net!r}", f"use --quant-meta-net {', '.join(META_NETS)}")
            if self.quantizer != "metaquant":
                raise MetaedgeError(
                    f"--quant-meta-net picks MetaQuant's meta network, but --quantizer is {self.quantizer}",
                    "drop --quant-meta-net or pass --quantizer metaquant",
                )
        if self.prune_preset not in ("demo", "bench", "full") or self.quant_preset not in ("demo", "full"):
            raise MetaedgeError("prune presets are demo, bench or full; quant presets demo or full", "fix --prune-preset / --quant-preset")
        if self.quantizer == "ptq" and self.quant is not None and self.quant != QuantSpec(8, 8):
            raise MetaedgeError(
                f"--quantizer ptq gives int8 weights, not {self.quant}", "use --quant w8a8 with ptq, or --quantizer metaquant/ste for fewer bits"
            )
        if self.pruner not in PRUNERS:
            raise MetaedgeError(f"unknown pruner {self.pruner!r}", f"use --pruner {', '.join(PRUNERS)}")
        if isinstance(self.prune_rank_check, bool) or not isinstance(self.prune_rank_check, int) or self.prune_rank_check < 0:
            raise MetaedgeError(f"--prune-rank-check {self.prune_rank_check!r} is not a structure count", "pass 0 (off) or e.g. 10")
        if self.prune_rank_check == 1:
            raise MetaedgeError("--prune-rank-check 1 ranks a single structure: there is no correlation to measure", "pass 0 (off) or 10 or more")
        if self.prune_rank_check and (self.pruner != "metapruning" or not (self.prune_enabled or self.latency_budget_enabled)):
            raise MetaedgeError(
                "--prune-rank-check checks MetaPruning's PruningNet, and this run trains none",
                "add --pruner metapruning with a --prune-macs or --prune-latency budget, or drop --prune-rank-check",
            )
        if self.lowrank not in LOWRANK:
            raise MetaedgeError(f"unknown low-rank method {self.lowrank!r}", f"use --lowrank {' or '.join(LOWRANK)}")
        if self.lowrank == "tucker" and self.latency_budget_enabled:
            raise MetaedgeError(
                "--lowrank tucker takes a MACs budget, not --prune-latency", "pass --prune-macs (e.g. 0.5) with --lowrank tucker, or --lowrank off"
            )
        if self.lowrank == "tucker" and not self.prune_enabled:
            raise MetaedgeError("--lowrank tucker needs a MACs budget", "pass --prune-macs, e.g. 0.5 or 20M")
        if self.pruningnet_budgets is not None:
            _check_shared_budgets(self)
        if self.pruner == "none" and self.lowrank == "off" and (self.prune_enabled or self.latency_budget_enabled):
            raise MetaedgeError("--pruner none leaves nothing to spend the budget on", "add --lowrank tucker, pick a pruner, or pass --prune-macs off")
        if self.latency_budget_enabled and not self.targets:
            raise MetaedgeError("--prune-latency needs a target to measure on", "add --target NAME (e.g. --target rpi4 --device host:port/key)")
        _check_targets(self.targets)
        _check_device(self.device)

    @property
    def prune_enabled(self) -> bool:
        return self.prune_macs is not None

    @property
    def latency_budget_enabled(self) -> bool:
        return self.prune_latency is not None

    @property
    def quant_enabled(self) -> bool:
        return self.quant is not None

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready values: sections as dicts, budgets and the quant spec as written."""
        out: dict[str, Any] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if dataclasses.is_dataclass(value) and not isinstance(value, type) and f.name in _SECTIONS:
                out[f.name] = dataclasses.asdict(value)
            elif isinstance(value, (MacsBudget, LatencyBudget, QuantSpec)):
                out[f.name] = str(value)
            elif isinstance(value, tuple):
                out[f.name] = list(value)
            else:
                out[f.name] = value
        return out


def _check_shared_budgets(cfg: PipelineConfig) -> None:
    """A shared PruningNet's budgets: MetaPruning alone, each readable in the run's budget kind, latency ones absolute."""
    if cfg.pruner != "metapruning" or cfg.lowrank != "off":
        raise MetaedgeError(
            "a shared PruningNet (pruningnet_budgets) serves --pruner metapruning alone", "drop pruningnet_budgets, or use --pruner metapruning --lowrank off"
        )
    object.__setattr__(cfg, "pruningnet_budgets", tuple(str(b) for b in cfg.pruningnet_budgets))  # type: ignore[union-attr]
    for b in cfg.pruningnet_budgets or ():
        if cfg.latency_budget_enabled and LatencyBudget.parse(b).ms is None:
            # a fraction would follow each run's own baseline measurement, and the band with it
            raise MetaedgeError(f"shared PruningNet budget {b!r} is a fraction", "a shared PruningNet needs absolute latency budgets such as 2ms or 500us")
        if not cfg.latency_budget_enabled:
            MacsBudget.parse(b)


_SECTIONS = {"data": DataConfig, "train": TrainConfig, "export": ExportConfig, "timing": TimingConfig}


def _build(cls: type, values: dict[str, Any], where: str) -> Any:
    known = {f.name: f for f in fields(cls)}
    unknown = sorted(set(values) - set(known))
    if unknown:
        raise MetaedgeError(f"{where}: unknown key(s) {', '.join(unknown)}", f"valid keys are: {', '.join(sorted(known))}")
    try:
        return cls(**values)
    except (TypeError, ValueError) as exc:  # TimingConfig and friends raise ValueError on bad values
        raise MetaedgeError(f"{where}: {str(exc).splitlines()[0]}", "check the value types and ranges against the README's config section") from exc


def load_config_file(path: Path | str) -> dict[str, Any]:
    """Read a TOML or YAML file into override dicts (validated when merged)."""
    path = Path(path)
    if path.is_dir():
        raise MetaedgeError(f"config file {path} is a directory", "pass the TOML or YAML file itself")
    if not path.is_file():
        raise MetaedgeError(f"config file {path} does not exist", "check the --config path")
    try:
        text = path.read_text()
    except UnicodeDecodeError as exc:
        raise MetaedgeError(f"config file {path} is not text (byte {exc.start} is not UTF-8)", "pass a TOML or YAML file") from exc
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
