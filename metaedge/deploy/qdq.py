"""What deployment needs to know about a QDQ model: does ONNX Runtime fuse it into int8 kernels,
and which export profile do the chosen backends need.

The QDQ file itself is written on the torch side (:mod:`metaedge.compress.metaquant.export` for
QAT models, :mod:`metaedge.compress.metaquant.ptq` for post-training int8); the profiles and
TensorRT's placement rules both sides read are in :mod:`metaedge.qdq`.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

from metaedge.errors import MetaedgeError
from metaedge.qdq.profiles import get_profile

__all__ = ["INT8_KERNELS", "check_qdq_fusion", "choose_qdq_profile"]

# Integer kernels ORT's QDQ transformers produce on CPU.
INT8_KERNELS = ("QLinearConv", "ConvInteger", "QLinearMatMul", "MatMulInteger", "QGemm", "MatMulIntegerToFloat", "DynamicQuantizeMatMul")


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
