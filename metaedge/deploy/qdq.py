"""QDQ ONNX export of a fake-quant (QAT) model in the ``ort`` or ``tensorrt`` profile, its parity gate,
the int8-fusion check, and the choice of profile for a set of backends.

The fake-quant model from :mod:`metaedge.compress.metaquant` already *is* the deployed graph (BN
folded in its eval form, quantizers at the tensors that will carry Q/DQ). For export every
quantizer switches to its export form: activations call torch's ``quantized_decomposed``
quantize/dequantize ops, weights are int8 constants fed to ``dequantize_per_channel``. The dynamo
exporter turns those into QuantizeLinear/DequantizeLinear through a small translation table (ours:
per-tensor scale and zero point as scalar initializers, per-channel DequantizeLinear on axis 0
without a Clip). Then one graph pass per profile (see
:mod:`metaedge.compress.metaquant.profiles`):

* ``ort``: every Conv/Gemm bias goes onto the int32 grid ``s_x * s_w`` behind its own
  DequantizeLinear -- ONNX Runtime's QDQ selectors only fuse a node whose every input comes from a
  DQ, and QLinearConv adds an int32 bias. Per layer: ``x -> Q -> DQ -> Conv(DQ(int8 W, axis 0),
  DQ(int32 b)) -> [Relu/Clip] -> Q -> DQ``, which ORT rewrites to QLinearConv (dropping the
  Relu/Clip when the uint8 zero point makes it redundant). uint8 activations with a zero point;
  8-bit layers were trained on a 7-bit grid, where ORT's x86 u8s8 kernels cannot saturate (see
  :mod:`metaedge.compress.metaquant.profiles`); ``rewrite.saturation_risk_weights`` lists any
  weight that still has wider levels (a model prepared for the other profile).
* ``tensorrt``: int8 activations with zero point 0; each int8 weight initializer becomes the float
  weight ``q * s`` (already on its grid, so any rounding mode gives back ``q``) feeding
  QuantizeLinear -> DequantizeLinear per channel on axis 0; biases stay float; every consumer of a
  quantized tensor gets its own Q/DQ pair. :func:`metaedge.deploy.trt_qdq_rules.require_tensorrt_qdq`
  runs on every such export.

k < 8-bit weights stay on their k-bit grid in int8 containers; ``packed_bytes`` reports what they
occupy bit-packed at k bits plus scales and biases, per layer and in total.
"""
from __future__ import annotations

import contextlib
import copy
import io
import logging
import math
import warnings
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn

from metaedge.artifacts import atomic_path
from metaedge.errors import MetaedgeError

__all__ = [
    "INT8_KERNELS",
    "PARITY_MAX_STEPS",
    "PARITY_MEAN_STEPS",
    "check_qdq_fusion",
    "check_qdq_parity",
    "choose_qdq_profile",
    "export_qdq",
    "ort_session",
    "packed_weight_bytes",
]

INPUT_NAME = "input"
OUTPUT_NAME = "logits"
# Integer kernels ORT's QDQ transformers produce on CPU.
INT8_KERNELS = ("QLinearConv", "ConvInteger", "QLinearMatMul", "MatMulInteger", "QGemm", "MatMulIntegerToFloat", "DynamicQuantizeMatMul")
# Parity tolerance in steps of the logits' quantizer (its scale, ``step``). The QDQ graph computes
# what the eval-mode fake-quant model computes, but not bit for bit: conv sums differ in float
# rounding order (torch vs ORT) and ORT's integer kernels (QLinearConv, QLinearAdd, QGemm)
# requantize each layer with fixed-point multipliers and their own rounding. Either moves a value
# that sits on a rounding boundary by one step in that layer, and the flips spread through the
# layers after it. Measured on ResNet-20 and MobileNetV2 trained on digits (269 validation
# images, w8/w2/w1, both profiles): max error 2-12 steps, mean 0.02-0.92 steps, top-1 agreement
# >= 0.996. The bounds are about twice the worst of those; a wrong graph (other weights, a
# missing quantizer, a shifted zero point) is off by tens of steps on average.
PARITY_MAX_STEPS = 24.0
PARITY_MEAN_STEPS = 2.0



def _insert_before(graph, new_nodes: dict) -> None:
    """Put ``new_nodes[i]`` (a list of nodes) in front of node ``i``, keeping the graph topologically sorted."""
    if not new_nodes:
        return
    nodes = []
    for idx, node in enumerate(graph.node):
        nodes.extend(new_nodes.get(idx, []))
        nodes.append(node)
    del graph.node[:]
    graph.node.extend(nodes)

