"""ONNX Runtime backend: the reference runtime every other artifact is checked against."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import numpy as np

from metaedge.deploy.backends.base import Backend, CompiledModel, register_backend

__all__ = ["OnnxRuntimeBackend", "OrtRunner", "make_session"]


def make_session(onnx_path: Path | str, threads: int = 1):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(str(onnx_path), opts, providers=["CPUExecutionProvider"])


class OrtRunner:
    def __init__(self, onnx_path: Path | str, threads: int = 1) -> None:
        self.session = make_session(onnx_path, threads)
        self.input_name = self.session.get_inputs()[0].name

    def run(self, x: np.ndarray) -> np.ndarray:
        return self.session.run(None, {self.input_name: np.ascontiguousarray(x, dtype=np.float32)})[0]


@register_backend
class OnnxRuntimeBackend(Backend):
    name = "onnxruntime"

    def unavailable_reason(self) -> str | None:
        try:
            import onnxruntime  # noqa: F401
        except ImportError:
            return "onnxruntime is not installed; pip install onnxruntime"
        return None

    def compile(self, onnx_path: Path, target: Any, out_dir: Path) -> CompiledModel:
        # ORT compiles at load time; the artifact is the ONNX file itself.
        out_dir.mkdir(parents=True, exist_ok=True)
        dest = out_dir / "model.onnx"
        if Path(onnx_path).resolve() != dest.resolve():
            shutil.copyfile(onnx_path, dest)
        runner = OrtRunner(dest)
        inp = runner.session.get_inputs()[0]
        shape = tuple(d if isinstance(d, int) else 1 for d in inp.shape)
        return CompiledModel(self.name, getattr(target, "name", str(target)), dest, inp.name, shape)

    def load(self, compiled: CompiledModel, threads: int = 1) -> OrtRunner:
        return OrtRunner(compiled.path, threads)
