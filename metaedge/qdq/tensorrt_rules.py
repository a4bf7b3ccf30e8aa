"""TensorRT's explicit-quantization (Q/DQ) placement rules, checked on the ONNX graph alone.

TensorRT cannot be installed everywhere metaedge runs, so this is a pure-ONNX check written from
NVIDIA's TensorRT Developer Guide ("Explicit Quantization", "Q/DQ Layer-Placement
Recommendations") and the ONNX-TensorRT parser's Q/DQ support, plus the failures reported in
onnx/onnx-tensorrt#850 and microsoft/onnxruntime#14229. A graph that passes is what TensorRT's
explicit-quantization mode is documented to accept and fuse; it is not a substitute for building
the engine on the target. The rules, by id:

* ``TRT001`` opset >= 13 (the ``axis`` attribute of per-channel Q/DQ).
* ``TRT002`` every QuantizeLinear/DequantizeLinear has a constant (initializer or ``Constant``)
  scale that is finite and > 0.
* ``TRT003`` every Q/DQ has an explicit constant zero point, of type INT8, equal to 0: TensorRT's
  INT8 quantization is symmetric only, and a missing zero point means UINT8 in ONNX.
* ``TRT004`` activations are quantized per tensor (a scalar scale); per-channel scales only on
  constant weights.
* ``TRT005`` per-channel weight quantization uses the consumer's output-channel axis: Conv 0,
  ConvTranspose 1, Gemm 0 with ``transB=1`` else 1, MatMul the last axis.
* ``TRT006`` every DequantizeLinear reads the output of a QuantizeLinear (a Q/DQ pair): no DQ on a
  stored integer tensor -- weights are float initializers that go through Q -> DQ, and biases
  are not quantized.
* ``TRT007`` the two halves of a pair agree: the DQ's scale, zero point and axis equal its Q's.
* ``TRT008`` Conv, ConvTranspose, Gemm and MatMul get both their data and their weight input from
  a DequantizeLinear (otherwise TensorRT runs the layer in float), and the weight's Q reads a
  float constant.
* ``TRT009`` biases (input 2 of Conv/ConvTranspose/Gemm) are float and do not come from a DQ.
* ``TRT010`` one Q/DQ pair per consumer: each QuantizeLinear feeds exactly one DequantizeLinear
  and nothing else, and each DequantizeLinear feeds exactly one node or one graph output.
* ``TRT011`` QuantizeLinear reads a float tensor (FLOAT, FLOAT16 or BFLOAT16).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from metaedge.errors import MetaedgeError

__all__ = ["RULES", "TrtQdqReport", "Violation", "check_tensorrt_qdq", "require_tensorrt_qdq"]

RULES = {
    "TRT001": "opset >= 13",
    "TRT002": "Q/DQ scale is a positive finite constant",
    "TRT003": "Q/DQ zero point is an explicit INT8 constant equal to 0",
    "TRT004": "activations are quantized per tensor",
    "TRT005": "per-channel weight scales on the output-channel axis",
    "TRT006": "every DequantizeLinear reads a QuantizeLinear (no DQ on stored integers)",
    "TRT007": "the DQ of a pair has its Q's scale, zero point and axis",
    "TRT008": "Conv/Gemm/MatMul data and weight inputs come from DequantizeLinear",
    "TRT009": "biases are float and not dequantized",
    "TRT010": "one Q/DQ pair per consumer",
    "TRT011": "QuantizeLinear reads a float tensor",
}
_WEIGHTED = ("Conv", "ConvTranspose", "Gemm", "MatMul")
_FLOATS = (1, 10, 16)  # onnx.TensorProto FLOAT, FLOAT16, BFLOAT16
_INT8 = 3  # onnx.TensorProto.INT8


@dataclass(frozen=True)
class Violation:
    rule: str
    node: str
    message: str

    def __str__(self) -> str:
        return f"{self.rule} {self.node}: {self.message}"


@dataclass
class TrtQdqReport:
    passed: bool
    violations: list[Violation] = field(default_factory=list)
    quantize_nodes: int = 0
    dequantize_nodes: int = 0
    int8_layers: int = 0  # weighted layers with both inputs dequantized
    float_layers: int = 0

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["violations"] = [str(v) for v in self.violations]
        return d


class _Graph:
    def __init__(self, model) -> None:
        from onnx import numpy_helper

        g = model.graph
        self.nodes = list(g.node)
        self.consts: dict[str, np.ndarray] = {i.name: numpy_helper.to_array(i) for i in g.initializer}
        self.const_types: dict[str, int] = {i.name: i.data_type for i in g.initializer}
        for n in self.nodes:
            if n.op_type == "Constant":
                for a in n.attribute:
                    if a.name == "value":
                        self.consts[n.output[0]] = numpy_helper.to_array(a.t)
                        self.const_types[n.output[0]] = a.t.data_type
        self.producer = {o: n for n in self.nodes for o in n.output}
        self.consumers: dict[str, list] = {}
        for n in self.nodes:
            for i in n.input:
                if i:
                    self.consumers.setdefault(i, []).append(n)
        self.outputs = {o.name for o in g.output}
        self.value_types: dict[str, int] = {}
        for vi in [*g.input, *g.value_info, *g.output]:
            if vi.type.HasField("tensor_type"):
                self.value_types[vi.name] = vi.type.tensor_type.elem_type

    def is_const(self, name: str) -> bool:
        return name in self.consts

    def elem_type(self, name: str) -> int | None:
        if name in self.const_types:
            return self.const_types[name]
        if name in self.value_types:
            return self.value_types[name]
        p = self.producer.get(name)
        if p is not None and p.op_type == "DequantizeLinear":
            return 1
        return None


def _name(n) -> str:
    return n.name or f"{n.op_type}({n.output[0]})"


def _axis(n) -> int:
    for a in n.attribute:
        if a.name == "axis":
            return int(a.i)
    return 1  # the ONNX default


def _attr_i(n, key: str, default: int) -> int:
    for a in n.attribute:
        if a.name == key:
            return int(a.i)
    return default


def _weight_axis(consumer, weight_rank: int) -> int:
    op = consumer.op_type
    if op == "Conv":
        return 0
    if op == "ConvTranspose":
        return 1
    if op == "Gemm":
        return 0 if _attr_i(consumer, "transB", 0) else 1
    return weight_rank - 1  # MatMul: the output columns


def _float_source(g: _Graph, n) -> str:
    """The float tensor a Q (or the Q behind a DQ) quantizes; a DQ's own input if it has no Q."""
    if n.op_type == "QuantizeLinear":
        return n.input[0]
    p = g.producer.get(n.input[0])
    return p.input[0] if p is not None and p.op_type == "QuantizeLinear" else n.input[0]