def _translation_table() -> dict:
    import torch.ao.quantization.fx._decomposed  # noqa: F401  (registers the ops)
    from onnxscript import ir
    from onnxscript import opset18 as op


    def _scalars(scale: float, zero_point: int, quant_min: int):
        s = op.Constant(value=ir.tensor(np.array(scale, dtype=np.float32)))
        z = op.Constant(value=ir.tensor(np.array(zero_point, dtype=np.int8 if quant_min < 0 else np.uint8)))
        return s, z

    def quantize_per_tensor(input, scale: float, zero_point: int, quant_min: int, quant_max: int, dtype):  # noqa: A002
        s, z = _scalars(scale, zero_point, quant_min)
        return op.QuantizeLinear(input, s, z)

    def dequantize_per_tensor(input, scale: float, zero_point: int, quant_min: int, quant_max: int, dtype, out_dtype=None):  # noqa: A002
        s, z = _scalars(scale, zero_point, quant_min)
        return op.DequantizeLinear(input, s, z)

    def dequantize_per_channel(input, scales, zero_points, axis: int, quant_min: int, quant_max: int, dtype, out_dtype=None):  # noqa: A002
        # symmetric: zero point 0, but spelled out -- ORT's Gemm -> QGemm action wants the input
        zp = op.Cast(zero_points, to=ir.DataType.INT8)
        return op.DequantizeLinear(input, scales, zp, axis=axis)

    qd = torch.ops.quantized_decomposed
    return {
        qd.quantize_per_tensor.default: quantize_per_tensor,
        qd.dequantize_per_tensor.default: dequantize_per_tensor,
        qd.dequantize_per_channel.default: dequantize_per_channel,
    }


def _initializers(graph) -> dict[str, Any]:
    return {i.name: i for i in graph.initializer}


def _const_value(name: str, inits: dict[str, Any], consts: dict[str, np.ndarray]) -> np.ndarray | None:
    from onnx import numpy_helper

    if name in inits:
        return numpy_helper.to_array(inits[name])
    return consts.get(name)


def _quantize_biases(model) -> int:
    """Rewrite each float bias of a Conv/Gemm fed by DQ(x) and DQ(W) to DQ(int32 bias, s_x * s_w)."""
    import onnx
    from onnx import helper, numpy_helper

    graph = model.graph
    inits = _initializers(graph)
    consts: dict[str, np.ndarray] = {}
    for n in graph.node:
        if n.op_type == "Constant":
            for a in n.attribute:
                if a.name == "value":
                    consts[n.output[0]] = numpy_helper.to_array(a.t)
    producer = {o: n for n in graph.node for o in n.output}
    new_nodes: dict[int, list] = {}
    done = 0
    for idx, node in enumerate(graph.node):
        if node.op_type not in ("Conv", "Gemm") or len(node.input) < 3 or not node.input[2]:
            continue
        if node.op_type == "Gemm" and any(a.name == "transA" and a.i for a in node.attribute):
            continue
        dq_x, dq_w = producer.get(node.input[0]), producer.get(node.input[1])
        if dq_x is None or dq_w is None or dq_x.op_type != "DequantizeLinear" or dq_w.op_type != "DequantizeLinear":
            continue
        bias = _const_value(node.input[2], inits, consts)
        s_x = _const_value(dq_x.input[1], inits, consts)
        s_w = _const_value(dq_w.input[1], inits, consts)
        if bias is None or s_x is None or s_w is None or s_x.size != 1:
            continue
        s_b = (np.float32(s_x.reshape(())) * s_w.astype(np.float32).reshape(-1)).astype(np.float32)
        if s_b.size == 1:
            s_b = np.full(bias.shape, s_b.reshape(()), np.float32)
        q = np.round(bias.astype(np.float32) / s_b)
        if np.abs(q).max(initial=0) >= 2**31 - 1:
            raise MetaedgeError(f"bias of {node.name or node.op_type} overflows int32 at scale s_x*s_w", "recalibrate: an activation scale is degenerate")
        base = (node.name or f"{node.op_type}_{idx}").replace("/", "_")
        q_name, s_name, o_name = f"{base}.bias_int32", f"{base}.bias_scale", f"{base}.bias_dq"
        graph.initializer.extend([numpy_helper.from_array(q.astype(np.int32), q_name), numpy_helper.from_array(s_b, s_name)])
        new_nodes[idx] = [helper.make_node("DequantizeLinear", [q_name, s_name], [o_name], name=f"{base}.bias_dequant", axis=0)]
        node.input[2] = o_name
        done += 1
    _insert_before(graph, new_nodes)
    # drop float bias initializers nobody reads any more
    used = {i for n in graph.node for i in n.input}
    keep = [i for i in graph.initializer if i.name in used or i.name in {o.name for o in graph.output}]
    del graph.initializer[:]
    graph.initializer.extend(keep)
    onnx.checker.check_model(model)
    return done


