"""Per-layer latency tables measured on a target: the latency budget for the pruning search.

Each unique conv / linear / pool shape (any object with a ``LayerSpec``'s fields -- ``kind``,
channels, kernel, stride, groups, in/out size -- such as ``metaedge.compress.cost.LayerSpec``,
compared without its name) becomes a one-layer ONNX model, is compiled for the target and timed by
the runner :func:`~metaedge.deploy.measure.select.runner_for` picks -- here, or on the device through
TVM RPC -- and the p50 is cached on disk. ``LatencyTable.predict(specs)`` sums
the entries; shapes never measured (a pruned channel count the search invents) are estimated from
a per-kind linear fit ``ms = a + b * MACs`` over the measured ones, so a search can call it
thousands of times without touching the device.

BatchNorm and activations cost nothing in the table: BN folds into the preceding conv and
element-wise activations fuse into it in every compiled backend, so each conv is measured with a
ReLU attached.

The table reaches the pruning search only as the ``latency_fn(specs) -> ms`` callable
:func:`make_latency_fn` returns; the pipeline hands it to ``compress/`` as the budget function, so
neither side imports the other.
"""

from __future__ import annotations

import json
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import numpy as np

from metaedge.artifacts import atomic_write_json
from metaedge.deploy.backends.base import get_backend
from metaedge.deploy.measure.base import MeasureInput
from metaedge.deploy.measure.cache import LatencyCache, cache_key
from metaedge.deploy.measure.select import runner_for
from metaedge.latency import TimingConfig
from metaedge.onnx_graph import INPUT_NAME, OUTPUT_NAME
from metaedge.targets.registry import Target, get_target

__all__ = ["LatencyTable", "layer_onnx", "make_latency_fn", "measure_layers", "spec_key"]

MEASURED_KINDS = ("conv", "linear", "pool")
DEFAULT_TABLE_CACHE = Path(".metaedge-cache") / "layer-latency.json"


def _get(spec: Any, name: str, default: Any = None) -> Any:
    return getattr(spec, name, default)


def _kind(spec: Any) -> str:
    """Latency class of a layer: depthwise convs behave nothing like dense ones."""
    kind = _get(spec, "kind")
    if kind == "conv" and _get(spec, "groups", 1) > 1 and _get(spec, "groups") == _get(spec, "in_channels"):
        return "dwconv"
    return kind


def spec_key(spec: Any) -> str:
    """Stable text key of a spec's shape (name ignored)."""
    k = _get(spec, "kernel", (1, 1))
    s = _get(spec, "stride", (1, 1))
    i = _get(spec, "in_hw", (1, 1))
    o = _get(spec, "out_hw", (1, 1))
    return (
        f"{_get(spec, 'kind')}:c{_get(spec, 'in_channels')}-{_get(spec, 'out_channels')}:k{k[0]}x{k[1]}"
        f":s{s[0]}x{s[1]}:g{_get(spec, 'groups', 1)}:i{i[0]}x{i[1]}:o{o[0]}x{o[1]}:b{int(bool(_get(spec, 'bias', False)))}"
    )


