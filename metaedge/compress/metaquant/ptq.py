"""Post-training quantization baseline: ONNX Runtime's ``quantize_static`` on the fp32 ONNX.

QDQ format, 8-bit per-channel weights, calibrated with MinMax on the same training batches the QAT
path calibrates with, in one of the two export profiles (see
:mod:`metaedge.qdq.profiles`):

* ``ort``: uint8 activations with zero points; symmetric int8 weights on a 7-bit grid
  (``reduce_range``): a full 8-bit grid can saturate ORT's x86 u8s8 kernels (the same rule as
  the QAT export, see :mod:`metaedge.qdq.profiles`).
* ``tensorrt``: symmetric int8 activations and weights (zero point 0), float weights kept behind
  QuantizeLinear -> DequantizeLinear (``AddQDQPairToWeight``), float biases (``QuantizeBias``
  off), one Q/DQ pair per consumer (``DedicatedQDQPair``) -- ORT's documented TensorRT settings.
  The caller checks the result with :mod:`metaedge.qdq.tensorrt_rules`.

The fp32 model is pre-processed first (``quant_pre_process``: shape inference + ORT graph
optimisation, which folds BN), as ORT recommends.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any, Iterable, Iterator

import numpy as np

from metaedge.artifacts import atomic_path
from metaedge.errors import MetaedgeError

__all__ = ["BatchReader", "quantize_ptq"]


class BatchReader:
    """``onnxruntime.quantization.CalibrationDataReader`` over float32 NCHW batches."""

    def __init__(self, batches: Iterable[np.ndarray], input_name: str = "input") -> None:
        self._batches = [np.ascontiguousarray(b, dtype=np.float32) for b in batches]
        self.input_name = input_name
        self._it: Iterator[np.ndarray] = iter(self._batches)

    def get_next(self) -> dict[str, np.ndarray] | None:
        b = next(self._it, None)
        return None if b is None else {self.input_name: b}

    def rewind(self) -> None:
        self._it = iter(self._batches)

    def __len__(self) -> int:
        return len(self._batches)


def _options(profile: str, symmetric_activations: bool | None) -> tuple[Any, Any, bool, dict[str, Any]]:
    from onnxruntime.quantization import QuantType

    if profile == "tensorrt":
        if symmetric_activations is False:
            raise MetaedgeError("the tensorrt profile needs symmetric activations", "drop symmetric_activations=False or use profile 'ort'")
        return (
            QuantType.QInt8,
            QuantType.QInt8,
            False,
            {
                "ActivationSymmetric": True,
                "WeightSymmetric": True,
                "AddQDQPairToWeight": True,
                "DedicatedQDQPair": True,
                "QuantizeBias": False,
            },
        )
    sym = bool(symmetric_activations)
    return (QuantType.QInt8 if sym else QuantType.QUInt8), QuantType.QInt8, True, {"ActivationSymmetric": sym, "WeightSymmetric": True}


def quantize_ptq(
    fp32_onnx: Path | str,
    out_path: Path | str,
    batches: Iterable[np.ndarray],
    per_channel: bool = True,
    symmetric_activations: bool | None = None,
    profile: str = "ort",
) -> Path:
    """Write an 8-bit QDQ model of ``fp32_onnx`` to ``out_path`` (atomically) and return the path.

    ``profile``: ``ort`` or ``tensorrt`` (see the module docstring). ``symmetric_activations``:
    int8 zero-point-0 activations in the ort profile too (ORT then converts them to uint8 + 128 on
    x86); the tensorrt profile always has them."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    import onnx

    from metaedge.qdq.profiles import get_profile

    act_type, weight_type, reduce_range, extra = _options(get_profile(profile).name, symmetric_activations)
    fp32_onnx, out_path = Path(fp32_onnx), Path(out_path)
    if not fp32_onnx.is_file():
        raise MetaedgeError(f"fp32 ONNX {fp32_onnx} does not exist", "export the fp32 model first")
    input_name = onnx.load(str(fp32_onnx), load_external_data=False).graph.input[0].name
    reader = BatchReader(batches, input_name)
    if len(reader) == 0:
        raise MetaedgeError("PTQ got no calibration batches", "pass at least one training batch")
    with tempfile.TemporaryDirectory() as tmp:
        pre = Path(tmp) / "pre.onnx"
        quant_pre_process(str(fp32_onnx), str(pre), skip_symbolic_shape=True)
        with atomic_path(out_path) as out_tmp:
            quantize_static(
                str(pre),
                str(out_tmp),
                reader,
                quant_format=QuantFormat.QDQ,
                per_channel=per_channel,
                activation_type=act_type,
                weight_type=weight_type,
                reduce_range=reduce_range,
                calibrate_method=CalibrationMethod.MinMax,
                extra_options=extra,
            )
    return out_path