def packed_weight_bytes(qmodel: nn.Module) -> dict[str, Any]:
    """Bytes of the quantized layers' weights bit-packed at their k bits, plus fp32 per-channel
    scales and int32 biases (BN-folded layers always have one); ``layers``: one row per layer."""
    from metaedge.compress.metaquant.qat import quant_layers

    weights = scales = biases = 0
    for _, layer in quant_layers(qmodel):
        weights += math.ceil(layer.wq.bits * layer.weight.numel() / 8)
        scales += 4 * layer.weight.shape[0]
        biases += 4 * layer.weight.shape[0] if layer.has_bias() else 0
    return {"weights": weights, "scales": scales, "biases": biases, "total": weights + scales + biases}


def _dedicate_pairs(model) -> int:
    """Give every consumer of a Q -> DQ pair its own copy of the pair (TensorRT fuses a DQ into
    one consumer); returns how many pairs were added."""
    graph = model.graph
    producer = {o: n for n in graph.node for o in n.output}
    consumers: dict[str, list] = {}
    for n in graph.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    outputs = {o.name for o in graph.output}
    extra: dict[int, list] = {}
    index = {id(n): k for k, n in enumerate(graph.node)}
    added = 0
    for dq in [n for n in graph.node if n.op_type == "DequantizeLinear"]:
        q = producer.get(dq.input[0])
        if q is None or q.op_type != "QuantizeLinear":
            continue
        users = consumers.get(dq.output[0], [])
        keep_first = dq.output[0] not in outputs  # a graph output keeps the original pair
        for j, user in enumerate(users):
            if keep_first and j == 0:
                continue
            tag = f"{dq.output[0]}.pair{j}"
            q2 = copy.deepcopy(q)
            q2.name, q2.output[0] = f"{q.name or 'q'}.pair{j}", f"{tag}.q"
            dq2 = copy.deepcopy(dq)
            dq2.name, dq2.input[0], dq2.output[0] = f"{dq.name or 'dq'}.pair{j}", q2.output[0], tag
            for k, name in enumerate(user.input):
                if name == dq.output[0]:
                    user.input[k] = tag
            extra.setdefault(index[id(dq)], []).extend([q2, dq2])
            added += 1
    if extra:
        nodes = []
        for k, n in enumerate(graph.node):
            nodes.append(n)
            nodes.extend(extra.get(k, []))
        del graph.node[:]
        graph.node.extend(nodes)
    # a Q shared by several DQs: one Q per DQ
    consumers = {}
    for n in graph.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    extra, nodes = {}, list(graph.node)
    for k, q in enumerate(nodes):
        if q.op_type != "QuantizeLinear":
            continue
        for j, dq in enumerate(consumers.get(q.output[0], [])[1:], start=1):
            q2 = copy.deepcopy(q)
            q2.name, q2.output[0] = f"{q.name or 'q'}.split{j}", f"{q.output[0]}.split{j}"
            dq.input[0] = q2.output[0]
            extra.setdefault(k, []).append(q2)
            added += 1
    if extra:
        del graph.node[:]
        graph.node.extend([m for k, n in enumerate(nodes) for m in (n, *extra.get(k, []))])
    return added