def _macs(spec: Any) -> float:
    m = _get(spec, "macs", None)
    if m is not None:
        return float(m)
    if spec.kind == "conv":
        oh, ow = spec.out_hw
        return float(oh * ow * spec.out_channels * (spec.in_channels // spec.groups) * spec.kernel[0] * spec.kernel[1])
    if spec.kind == "linear":
        return float(spec.in_channels * spec.out_channels)
    return float(spec.in_channels * spec.in_hw[0] * spec.in_hw[1])


def layer_onnx(spec: Any, path: Path | str) -> tuple[int, ...]:
    """Write a one-layer ONNX model for ``spec`` (metaedge's input and output names); returns the
    input shape. Weights are seeded random: latency does not depend on their values."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    kind = spec.kind
    nodes, inits = [], []
    if kind == "conv":
        cin, cout, g = spec.in_channels, spec.out_channels, spec.groups
        (kh, kw), (sh, sw), (ih, iw), (oh, ow) = spec.kernel, spec.stride, spec.in_hw, spec.out_hw
        # Recover symmetric padding from the shapes: out = floor((in + 2p - k) / s) + 1.
        ph = max(0, -(-((oh - 1) * sh + kh - ih) // 2))
        pw = max(0, -(-((ow - 1) * sw + kw - iw) // 2))
        in_shape: tuple[int, ...] = (1, cin, ih, iw)
        inits.append(numpy_helper.from_array(rng.standard_normal((cout, cin // g, kh, kw), dtype=np.float32) * 0.1, "w"))
        # Always with a bias: a following BatchNorm folds into one at export.
        inits.append(numpy_helper.from_array(np.zeros(cout, np.float32), "b"))
        inputs = [INPUT_NAME, "w", "b"]
        nodes.append(helper.make_node("Conv", inputs, ["y"], kernel_shape=[kh, kw], strides=[sh, sw], pads=[ph, pw, ph, pw], group=g))
        nodes.append(helper.make_node("Relu", ["y"], [OUTPUT_NAME]))
        out_shape = [1, cout, oh, ow]
    elif kind == "linear":
        cin, cout = spec.in_channels, spec.out_channels
        in_shape = (1, cin)
        inits.append(numpy_helper.from_array(rng.standard_normal((cout, cin), dtype=np.float32) * 0.1, "w"))
        inits.append(numpy_helper.from_array(np.zeros(cout, np.float32), "b"))
        nodes.append(helper.make_node("Gemm", [INPUT_NAME, "w", "b"], [OUTPUT_NAME], transB=1))
        out_shape = [1, cout]
    elif kind == "pool":
        c, (ih, iw), (oh, ow) = spec.in_channels, spec.in_hw, spec.out_hw
        in_shape = (1, c, ih, iw)
        if (oh, ow) == (1, 1):
            nodes.append(helper.make_node("GlobalAveragePool", [INPUT_NAME], [OUTPUT_NAME]))
        else:
            kh, kw = max(1, ih // oh), max(1, iw // ow)
            nodes.append(helper.make_node("MaxPool", [INPUT_NAME], [OUTPUT_NAME], kernel_shape=[kh, kw], strides=[kh, kw]))
        out_shape = [1, c, oh, ow]
    else:
        raise ValueError(f"no latency model for layer kind {kind!r}")
    graph = helper.make_graph(
        nodes,
        "layer",
        [helper.make_tensor_value_info(INPUT_NAME, TensorProto.FLOAT, list(in_shape))],
        [helper.make_tensor_value_info(OUTPUT_NAME, TensorProto.FLOAT, out_shape)],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return in_shape


@dataclass
class LatencyTable:
    """Measured per-layer p50 latencies (ms) for one target/backend/device."""

    target: str
    backend: str
    device: str | None
    entries: dict[str, float] = field(default_factory=dict)  # spec_key -> ms
    kinds: dict[str, str] = field(default_factory=dict)  # spec_key -> latency class
    macs: dict[str, float] = field(default_factory=dict)  # spec_key -> MACs (for the fit)
    overhead_ms: float = 0.0  # per-model constant (VM call, input copy); added once by predict
    scale: float = 1.0  # measured/summed ratio from calibrate(): unfused element-wise ops, residual adds
    _fit: dict[str, tuple[float, float]] = field(default_factory=dict, repr=False)

    def add(self, spec: Any, ms: float) -> None:
        key = spec_key(spec)
        self.entries[key] = float(ms)
        self.kinds[key] = _kind(spec)
        self.macs[key] = _macs(spec)
        self._fit.clear()

    def _fit_kind(self, kind: str) -> tuple[float, float]:
        if kind not in self._fit:
            pts = [(self.macs[k], v) for k, v in self.entries.items() if self.kinds[k] == kind]
            if not pts:
                pts = [(self.macs[k], v) for k, v in self.entries.items()]  # any measured layer beats nothing
            if not pts:
                raise ValueError(f"latency table for {self.target} is empty")
            x = np.array([p[0] for p in pts], dtype=np.float64)
            y = np.array([p[1] for p in pts], dtype=np.float64)
            if len(pts) == 1 or np.ptp(x) == 0:
                a, b = 0.0, float(y.mean() / max(x.mean(), 1.0))
            else:
                b, a = np.polyfit(x, y, 1)
                if b <= 0:  # noisy tiny layers: fall back to a proportional model
                    a, b = 0.0, float(y.sum() / max(x.sum(), 1.0))
            self._fit[kind] = (max(0.0, float(a)), float(b))
        return self._fit[kind]

    def layer_ms(self, spec: Any) -> float:
        """Measured latency of one layer, or the per-kind fit for an unmeasured shape."""
        if _get(spec, "kind") not in MEASURED_KINDS:
            return 0.0
        key = spec_key(spec)
        if key in self.entries:
            return self.entries[key]
        a, b = self._fit_kind(_kind(spec))
        return a + b * _macs(spec)

    def predict(self, specs: Iterable[Any]) -> float:
        """Predicted end-to-end latency (ms) of a network with these layers."""
        return self.overhead_ms + self.scale * sum(self.layer_ms(s) for s in specs)

    def calibrate(self, specs: Iterable[Any], measured_ms: float) -> float:
        """Scale the table so it predicts ``measured_ms`` for the network ``specs`` (one end-to-end
        measurement of the unpruned model). Ranking is unchanged; absolute budgets become right."""
        raw = sum(self.layer_ms(s) for s in specs)
        if raw <= 0 or measured_ms <= self.overhead_ms:
            raise ValueError("cannot calibrate: no measured layers or measurement below the overhead")
        self.scale = (measured_ms - self.overhead_ms) / raw
        return self.scale

    def missing(self, specs: Iterable[Any]) -> list[Any]:
        seen, out = set(), []
        for s in specs:
            key = spec_key(s)
            if _get(s, "kind") in MEASURED_KINDS and key not in self.entries and key not in seen:
                seen.add(key)
                out.append(s)
        return out

    def to_dict(self) -> dict[str, Any]:
        return {
            "target": self.target,
            "backend": self.backend,
            "device": self.device,
            "overhead_ms": self.overhead_ms,
            "scale": self.scale,
            "entries": {k: {"ms": v, "kind": self.kinds[k], "macs": self.macs[k]} for k, v in self.entries.items()},
        }

    def save(self, path: Path | str) -> None:
        atomic_write_json(path, self.to_dict())

    @classmethod
    def load(cls, path: Path | str) -> "LatencyTable":
        d = json.loads(Path(path).read_text())
        t = cls(d["target"], d["backend"], d.get("device"), overhead_ms=float(d.get("overhead_ms", 0.0)), scale=float(d.get("scale", 1.0)))
        for k, e in d["entries"].items():
            t.entries[k], t.kinds[k], t.macs[k] = float(e["ms"]), e["kind"], float(e["macs"])
        return t


def measure_layers(
    specs: Sequence[Any],
    target: str | Target,
    *,
    device: str | None = None,
    backend: str = "tvm",
    timing: TimingConfig = TimingConfig(warmup=5, repeats=20),
    cache_path: Path | str | None = DEFAULT_TABLE_CACHE,
    table: LatencyTable | None = None,
    work_dir: Path | str | None = None,
) -> LatencyTable:
    """Measure every unique measurable shape in ``specs`` not yet in the table or the disk cache.

    ``backend="tvm"`` compiles each layer for the target (and times it remotely when ``device`` is
    given: several devices behind the tracker work in parallel); ``"onnxruntime"`` times layers
    locally with ONNX Runtime (only for targets that run here)."""
    target = get_target(target)
    table = table or LatencyTable(target.name, backend, device)
    cache = LatencyCache(cache_path) if cache_path is not None else None
    variant = f"{device or 'local'}|w{timing.warmup}r{timing.repeats}t{timing.threads}"
    todo = []
    for spec in table.missing(specs):
        hit = cache.get(spec_key(spec), target.name, backend, variant) if cache is not None else None
        if hit is not None:
            table.add(spec, hit["latency"]["p50_ms"])
        else:
            todo.append(spec)
    if not todo:
        return table
    runner = runner_for(target, backend, device, timing)  # before any compile: says where layers can be timed
    tmp_ctx = tempfile.TemporaryDirectory(prefix="metaedge-layers-") if work_dir is None else None
    root = Path(work_dir or tmp_ctx.name)  # type: ignore[union-attr]
    try:
        be = get_backend(backend)
        jobs = []
        for i, spec in enumerate(todo):
            d = root / f"layer{i:04d}"
            d.mkdir(parents=True, exist_ok=True)
            layer_onnx(spec, d / "layer.onnx")
            jobs.append(MeasureInput(be.compile(d / "layer.onnx", target, d / backend), tag=spec_key(spec)))
        results = runner.run(jobs)
    finally:
        if tmp_ctx is not None:
            tmp_ctx.cleanup()
    bulk = {}
    for spec, res in zip(todo, results):
        table.add(spec, res.latency.p50_ms)
        bulk[cache_key(spec_key(spec), target.name, backend, variant)] = {"latency": res.latency.to_dict(), "measured_at": time.time()}
    if cache is not None:
        cache.put_many(bulk)
    return table


def make_latency_fn(
    target: str | Target,
    device: str | None = None,
    *,
    specs: Sequence[Any] = (),
    backend: str = "tvm",
    timing: TimingConfig = TimingConfig(warmup=5, repeats=20),
    cache_path: Path | str | None = DEFAULT_TABLE_CACHE,
    width_multipliers: Sequence[float] = (1.0,),
    measure_unseen: bool = False,
) -> Callable[[Sequence[Any]], float]:
    """A ``latency_fn(specs) -> ms`` for the pruning search, backed by a table measured on ``target``.

    The table is seeded with ``specs`` (the unpruned network's layers: the pipeline passes
    ``compress.cost.layer_specs(model, input_shape)``), each also at the given ``width_multipliers``
    of its channel counts (so the fit covers the pruned widths the search will try). Unseen shapes
    are estimated by the fit, or measured on first use when ``measure_unseen`` is set (slow: one
    compile per new shape). The returned function carries the table as ``latency_fn.table``."""
    seed = _with_widths(list(specs), width_multipliers)
    table = (
        measure_layers(seed, target, device=device, backend=backend, timing=timing, cache_path=cache_path)
        if seed
        else LatencyTable(getattr(target, "name", str(target)), backend, device)
    )

    def latency_fn(layer_specs_: Sequence[Any]) -> float:
        if measure_unseen:
            new = table.missing(layer_specs_)
            if new:
                measure_layers(new, target, device=device, backend=backend, timing=timing, cache_path=cache_path, table=table)
        return table.predict(layer_specs_)

    latency_fn.table = table  # type: ignore[attr-defined]
    return latency_fn


def _with_widths(specs: Sequence[Any], mults: Sequence[float]) -> list[Any]:
    from dataclasses import replace

    out = list(specs)
    for m in mults:
        if m == 1.0:
            continue
        for s in specs:
            if _get(s, "kind") not in ("conv", "linear"):
                continue
            cin = max(1, int(round(s.in_channels * m))) if s.kind == "linear" or s.groups == 1 else s.in_channels
            cout = max(1, int(round(s.out_channels * m)))
            if s.kind == "conv" and s.groups > 1:  # depthwise: channels move together
                cin = cout = max(1, int(round(s.in_channels * m)))
                out.append(replace(s, in_channels=cin, out_channels=cout, groups=cin))
            else:
                out.append(replace(s, in_channels=cin, out_channels=cout))
    return out
