"""Post-training quantization baseline: ONNX Runtime's ``quantize_static`` on the fp32 ONNX.

QDQ format, int8 per-channel weights, uint8 activations (ORT's defaults, its fast CPU path),
calibrated with MinMax on the same training batches the QAT path calibrates with. The fp32 model
is pre-processed first (``quant_pre_process``: shape inference + ORT graph optimisation, which
folds BN), as ORT recommends.
"""
from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Iterable, Iterator

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


def quantize_ptq(fp32_onnx: Path | str, out_path: Path | str, batches: Iterable[np.ndarray], per_channel: bool = True, symmetric_activations: bool = False) -> Path:
    """Write an int8 QDQ model of ``fp32_onnx`` to ``out_path`` (atomically) and return the path."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    import onnx

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
                str(pre), str(out_tmp), reader,
                quant_format=QuantFormat.QDQ,
                per_channel=per_channel,
                activation_type=QuantType.QInt8 if symmetric_activations else QuantType.QUInt8,
                weight_type=QuantType.QInt8,
                calibrate_method=CalibrationMethod.MinMax,
                extra_options={"ActivationSymmetric": symmetric_activations},
            )
    return out_path