def _to_tensorrt(model) -> dict[str, int]:
    """Rewrite the exporter's graph to the tensorrt profile (in place): float weights through Q -> DQ,
    explicit INT8 zero points on every weight pair, one Q/DQ pair per consumer."""
    import onnx
    from onnx import helper, numpy_helper

    graph = model.graph
    inits = _initializers(graph)
    new_nodes: dict[int, list] = {}
    weights = 0
    for idx, node in enumerate(graph.node):
        if node.op_type != "DequantizeLinear" or node.input[0] not in inits:
            continue
        init = inits[node.input[0]]
        if init.data_type != onnx.TensorProto.INT8:
            raise MetaedgeError(f"DequantizeLinear {node.name} reads a {onnx.TensorProto.DataType.Name(init.data_type)} constant", "this export path only writes int8 weights; report a bug")
        q = numpy_helper.to_array(init).astype(np.float32)
        scale = numpy_helper.to_array(inits[node.input[1]]).astype(np.float32)
        axis = next((a.i for a in node.attribute if a.name == "axis"), 1)
        shape = [1] * q.ndim
        if scale.size > 1:
            shape[axis] = scale.size
        w = (q * scale.reshape(shape)).astype(np.float32)
        base = init.name.replace("/", "_")
        w_name, zp_name, q_name = f"{base}.float", f"{base}.zero_point", f"{base}.quantized"
        graph.initializer.extend([numpy_helper.from_array(w, w_name), numpy_helper.from_array(np.zeros(scale.shape, np.int8), zp_name)])
        attrs = {"axis": axis} if scale.ndim >= 1 else {}  # a 1-D scale (even of one channel) is per-axis
        new_nodes[idx] = [helper.make_node("QuantizeLinear", [w_name, node.input[1], zp_name], [q_name], name=f"{base}.quantize", **attrs)]
        node.input[0] = q_name
        if len(node.input) > 2:
            node.input[2] = zp_name
        else:
            node.input.append(zp_name)
        weights += 1
    _insert_before(graph, new_nodes)
    pairs = _dedicate_pairs(model)
    used = {i for n in graph.node for i in n.input}
    keep = [i for i in graph.initializer if i.name in used]
    del graph.initializer[:]
    graph.initializer.extend(keep)
    onnx.checker.check_model(model)
    return {"float_weights": weights, "dedicated_pairs_added": pairs}


def _wide_weights(model, limit: int = 64) -> list[str]:
    """Integer weight initializers with levels beyond +-``limit``: ORT's x86 u8s8 kernels can
    saturate on them (see metaedge.compress.metaquant.profiles); the ort profile avoids them."""
    import onnx
    from onnx import numpy_helper

    return [i.name for i in model.graph.initializer
            if i.data_type == onnx.TensorProto.INT8 and len(i.dims) >= 2 and np.abs(numpy_helper.to_array(i).astype(np.int16)).max(initial=0) > limit]


def _model_profile(qmodel: nn.Module, profile: str | None) -> str:
    """The profile to write: the one the model was prepared for, checked against ``profile``."""
    from metaedge.compress.metaquant.profiles import get_profile
    from metaedge.compress.metaquant.qat import act_quantizers

    prepared = getattr(qmodel, "qdq_profile", "ort")
    name = get_profile(profile or prepared).name
    if name == "tensorrt":
        asym = [a for a in act_quantizers(qmodel) if not a.symmetric]
        if asym:
            raise MetaedgeError(
                f"the model was prepared for the {prepared} profile ({len(asym)} uint8 activation quantizers), not for tensorrt",
                "quantize with profile 'tensorrt' (--quant-profile tensorrt): TensorRT needs zero-point-0 activations from training on",
            )
    return name


