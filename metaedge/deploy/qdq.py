"""QDQ ONNX export of a fake-quant (QAT) model, its parity gate, and the int8-fusion check.

The fake-quant model from :mod:`metaedge.compress.metaquant` already *is* the deployed graph (BN
folded, quantizers at the tensors that will carry Q/DQ). For export every quantizer switches to
its export form: activations call torch's ``quantized_decomposed`` quantize/dequantize ops, weights
are int8 constants fed to ``dequantize_per_channel``. The dynamo exporter turns those into
QuantizeLinear/DequantizeLinear through a small translation table (ours: per-tensor scale and
zero point as scalar initializers, per-channel DequantizeLinear on axis 0 without a Clip).
A graph pass then puts every Conv/Gemm bias on the int32 grid ``s_x * s_w`` behind its own
DequantizeLinear -- ONNX Runtime's QDQ selectors only fuse a node whose every input comes from a
DQ, and QLinearConv adds an int32 bias.

Resulting pattern per layer: ``x -> Q -> DQ -> Conv(DQ(int8 W, axis 0), DQ(int32 b)) -> [Relu/Clip]
-> Q -> DQ -> ...``; ORT rewrites it to QLinearConv (removing the Relu/Clip when the uint8 zero
point makes it redundant), TensorRT's explicit-quantization mode fuses the same Q/DQ pairs (with
``act_symmetric=True``: TensorRT needs zero point 0). The two runtimes want different activation
types: with symmetric int8 activations ORT cannot drop a ReLU/Clip between a conv and its output Q
(its fusion needs zero point == qmin), so those convs stay FusedConv in float -- uint8 (default)
for ORT/CPU, ``act_symmetric=True`` for TensorRT. k < 8-bit weights stay on their k-bit grid in
int8 containers; ``packed_bytes`` reports what they occupy bit-packed at k bits plus scales.
"""
from __future__ import annotations

import contextlib
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

__all__ = ["INT8_KERNELS", "check_qdq_fusion", "check_qdq_parity", "export_qdq", "packed_weight_bytes"]

INPUT_NAME = "input"
OUTPUT_NAME = "logits"
# Integer kernels ORT's QDQ transformers produce on CPU.
INT8_KERNELS = ("QLinearConv", "ConvInteger", "QLinearMatMul", "MatMulInteger", "QGemm", "MatMulIntegerToFloat", "DynamicQuantizeMatMul")


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
    if new_nodes:
        nodes = []
        for idx, node in enumerate(graph.node):
            nodes.extend(new_nodes.get(idx, []))
            nodes.append(node)
        del graph.node[:]
        graph.node.extend(nodes)
    # drop float bias initializers nobody reads any more
    used = {i for n in graph.node for i in n.input}
    keep = [i for i in graph.initializer if i.name in used or i.name in {o.name for o in graph.output}]
    del graph.initializer[:]
    graph.initializer.extend(keep)
    onnx.checker.check_model(model)
    return done


def packed_weight_bytes(qmodel: nn.Module) -> dict[str, int]:
    """Bytes of the quantized layers' weights bit-packed at their k bits, plus fp32 scales and int32 biases."""
    from metaedge.compress.metaquant.qat import quant_layers

    weights = scales = biases = 0
    for _, layer in quant_layers(qmodel):
        weights += math.ceil(layer.wq.bits * layer.weight.numel() / 8)
        scales += 4 * layer.weight.shape[0]
        biases += 4 * layer.weight.shape[0] if layer.bias is not None else 0
    return {"weights": weights, "scales": scales, "biases": biases, "total": weights + scales + biases}


def export_qdq(qmodel: nn.Module, example_input: torch.Tensor, path: Path | str, calib=None, opset: int = 18) -> dict[str, Any]:
    """Write ``qmodel`` (a prepared, calibrated fake-quant model) as QDQ ONNX to ``path`` atomically.

    ``calib``: optional iterable of input batches; when given, the activation observers are run on
    it first (for a model that was prepared but never calibrated). Returns an info dict: node
    counts, int8 weight initializers, packed_bytes at k bits, weight_bits per layer.
    """
    import onnx

    from metaedge.compress.metaquant.qat import act_quantizers, calibrate, quant_layers, set_export_mode

    layers = quant_layers(qmodel)
    if not layers:
        raise MetaedgeError("export_qdq got a model without quantized layers", "pass the model returned by quantize_model (QuantResult.model)")
    if calib is not None:
        calibrate(qmodel, calib, max_batches=10**9)
    if any(not bool(a.initialized) for a in act_quantizers(qmodel)):
        raise MetaedgeError("activation quantizers were never calibrated", "pass calib=<batches> or run quantize_model first")
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
    biases = _quantize_biases(proto)
    with atomic_path(path) as tmp:
        onnx.save_model(proto, str(tmp))
        onnx.checker.check_model(str(tmp))
    counts = Counter(n.op_type for n in proto.graph.node)
    int8_inits = sum(1 for i in proto.graph.initializer if i.data_type == onnx.TensorProto.INT8 and len(i.dims) >= 2)  # not the zero points
    packed = packed_weight_bytes(qmodel)
    return {
        "path": str(path),
        "opset": opset,
        "nodes": dict(sorted(counts.items())),
        "quantized_layers": len(layers),
        "int8_weight_initializers": int8_inits,
        "int32_biases": biases,
        "weight_bits": {name: layer.wq.bits for name, layer in layers},
        "weight_quantizers": {name: layer.wq.kind for name, layer in layers},
        "packed_bytes": packed["total"],
        "packed": packed,
        "onnx_bytes": path.stat().st_size,
    }


def check_qdq_parity(
    qmodel: nn.Module, onnx_path: Path | str, inputs: torch.Tensor, atol: float | None = None, min_top1_agreement: float = 0.99, raise_on_fail: bool = True
) -> dict[str, Any]:
    """ONNX Runtime vs the PyTorch fake-quant model on real inputs.

    Default tolerance: two activation quantization steps of the logits' range -- ORT's integer
    kernels requantize with their own rounding (fixed-point multipliers), so a value sitting on a
    rounding boundary can move one step in some layers; anything larger means the graph is wrong.
    """
    from metaedge.deploy.backends.onnxruntime import OrtRunner
    from metaedge.deploy.export import ParityError, compare_logits

    x = inputs.contiguous().float()
    with torch.no_grad():
        ref = qmodel.eval()(x).numpy()
    runner = OrtRunner(onnx_path, threads=1)
    out = np.concatenate([runner.run(x[i : i + 64].numpy()) for i in range(0, len(x), 64)])
    max_err, mean_err, agree = compare_logits(ref, out)
    if atol is None:
        atol = max(1e-3, 0.05 * float(np.abs(ref).max()))
    passed = max_err <= atol and agree >= min_top1_agreement
    report = {"max_abs_err": max_err, "mean_abs_err": mean_err, "top1_agreement": agree, "samples": len(x), "atol": atol, "min_top1_agreement": min_top1_agreement, "passed": passed}
    if raise_on_fail and not passed:
        raise ParityError(
            f"QDQ parity gate failed for {onnx_path}: max abs error {max_err:.3g} (tolerance {atol:.3g}), top-1 agreement {agree:.4f} (need {min_top1_agreement:g})",
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
