"""ONNX export with a numeric parity gate against PyTorch.

The model is exported with the dynamo exporter (``torch.onnx.export(dynamo=True)``), a dynamic
batch axis, input ``input`` and output ``logits``, checked with ``onnx.checker`` and written
atomically, weights inside the one file when they fit under protobuf's 2 GB limit. The gate then
runs ONNX Runtime and PyTorch on the same real inputs and judges them by the fp32 rule of
:mod:`metaedge.parity` (``ExportConfig`` carries its tolerance); an export whose outputs disagree
beyond tolerance is refused, so a wrong ONNX never reaches a device.
"""

from __future__ import annotations

import contextlib
import io
import logging
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from metaedge.artifacts import atomic_path
from metaedge.deploy.export_config import ExportConfig
from metaedge.errors import MetaedgeError
from metaedge.onnx_graph import INPUT_NAME, OUTPUT_NAME
from metaedge.parity import ParityReport, compare

__all__ = ["ExportConfig", "check_parity", "export_onnx"]

_PROTOBUF_LIMIT = 2**31 - 1


def export_onnx(model: nn.Module, example_input: torch.Tensor, path: Path | str, config: ExportConfig = ExportConfig()) -> Path:
    import onnx

    path = Path(path)
    model = model.eval().to(memory_format=torch.contiguous_format)  # type: ignore[call-overload]  # Module.to takes memory_format; its stub overloads omit it
    example = example_input[:1].contiguous()
    batch = torch.export.Dim("batch", min=1, max=4096)
    # The exporter is chatty (progress lines, warnings for benign fallbacks): keep the CLI quiet.
    sink = io.StringIO()
    with warnings.catch_warnings(), contextlib.redirect_stdout(sink):
        warnings.simplefilter("ignore")
        logging.getLogger("torch.onnx").setLevel(logging.ERROR)
        try:
            program = torch.onnx.export(
                model,
                (example,),
                dynamo=True,
                input_names=[INPUT_NAME],
                output_names=[OUTPUT_NAME],
                dynamic_shapes=({0: batch},),
                opset_version=config.opset,
                optimize=True,
                verbose=False,
            )
        except Exception as exc:
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise MetaedgeError(
                f"torch.onnx.export failed for this model ({first[:200]})",
                "run with --debug for the exporter's trace; data-dependent control flow must be removed for export",
            ) from exc
    assert program is not None  # dynamo=True always returns an ONNXProgram
    proto = program.model_proto
    too_big = proto.ByteSize() > _PROTOBUF_LIMIT
    with atomic_path(path) as tmp:
        if too_big:  # > 2 GB cannot live in one protobuf: weights go beside it
            onnx.save_model(proto, str(tmp), save_as_external_data=True, location=path.name + ".data")
        else:
            onnx.save_model(proto, str(tmp))
        onnx.checker.check_model(str(tmp))
    return path


def check_parity(
    model: nn.Module, onnx_path: Path | str, inputs: torch.Tensor, config: ExportConfig = ExportConfig(), raise_on_fail: bool = True
) -> ParityReport:
    """Run ONNX Runtime and PyTorch on ``inputs`` (real validation images) and compare logits
    under the fp32 rule of :mod:`metaedge.parity`."""
    from metaedge.deploy.backends.onnxruntime import OrtRunner

    x = inputs[: config.parity_samples].contiguous()
    with torch.no_grad():
        ref = model.eval()(x).numpy()
    runner = OrtRunner(onnx_path, threads=1)
    out = np.concatenate([runner.run(x[i : i + 64].numpy()) for i in range(0, len(x), 64)])
    report = compare(ref, out, config.tolerance)
    if raise_on_fail:
        report.require(
            str(onnx_path), "the ONNX file does not compute what the PyTorch model does; run with --debug, or loosen --parity-atol only if you accept the drift"
        )
    return report