def export_qdq(qmodel: nn.Module, example_input: torch.Tensor, path: Path | str, calib=None, opset: int = 18, profile: str | None = None) -> dict[str, Any]:
    """Write ``qmodel`` (a prepared, calibrated fake-quant model) as QDQ ONNX to ``path`` atomically.

    ``profile``: ``ort`` or ``tensorrt``; default the one the model was prepared for (a model
    prepared for ``ort`` cannot be written as ``tensorrt``: its activations have zero points).
    ``calib``: optional iterable of input batches; when given, the activation observers are run on
    it first (for a model that was prepared but never calibrated). Returns an info dict: profile,
    node counts, int8 weight initializers, per-layer bits and packed bytes at k bits, and for
    ``tensorrt`` the placement-rule report (the export is refused when a rule fails).
    """
    import onnx

    from metaedge.compress.metaquant.qat import act_quantizers, calibrate, layer_table, quant_layers, set_export_mode
    from metaedge.deploy.trt_qdq_rules import require_tensorrt_qdq

    layers = quant_layers(qmodel)
    if not layers:
        raise MetaedgeError("export_qdq got a model without quantized layers", "pass the model returned by quantize_model (QuantResult.model)")
    if calib is not None:
        calibrate(qmodel, calib, max_batches=10**9)
    if any(not bool(a.initialized) for a in act_quantizers(qmodel)):
        raise MetaedgeError("activation quantizers were never calibrated", "pass calib=<batches> or run quantize_model first")
    profile = _model_profile(qmodel, profile)
    path = Path(path)
    qmodel.eval()
    example = example_input[:1].contiguous().float()
    batch = torch.export.Dim("batch", min=1, max=4096)
    set_export_mode(qmodel, True)
    sink = io.StringIO()
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(sink), contextlib.redirect_stderr(sink):
            warnings.simplefilter("ignore")
            logging.getLogger("torch.onnx").setLevel(logging.ERROR)
            program = torch.onnx.export(
                qmodel, (example,), dynamo=True, input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                dynamic_shapes=({0: batch},), opset_version=opset, optimize=True, verbose=False,
                custom_translation_table=_translation_table(),
            )
    except Exception as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise MetaedgeError(f"QDQ export failed ({first[:200]})", "the model must be traceable by torch.export; see the exporter's trace with --debug") from exc
    finally:
        set_export_mode(qmodel, False)
    proto = program.model_proto
    biases, rewrite, trt = 0, {}, None
    if profile == "ort":
        biases = _quantize_biases(proto)
        rewrite = {"saturation_risk_weights": _wide_weights(proto)}
    else:
        rewrite = _to_tensorrt(proto)
        trt = require_tensorrt_qdq(proto, f"the tensorrt-profile export {path.name}").to_dict()
    with atomic_path(path) as tmp:
        onnx.save_model(proto, str(tmp))
        onnx.checker.check_model(str(tmp))
    counts = Counter(n.op_type for n in proto.graph.node)
    int8_inits = sum(1 for i in proto.graph.initializer if i.data_type == onnx.TensorProto.INT8 and len(i.dims) >= 2)  # not the zero points
    packed = packed_weight_bytes(qmodel)
    info = {
        "path": str(path),
        "profile": profile,
        "opset": opset,
        "nodes": dict(sorted(counts.items())),
        "quantized_layers": len(layers),
        "int8_weight_initializers": int8_inits,
        "int32_biases": biases,
        "weight_bits": {name: layer.wq.bits for name, layer in layers},
        "weight_quantizers": {name: layer.wq.kind for name, layer in layers},
        "packed_bytes": packed["total"],
        "packed": packed,
        "layers": layer_table(qmodel),
        "onnx_bytes": path.stat().st_size,
    }
    info["rewrite"] = rewrite
    if profile == "tensorrt":
        info["tensorrt_rules"] = trt
    return info


def ort_session(onnx_path: Path | str, profile: str = "ort"):
    """ORT CPU session, one thread, every optimisation on -- except, for the tensorrt profile, the
    int8 -> uint8 + 128 activation conversion ORT applies on x86 without VNNI: its u8s8 kernels
    (VPMADDUBSW) saturate 16-bit pair sums for activations near 255, which is ORT's arithmetic,
    not the graph's (TensorRT accumulates int8 x int8 in int32)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    disabled = ["QDQS8ToU8Transformer"] if profile == "tensorrt" else []
    return ort.InferenceSession(str(onnx_path), opts, providers=["CPUExecutionProvider"], disabled_optimizers=disabled)


def _output_step(qmodel: nn.Module, ref: np.ndarray) -> tuple[float, str]:
    """The logits' quantization step: the scale of the quantizer on the model output, else an
    8-bit step of the logits' range."""
    from metaedge.compress.metaquant.qat import act_quantizers

    graph = getattr(qmodel, "graph", None)
    if graph is not None:
        out = next((n for n in graph.nodes if n.op == "output"), None)
        src = out.args[0] if out is not None else None
        if getattr(src, "op", None) == "call_module":
            mod = qmodel.get_submodule(str(src.target))
            if mod in act_quantizers(qmodel):
                return mod.qparams()[0], "output quantizer scale"
    return max(1e-6, float(np.abs(ref).max()) / 127.0), "max|logit| / 127"


