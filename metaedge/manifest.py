"""The typed manifest of a ``metaedge compress`` run: one dataclass per section, serialised to JSON.

``manifest.json`` keeps the keys bundles, the device runtime and tests read (``model``, ``files``,
``compiled`` ...); the README's schema table is checked against these classes by a test. Rules of
the JSON form: a field whose default is ``None`` is left out while it is ``None`` (a stage that did
not run, a number only some methods have); a field named ``details`` is merged into its section
(method-specific keys such as ``ranks`` or ``gate_history`` sit beside the common ones).

Torch-free, like :mod:`metaedge.artifacts`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "Accuracy",
    "BaselineStage",
    "CostSection",
    "DataSection",
    "ExportSection",
    "FinalStage",
    "LatencyBudgetInfo",
    "LatencyRatios",
    "Manifest",
    "ModelSection",
    "Preprocess",
    "PruneStage",
    "QuantStage",
    "RunSection",
    "Stages",
    "to_json",
]


def to_json(value: Any) -> Any:
    """``value`` as plain JSON data, following the rules in the module docstring."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        out: dict[str, Any] = {}
        for f in dataclasses.fields(value):
            v = getattr(value, f.name)
            if v is None and f.default is None:
                continue
            if f.name == "details":
                out.update(to_json(v))
            else:
                out[f.name] = to_json(v)
        return out
    if isinstance(value, dict):
        return {str(k): to_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_json(v) for v in value]
    return value


@dataclass(frozen=True)
class Accuracy:
    """Top-1 accuracy on the splits measured (PTQ has no fake-quant model to score on val)."""

    test: float | None
    val: float | None = None


@dataclass(frozen=True)
class Preprocess:
    mean: list[float]
    std: list[float]
    input_size: int
    in_chans: int


@dataclass(frozen=True)
class ModelSection:
    """The input/output contract the device runtime serves (``deploy.runtime.spec`` reads it)."""

    name: str
    num_classes: int
    input_shape: list[int]
    preprocess: Preprocess
    input_name: str = "input"
    output_name: str = "logits"
    dtype: str = "float32"


@dataclass(frozen=True)
class DataSection:
    source: str
    num_classes: int
    sizes: dict[str, int]


@dataclass(frozen=True)
class BaselineStage:
    accuracy: Accuracy
    macs: int
    params: int
    train_seconds: float
    cached: bool
    seconds: float


@dataclass(frozen=True)
class LatencyBudgetInfo:
    """How a ``--prune-latency`` budget was priced: the first target's per-layer table, calibrated."""

    target: str
    device: str | None
    table_raw_ms: float
    budget_ms: float
    baseline_measured_ms: float | None = None
    table_scale: float | None = None
    predicted_ms: float | None = None


@dataclass(frozen=True)
class PruneStage:
    method: str  # metapruning, vib, uniform, l1, tucker or <pruner>+tucker
    budget_kind: str  # macs or latency
    budget: float  # MACs or ms
    macs: int
    params: int
    accuracy: Accuracy
    widths: dict[str, int] = field(default_factory=dict)
    budget_use: float | None = None
    seconds: dict[str, float] | float | None = None
    latency_budget: LatencyBudgetInfo | None = None
    details: dict[str, Any] = field(default_factory=dict)  # per method: search_log, ranks, lowrank, gate_history, ...


@dataclass(frozen=True)
class QuantStage:
    method: str  # metaquant, ste, lsq, ptq
    weight_bits: int
    act_bits: int
    profile: str
    profile_reason: str
    accuracy: Accuracy
    seconds: float
    weight_quantizer: str | None = None
    layer_bits: str | None = None
    kd_alpha: float | None = None
    meta_net: str | None = None  # MetaQuant's meta network (fc, multifc, lstmfc); None for the other methods
    layers: Any = None
    packed_bytes: int | None = None
    export: dict[str, Any] | None = None
    fusion: dict[str, Any] | None = None
    tensorrt_rules: dict[str, Any] | None = None
    # per QAT epoch: loss, val accuracy; MetaQuant adds meta_cos (mean cosine of its gradient with
    # STE's: ~1.0 means the meta network has not moved off STE) and, for FC-Grad, meta_gain
    history: list[dict[str, Any]] | None = None


@dataclass(frozen=True)
class FinalStage:
    accuracy: Accuracy  # of model.onnx itself
    model_sha256: str
    measured_on: str = "onnxruntime"


@dataclass(frozen=True)
class Stages:
    baseline: BaselineStage | None = None
    prune: PruneStage | None = None
    quant: QuantStage | None = None
    final: FinalStage | None = None


@dataclass(frozen=True)
class CostSection:
    macs: int
    params: int
    baseline_macs: int
    baseline_params: int


@dataclass(frozen=True)
class ExportSection:
    opset: int
    parity: dict[str, Any]


@dataclass(frozen=True)
class LatencyRatios:
    eager_over_onnxruntime_baseline: float
    eager_over_onnxruntime: float
    baseline_over_final_onnxruntime: float
    fp32_over_int8_onnxruntime: float | None = None


@dataclass(frozen=True)
class RunSection:
    seconds: float
    finished_utc: str


@dataclass(frozen=True)
class Manifest:
    """Everything ``manifest.json`` holds besides ``schema_version`` and ``files`` (the artifact
    directory's own bookkeeping, see :class:`metaedge.artifacts.ArtifactDir`)."""

    tools: dict[str, str]
    config: dict[str, Any]
    data: DataSection
    model: ModelSection
    stages: Stages = field(default_factory=Stages)
    cost: CostSection | None = None
    export: ExportSection | None = None
    latency: dict[str, dict[str, float]] | None = None  # per backend: LatencyStats fields
    latency_ratios: LatencyRatios | None = None
    compiled: dict[str, dict[str, Any]] | None = None  # per target: deploy.compile's section
    run: RunSection | None = None

    def with_stage(self, **stage: Any) -> Manifest:
        return dataclasses.replace(self, stages=dataclasses.replace(self.stages, **stage))

    def to_json(self) -> dict[str, Any]:
        return to_json(self)
