"""Inference engines the device runtime can open: ONNX Runtime, TVM (Relax VM) and TensorRT.

Each engine maps one validated float32 batch [N, C, H, W] to logits [N, K]. Runtimes are imported
lazily so a device only needs the one it uses. Nothing here imports torch.
"""

from __future__ import annotations

import hashlib
import os
import threading
from pathlib import Path
from typing import Any

import numpy as np

from metaedge.errors import MetaedgeError

__all__ = ["ENGINES", "Engine", "OrtEngine", "TensorRTEngine", "TvmEngine", "open_engine"]


class Engine:
    """Base: ``run`` one batch. ``static_batch`` is set when the artifact only takes batch 1."""

    name = "engine"
    static_batch: int | None = None

    @property
    def batch_limit(self) -> int | None:
        """Largest batch one call runs natively (None: any). Dynamic batching needs more than 1."""
        return self.static_batch

    def __init__(self) -> None:
        self._lock = threading.Lock()

    def run(self, x: np.ndarray) -> np.ndarray:
        if self.static_batch is not None and x.shape[0] != self.static_batch:
            # Static-shape artifacts (TVM builds for [1, C, H, W]): run the batch one sample at a time.
            return np.concatenate([self.run(x[i : i + 1]) for i in range(x.shape[0])], axis=0)
        with self._lock:  # TVM's VM and TensorRT contexts are not thread-safe; ORT overrides
            return self._run(x)

    def _run(self, x: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def describe(self) -> dict[str, Any]:
        return {"backend": self.name}


class OrtEngine(Engine):
    name = "onnxruntime"

    def __init__(self, path: Path, input_name: str, threads: int = 1, providers: list[str] | None = None) -> None:
        super().__init__()
        try:
            import onnxruntime as ort
        except ImportError as exc:
            raise MetaedgeError("onnxruntime is not installed", "pip install onnxruntime") from exc
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        available = ort.get_available_providers()
        wanted = providers or [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in available]
        self.session = ort.InferenceSession(str(path), opts, providers=wanted)
        names = [i.name for i in self.session.get_inputs()]
        # Fall back to the graph's own first input if the manifest name differs (older exports).
        self.input_name = input_name if input_name in names else names[0]
        self.providers = self.session.get_providers()
        self.version = ort.__version__
        dim0 = next(i for i in self.session.get_inputs() if i.name == self.input_name).shape[0]
        # A symbolic/None batch dim was exported dynamic; a fixed int is all the graph takes.
        self._batch_limit = dim0 if isinstance(dim0, int) and dim0 > 0 else None

    @property
    def batch_limit(self) -> int | None:
        return self._batch_limit

    def run(self, x: np.ndarray) -> np.ndarray:
        # InferenceSession.run is thread-safe, so concurrent requests need no lock.
        return self.session.run(None, {self.input_name: x})[0]

    def describe(self) -> dict[str, Any]:
        return {"backend": self.name, "version": self.version, "providers": self.providers}


class TvmEngine(Engine):
    """A Relax ``.so`` built by ``metaedge compile`` (weights bound into the library)."""

    name = "tvm"

    def __init__(self, path: Path, input_shape: tuple[int, ...], static: bool = True) -> None:
        super().__init__()
        try:
            import tvm
            from tvm.runtime.vm import VirtualMachine
        except ImportError as exc:
            raise MetaedgeError("TVM is not installed; the artifact is a TVM library", "pip install apache-tvm") from exc
        self._tvm = tvm
        self.dev = tvm.cpu(0)
        self.vm = VirtualMachine(tvm.runtime.load_module(str(path)), self.dev)
        self.static_batch = input_shape[0] if static else None
        self.version = getattr(tvm, "__version__", "?")

    def _run(self, x: np.ndarray) -> np.ndarray:
        out = self.vm["main"](self._tvm.runtime.tensor(x, self.dev))
        # Relax returns a Tensor or a tuple of them (one per graph output).
        if not hasattr(out, "numpy") and len(out) > 0:
            out = out[0]
        return out.numpy()

    def describe(self) -> dict[str, Any]:
        return {"backend": self.name, "version": self.version, "static_batch": self.static_batch}


class _CudaRT:
    """Just enough of libcudart, through ctypes, to move numpy arrays to and from the GPU.

    Avoids a pycuda/cuda-python dependency: L4T and TensorRT images always ship libcudart.
    """

    H2D, D2H = 1, 2

    def __init__(self) -> None:
        import ctypes
        import ctypes.util

        names = [ctypes.util.find_library("cudart"), "libcudart.so", "libcudart.so.12", "libcudart.so.11.0", "libcudart.so.10.2"]
        for n in filter(None, names):
            try:
                self.lib = ctypes.CDLL(n)
                break
            except OSError:
                continue
        else:
            raise MetaedgeError("libcudart not found; TensorRT needs the CUDA runtime", "run inside an L4T/TensorRT image with --runtime nvidia")
        self.ct = ctypes
        self.lib.cudaMalloc.argtypes = [ctypes.POINTER(ctypes.c_void_p), ctypes.c_size_t]
        self.lib.cudaMemcpy.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
        self.lib.cudaFree.argtypes = [ctypes.c_void_p]

    def _check(self, rc: int, what: str) -> None:
        if rc != 0:
            raise RuntimeError(f"{what} failed with CUDA error {rc}")

    def malloc(self, nbytes: int) -> int:
        ptr = self.ct.c_void_p()
        self._check(self.lib.cudaMalloc(self.ct.byref(ptr), nbytes), "cudaMalloc")
        assert ptr.value is not None  # cudaMalloc succeeded
        return int(ptr.value)

    def h2d(self, dst: int, src: np.ndarray) -> None:
        self._check(self.lib.cudaMemcpy(dst, src.ctypes.data, src.nbytes, self.H2D), "cudaMemcpy H2D")

    def d2h(self, dst: np.ndarray, src: int) -> None:
        self._check(self.lib.cudaMemcpy(dst.ctypes.data, src, dst.nbytes, self.D2H), "cudaMemcpy D2H")

    def free(self, ptr: int) -> None:
        self.lib.cudaFree(ptr)


class TensorRTEngine(Engine):
    """A serialized TensorRT engine; built from the ONNX on first start when none is cached.

    Engines are specific to the GPU and TensorRT version, so they are built on the device and cached
    under ``cache_dir`` keyed by ONNX hash + TensorRT version (a mounted volume survives restarts).
    """

    name = "tensorrt"

    def __init__(self, path: Path, input_name: str, input_shape: tuple[int, ...], cache_dir: Path | None = None, max_batch: int = 8, fp16: bool = True) -> None:
        super().__init__()
        try:
            import tensorrt as trt
        except ImportError as exc:
            raise MetaedgeError("TensorRT's Python API is not installed", "use an L4T/TensorRT base image or pip install tensorrt") from exc
        self.trt = trt
        self.logger = trt.Logger(trt.Logger.WARNING)
        self.input_name = input_name
        self.version = trt.__version__
        path = Path(path)
        if path.suffix == ".onnx":
            path = self._build_cached(path, input_shape, Path(cache_dir or path.parent), max_batch, fp16)
        self.engine_path = path
        self.engine = trt.Runtime(self.logger).deserialize_cuda_engine(path.read_bytes())
        if self.engine is None:
            raise MetaedgeError(f"TensorRT could not load {path}", "delete the cached engine so it is rebuilt on this device")
        self.context = self.engine.create_execution_context()
        self.cuda = _CudaRT()
        self.max_batch = max_batch

    @property
    def batch_limit(self) -> int | None:
        return self.max_batch  # the optimization profile built above (or by compile) stops there

    def _build_cached(self, onnx_path: Path, shape: tuple[int, ...], cache_dir: Path, max_batch: int, fp16: bool) -> Path:
        digest = hashlib.sha256(onnx_path.read_bytes()).hexdigest()[:16]
        engine_path = cache_dir / f"model-{digest}-trt{self.version}-b{max_batch}{'-fp16' if fp16 else ''}.engine"
        if engine_path.is_file():
            return engine_path
        trt = self.trt
        builder = trt.Builder(self.logger)
        flags = 0
        if hasattr(trt.NetworkDefinitionCreationFlag, "EXPLICIT_BATCH"):  # TensorRT < 10 needs it spelled out
            flags = 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)
        network = builder.create_network(flags)
        parser = trt.OnnxParser(network, self.logger)
        if not parser.parse(onnx_path.read_bytes()):
            errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
            raise MetaedgeError(f"TensorRT cannot parse {onnx_path}: {errors}", "re-export with a lower opset")
        config = builder.create_builder_config()
        if fp16 and getattr(builder, "platform_has_fast_fp16", False):
            config.set_flag(trt.BuilderFlag.FP16)
        c, h, w = shape[1:]
        profile = builder.create_optimization_profile()
        profile.set_shape(self.input_name, (1, c, h, w), (1, c, h, w), (max_batch, c, h, w))
        config.add_optimization_profile(profile)
        serialized = builder.build_serialized_network(network, config)
        if serialized is None:
            raise MetaedgeError("TensorRT engine build failed", "check the container log for TensorRT errors")
        cache_dir.mkdir(parents=True, exist_ok=True)
        tmp = engine_path.with_suffix(".tmp")
        tmp.write_bytes(bytes(serialized))
        os.replace(tmp, engine_path)
        return engine_path

    def _run(self, x: np.ndarray) -> np.ndarray:
        engine, ctx, cuda = self.engine, self.context, self.cuda
        if hasattr(engine, "num_io_tensors"):  # TensorRT >= 8.5 name-based API
            names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
            out_name = next(n for n in names if engine.get_tensor_mode(n) == self.trt.TensorIOMode.OUTPUT)
            in_name = next(n for n in names if engine.get_tensor_mode(n) == self.trt.TensorIOMode.INPUT)
            ctx.set_input_shape(in_name, x.shape)
            out = np.empty(tuple(ctx.get_tensor_shape(out_name)), dtype=np.float32)
            d_in, d_out = cuda.malloc(x.nbytes), cuda.malloc(out.nbytes)
            try:
                cuda.h2d(d_in, x)
                ctx.set_tensor_address(in_name, d_in)
                ctx.set_tensor_address(out_name, d_out)
                if not ctx.execute_async_v3(0):  # default stream; d2h below synchronizes
                    raise RuntimeError("TensorRT execution failed")
                cuda.d2h(out, d_out)
            finally:
                cuda.free(d_in)
                cuda.free(d_out)
            return out
        # TensorRT 8.x before 8.5: binding-index API.
        ctx.set_binding_shape(0, x.shape)
        out = np.empty(tuple(ctx.get_binding_shape(1)), dtype=np.float32)
        d_in, d_out = cuda.malloc(x.nbytes), cuda.malloc(out.nbytes)
        try:
            cuda.h2d(d_in, x)
            if not ctx.execute_v2([d_in, d_out]):
                raise RuntimeError("TensorRT execution failed")
            cuda.d2h(out, d_out)
        finally:
            cuda.free(d_in)
            cuda.free(d_out)
        return out

    def describe(self) -> dict[str, Any]:
        return {"backend": self.name, "version": self.version, "engine": self.engine_path.name}


ENGINES = ("onnxruntime", "tvm", "tensorrt")


def open_engine(backend: str, path: Path, input_name: str, input_shape: tuple[int, ...], threads: int = 1, cache_dir: Path | None = None) -> Engine:
    if backend == "onnxruntime":
        return OrtEngine(path, input_name, threads)
    if backend == "tvm":
        return TvmEngine(path, input_shape)
    if backend == "tensorrt":
        return TensorRTEngine(path, input_name, input_shape, cache_dir)
    raise MetaedgeError(f"unknown runtime backend {backend!r}", f"choose one of: {', '.join(ENGINES)}")