def check_qdq_parity(
    qmodel: nn.Module,
    onnx_path: Path | str,
    inputs: torch.Tensor,
    atol: float | None = None,
    min_top1_agreement: float = 0.99,
    raise_on_fail: bool = True,
    max_steps: float = PARITY_MAX_STEPS,
    mean_steps: float = PARITY_MEAN_STEPS,
    profile: str | None = None,
) -> dict[str, Any]:
    """ONNX Runtime vs the PyTorch fake-quant model on real inputs.

    Tolerance in steps of the logits' quantizer (``step``): the max error may be ``max_steps``
    steps and the mean error ``mean_steps`` (see :data:`PARITY_MAX_STEPS` for why), and the top-1
    decisions must agree on ``min_top1_agreement`` of the inputs. ``atol`` replaces the max bound
    by an absolute one. ``profile`` (default: the model's) picks the ORT session (see ort_session).
    """
    from metaedge.deploy.export import ParityError, compare_logits

    profile = profile or getattr(qmodel, "qdq_profile", "ort")
    x = inputs.contiguous().float()
    with torch.no_grad():
        ref = qmodel.eval()(x).numpy()
    sess = ort_session(onnx_path, profile)
    name = sess.get_inputs()[0].name
    out = np.concatenate([sess.run(None, {name: x[i : i + 64].numpy()})[0] for i in range(0, len(x), 64)])
    max_err, mean_err, agree = compare_logits(ref, out)
    step, step_from = _output_step(qmodel, ref)
    max_tol = float(atol) if atol is not None else max_steps * step
    mean_tol = mean_steps * step
    passed = max_err <= max_tol and mean_err <= mean_tol and agree >= min_top1_agreement
    report = {
        "max_abs_err": max_err, "mean_abs_err": mean_err, "top1_agreement": agree, "samples": len(x),
        "step": step, "step_from": step_from, "max_err_steps": max_err / step, "mean_err_steps": mean_err / step,
        "atol": max_tol, "mean_atol": mean_tol, "max_steps": None if atol is not None else max_steps, "mean_steps": mean_steps,
        "min_top1_agreement": min_top1_agreement, "profile": profile, "passed": passed,
    }
    if raise_on_fail and not passed:
        raise ParityError(
            f"QDQ parity gate failed for {onnx_path}: max abs error {max_err:.3g} ({max_err / step:.1f} steps, tolerance {max_tol / step:.1f}), "
            f"mean {mean_err:.3g} ({mean_err / step:.2f} steps, tolerance {mean_steps:g}), top-1 agreement {agree:.4f} (need {min_top1_agreement:g})",
            "the QDQ ONNX does not compute what the fake-quant model does; re-export, or report a bug with the model",
        )
    return report


def check_qdq_fusion(onnx_path: Path | str, optimized_path: Path | str | None = None) -> dict[str, Any]:
    """Let ORT optimise the QDQ graph (ORT_ENABLE_ALL) and count what is left.

    ``fused`` is True when int8 kernels appear and no float Conv/Gemm/MatMul survived.
    """
    import tempfile

    import onnx
    import onnxruntime as ort

    with tempfile.TemporaryDirectory() as tmp:
        out = Path(optimized_path) if optimized_path else Path(tmp) / "optimized.onnx"
        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.intra_op_num_threads = 1
        opts.log_severity_level = 3  # ORT warns that an ENABLE_ALL graph is hardware-specific: we only inspect it
        opts.optimized_model_filepath = str(out)
        ort.InferenceSession(str(onnx_path), opts, providers=["CPUExecutionProvider"])
        counts = Counter(n.op_type for n in onnx.load(str(out)).graph.node)
    int8 = {k: v for k, v in counts.items() if k in INT8_KERNELS}
    float_ops = {k: v for k, v in counts.items() if k in ("Conv", "FusedConv", "Gemm", "MatMul", "FusedGemm", "NhwcConv")}
    return {"nodes": dict(sorted(counts.items())), "int8_kernels": int8, "float_compute": float_ops, "fused": bool(int8) and not float_ops}


def choose_qdq_profile(requested: str, backends) -> tuple[str, str]:
    """(profile, why) for a model that will be compiled with ``backends`` (names, all targets
    together). ``requested`` ``ort`` / ``tensorrt`` is taken as given; ``auto`` picks the profile the
    strictest backend needs -- ``tensorrt`` as soon as one backend asks for it (TensorRT refuses the
    ort graph, while ORT and TVM run the tensorrt graph, only slower in ORT) -- else ``ort``."""
    from metaedge.compress.metaquant.profiles import get_profile

    req = str(requested or "auto").lower()
    if req != "auto":
        return get_profile(req).name, f"requested {req}"
    from metaedge.deploy.backends.base import get_backend

    for name in backends:
        try:
            wanted = getattr(get_backend(name), "qdq_profile", "ort")
        except MetaedgeError:
            continue  # unknown backends are reported by the compile stage
        if wanted != "ort":
            return get_profile(wanted).name, f"backend {name} needs it"
    return "ort", "no backend needs another profile (ONNX Runtime's fastest graph)"