def _load(model_or_path):
    import onnx

    if isinstance(model_or_path, (str, Path)):
        return onnx.load(str(model_or_path), load_external_data=False)
    return model_or_path


def check_tensorrt_qdq(model_or_path) -> TrtQdqReport:
    """Check an ONNX model (path or ModelProto) against the rules above; never raises on a bad graph."""
    model = _load(model_or_path)
    g = _Graph(model)
    out: list[Violation] = []
    opset = max((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), default=0)
    if opset < 13:
        out.append(Violation("TRT001", "model", f"opset {opset} < 13"))
    qs = [n for n in g.nodes if n.op_type == "QuantizeLinear"]
    dqs = [n for n in g.nodes if n.op_type == "DequantizeLinear"]
    for n in qs + dqs:
        name = _name(n)
        scale_name = n.input[1] if len(n.input) > 1 else ""
        if not g.is_const(scale_name):
            out.append(Violation("TRT002", name, "scale is not a constant"))
        else:
            s = g.consts[scale_name]
            if not np.all(np.isfinite(s)) or not np.all(s > 0):
                out.append(Violation("TRT002", name, "scale is not finite and > 0"))
        zp_name = n.input[2] if len(n.input) > 2 else ""
        if not zp_name:
            out.append(Violation("TRT003", name, "no zero point (ONNX then means UINT8)"))
        elif not g.is_const(zp_name):
            out.append(Violation("TRT003", name, "zero point is not a constant"))
        else:
            if g.const_types.get(zp_name) != _INT8:
                out.append(Violation("TRT003", name, f"zero point type {g.const_types.get(zp_name)} is not INT8 (3)"))
            if np.any(g.consts[zp_name] != 0):
                out.append(Violation("TRT003", name, "zero point is not 0"))
        if g.is_const(scale_name) and g.consts[scale_name].size > 1 and not g.is_const(_float_source(g, n)):
            out.append(Violation("TRT004", name, "per-channel scale on an activation"))
    for q in qs:
        name = _name(q)
        t = g.elem_type(q.input[0])
        if t is not None and t not in _FLOATS:
            out.append(Violation("TRT011", name, f"input type {t} is not float"))
        users = g.consumers.get(q.output[0], [])
        if len(users) != 1 or users[0].op_type != "DequantizeLinear" or q.output[0] in g.outputs:
            out.append(
                Violation(
                    "TRT010",
                    name,
                    f"feeds {[u.op_type for u in users]} (+ graph output)"
                    if q.output[0] in g.outputs
                    else f"feeds {[u.op_type for u in users]}, not exactly one DequantizeLinear",
                )
            )
    for dq in dqs:
        name = _name(dq)
        src = g.producer.get(dq.input[0])
        if src is None or src.op_type != "QuantizeLinear":
            what = "a stored constant" if g.is_const(dq.input[0]) else (src.op_type if src is not None else "a graph input")
            out.append(Violation("TRT006", name, f"reads {what}, not a QuantizeLinear"))
        else:
            same = True
            for i in (1, 2):
                a = src.input[i] if len(src.input) > i else ""
                b = dq.input[i] if len(dq.input) > i else ""
                if a != b and not (g.is_const(a) and g.is_const(b) and np.array_equal(g.consts[a], g.consts[b])):
                    same = False
            if g.is_const(src.input[1]) and g.consts[src.input[1]].size > 1 and _axis(src) != _axis(dq):
                same = False
            if not same:
                out.append(Violation("TRT007", name, f"scale/zero point/axis differ from {_name(src)}"))
        users = g.consumers.get(dq.output[0], [])
        n_uses = len(users) + (1 if dq.output[0] in g.outputs else 0)
        if n_uses != 1:
            out.append(Violation("TRT010", name, f"feeds {n_uses} consumers, not one"))
    int8_layers = float_layers = 0
    for n in g.nodes:
        if n.op_type not in _WEIGHTED:
            continue
        name = _name(n)
        ins = [g.producer.get(i) for i in n.input[:2]]
        if any(p is None or p.op_type != "DequantizeLinear" for p in ins):
            float_layers += 1
            out.append(Violation("TRT008", name, "data or weight input does not come from DequantizeLinear"))
        else:
            int8_layers += 1
            w_dq = ins[1]
            assert w_dq is not None  # the any() above
            wq = g.producer.get(w_dq.input[0])
            if wq is not None and wq.op_type == "QuantizeLinear":  # (a quantized activation as weight is fine: MatMul)
                if g.is_const(wq.input[0]) and g.const_types.get(wq.input[0]) not in _FLOATS:
                    out.append(Violation("TRT008", name, "weight Q reads a non-float constant"))
                scale = g.consts.get(wq.input[1])
                if scale is not None and scale.size > 1 and g.is_const(wq.input[0]):
                    want = _weight_axis(n, g.consts[wq.input[0]].ndim)
                    got = _axis(wq) % max(1, g.consts[wq.input[0]].ndim)
                    if got != want:
                        out.append(Violation("TRT005", name, f"weight scales on axis {got}, want {want} for {n.op_type}"))
        if n.op_type != "MatMul" and len(n.input) > 2 and n.input[2]:
            b = n.input[2]
            p = g.producer.get(b)
            if p is not None and p.op_type == "DequantizeLinear":
                out.append(Violation("TRT009", name, "bias comes from a DequantizeLinear"))
            t = g.elem_type(b)
            if t is not None and t not in _FLOATS:
                out.append(Violation("TRT009", name, f"bias type {t} is not float"))
    return TrtQdqReport(not out, out, len(qs), len(dqs), int8_layers, float_layers)


def require_tensorrt_qdq(model_or_path, where: str = "the QDQ model") -> TrtQdqReport:
    """:func:`check_tensorrt_qdq`, raising a one-line MetaedgeError naming the first violations."""
    report = check_tensorrt_qdq(model_or_path)
    if not report.passed:
        first = "; ".join(str(v) for v in report.violations[:3])
        more = f" (+{len(report.violations) - 3} more)" if len(report.violations) > 3 else ""
        raise MetaedgeError(
            f"{where} breaks TensorRT's Q/DQ placement rules: {first}{more}",
            "export with the tensorrt profile (--quant-profile tensorrt); see metaedge/qdq/tensorrt_rules.py for the rules",
        )
    return report
