"""QDQ ONNX export of a fake-quant (QAT) model in the ``ort`` or ``tensorrt`` profile, and its parity gate.

The fake-quant model from :mod:`metaedge.compress.metaquant` already *is* the deployed graph (BN
folded in its eval form, quantizers at the tensors that will carry Q/DQ). For export every
quantizer switches to its export form: activations call torch's ``quantized_decomposed``
quantize/dequantize ops, weights are int8 constants fed to ``dequantize_per_channel``. The dynamo
exporter turns those into QuantizeLinear/DequantizeLinear through a small translation table (ours:
per-tensor scale and zero point as scalar initializers, per-channel DequantizeLinear on axis 0
without a Clip); :mod:`metaedge.compress.metaquant.qdq_graph` then rewrites the graph to the
profile (see :mod:`metaedge.qdq.profiles`), and a tensorrt export must pass
:func:`metaedge.qdq.tensorrt_rules.require_tensorrt_qdq`.

k < 8-bit weights stay on their k-bit grid in int8 containers; ``packed_bytes`` reports what they
occupy bit-packed at k bits plus scales and biases, per layer and in total.

This is the torch side of the QDQ path and lives with the quantizers it reads; what a deployment
does with the file (ORT fusion check, choice of profile per backend) is in ``metaedge.deploy.qdq``.
"""

from __future__ import annotations

import contextlib
import io
import logging
import math
import warnings
from collections import Counter
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
import torch.nn as nn

from metaedge.artifacts import atomic_path
from metaedge.compress.metaquant.qat import act_quantizers, calibrate, layer_table, quant_layers, set_export_mode
from metaedge.compress.metaquant.qdq_graph import quantize_biases, to_tensorrt, wide_weights
from metaedge.errors import MetaedgeError
from metaedge.onnx_graph import INPUT_NAME, OUTPUT_NAME
from metaedge.parity import QUANTIZED, Tolerance, compare
from metaedge.qdq.profiles import get_profile
from metaedge.qdq.tensorrt_rules import require_tensorrt_qdq

__all__ = ["check_qdq_parity", "export_qdq", "ort_session", "packed_weight_bytes"]


def _translation_table() -> dict:
    import torch.ao.quantization.fx._decomposed  # noqa: F401  (registers the ops)
    from onnxscript import ir
    from onnxscript import opset18 as op

    def _scalars(scale: float, zero_point: int, quant_min: int):
        # onnxscript's opset stubs say TensorProto; the exporter's tracer takes the ir.Tensor
        s = op.Constant(value=ir.tensor(np.array(scale, dtype=np.float32)))  # type: ignore[arg-type]
        z = op.Constant(value=ir.tensor(np.array(zero_point, dtype=np.int8 if quant_min < 0 else np.uint8)))  # type: ignore[arg-type]
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


def packed_weight_bytes(qmodel: nn.Module) -> dict[str, Any]:
    """Bytes of the quantized layers' weights bit-packed at their k bits, plus fp32 per-channel
    scales and int32 biases (BN-folded layers always have one); ``layers``: one row per layer."""

    weights = scales = biases = 0
    for _, layer in quant_layers(qmodel):
        weights += math.ceil(layer.wq.bits * layer.weight.numel() / 8)
        scales += 4 * layer.weight.shape[0]
        biases += 4 * layer.weight.shape[0] if layer.has_bias() else 0
    return {"weights": weights, "scales": scales, "biases": biases, "total": weights + scales + biases}


def _model_profile(qmodel: nn.Module, profile: str | None) -> str:
    """The profile to write: the one the model was prepared for, checked against ``profile``."""

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
                qmodel,
                (example,),
                dynamo=True,
                input_names=[INPUT_NAME],
                output_names=[OUTPUT_NAME],
                dynamic_shapes=({0: batch},),
                opset_version=opset,
                optimize=True,
                verbose=False,
                custom_translation_table=_translation_table(),
            )
    except Exception as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise MetaedgeError(f"QDQ export failed ({first[:200]})", "the model must be traceable by torch.export; see the exporter's trace with --debug") from exc
    finally:
        set_export_mode(qmodel, False)
    assert program is not None  # dynamo=True always returns an ONNXProgram
    proto = program.model_proto
    rewrite: dict[str, Any]
    biases, rewrite, trt = 0, {}, None
    if profile == "ort":
        biases = quantize_biases(proto)
        rewrite = {"saturation_risk_weights": wide_weights(proto)}
    else:
        rewrite = to_tensorrt(proto)
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


def _output_step(qmodel: nn.Module) -> tuple[float | None, str | None]:
    """The logits' quantization step: the scale of the quantizer on the model output, if any (the
    parity rule falls back to an 8-bit step of the logits' range)."""

    graph = getattr(qmodel, "graph", None)
    if graph is not None:
        out = next((n for n in graph.nodes if n.op == "output"), None)
        src = out.args[0] if out is not None else None
        if src is not None and getattr(src, "op", None) == "call_module":
            mod = qmodel.get_submodule(str(src.target))
            if mod in act_quantizers(qmodel):
                return mod.qparams()[0], "output quantizer scale"
    return None, None


def check_qdq_parity(
    qmodel: nn.Module,
    onnx_path: Path | str,
    inputs: torch.Tensor,
    atol: float | None = None,
    min_top1_agreement: float = QUANTIZED.min_top1_agreement,
    raise_on_fail: bool = True,
    max_steps: float = QUANTIZED.max_steps,  # type: ignore[assignment]
    mean_steps: float = QUANTIZED.mean_steps,  # type: ignore[assignment]
    profile: str | None = None,
) -> dict[str, Any]:
    """ONNX Runtime vs the PyTorch fake-quant model on real inputs, under the quantized rule of
    :mod:`metaedge.parity` (errors in steps of the logits' quantizer; ``atol`` replaces the max
    bound by an absolute one). ``profile`` (default: the model's) picks the ORT session (see
    ort_session)."""
    profile = profile or cast(str, getattr(qmodel, "qdq_profile", "ort"))
    x = inputs.contiguous().float()
    with torch.no_grad():
        ref = qmodel.eval()(x).numpy()
    sess = ort_session(onnx_path, profile)
    name = sess.get_inputs()[0].name
    out = np.concatenate([sess.run(None, {name: x[i : i + 64].numpy()})[0] for i in range(0, len(x), 64)])
    step, step_from = _output_step(qmodel)
    tolerance = Tolerance("quantized", atol=atol, max_steps=max_steps, mean_steps=mean_steps, min_top1_agreement=min_top1_agreement)
    report = compare(ref, out, tolerance, step=step, step_from=step_from)
    if raise_on_fail:
        report.require(f"the QDQ graph {onnx_path}", "the QDQ ONNX does not compute what the fake-quant model does; re-export, or report a bug with the model")
    return {**report.to_dict(), "max_steps": None if atol is not None else max_steps, "mean_steps": mean_steps, "profile": profile}
