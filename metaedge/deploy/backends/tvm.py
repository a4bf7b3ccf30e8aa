"""Apache TVM (Relax) backend: ONNX -> Relax -> shared library for a target, run by the Relax VM.

TVM 0.27 is Relax-only. The ONNX graph is imported with a static batch-1 shape (static shapes let
TVM plan memory and pick fixed loop bounds), built with ``tvm.compile`` for the target and written
with ``export_library`` -- through the target's cross compiler (``aarch64-linux-gnu-g++``) when it
is another CPU architecture. GPU targets use TVM's default CUDA pipeline, which applies dlight
default schedules. Optional MetaSchedule tuning stores its records in a reusable database folder.

fp32 ONNX and QDQ ONNX import (QDQ becomes quantize/dequantize around fp32 compute: the model is
numerically the quantized one but runs in fp32). QOperator ONNX (QLinearConv, ConvInteger...) does
not import in TVM 0.27 and is refused with a clear error.
"""
from __future__ import annotations

import json
import os
import platform
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from metaedge.artifacts import atomic_path, atomic_write_json, file_sha256
from metaedge.deploy.backends.base import Backend, CompiledModel, register_backend
from metaedge.errors import MetaedgeError
from metaedge.latency import LatencyStats, TimingConfig, summarize

__all__ = [
    "QOPERATOR_OPS",
    "TvmBackend",
    "TvmOptions",
    "TvmRunner",
    "build_relax_module",
    "compile_module",
    "gpu_pipeline",
    "onnx_input_spec",
    "time_vm",
    "tune_module",
]

# ONNX ops of the QOperator quantization format; TVM 0.27's ONNX frontend cannot import them.
QOPERATOR_OPS = frozenset({"QLinearConv", "QLinearMatMul", "ConvInteger", "MatMulInteger", "QLinearAdd",
                           "QLinearMul", "QLinearGlobalAveragePool", "QLinearAveragePool", "QLinearConcat"})


@dataclass(frozen=True)
class TvmOptions:
    """Compile options. ``tune_trials`` > 0 runs MetaSchedule before building; its records live in
    ``tuning_dir`` (default ``.metaedge-cache/tvm-tuning/<target>``) and are reused by later runs.
    ``tune_device`` (``tracker:port/key``) measures tuning candidates on a remote device."""

    tune_trials: int = 0
    max_trials_per_task: int | None = None
    tuning_dir: Path | None = None
    tune_device: str | None = None
    build_timeout_s: float = 180.0  # builder workers import TVM's tensor intrinsics (~45 s here)


def onnx_input_spec(onnx_path: Path | str) -> tuple[str, tuple[int, ...], str]:
    """(input name, static batch-1 shape, output name) of an ONNX model; symbolic dims become 1."""
    import onnx

    model = onnx.load(str(onnx_path), load_external_data=False)
    inits = {i.name for i in model.graph.initializer}
    inputs = [i for i in model.graph.input if i.name not in inits]
    if len(inputs) != 1:
        raise MetaedgeError(f"{onnx_path} has {len(inputs)} graph inputs", "export a model with one image input named `input`")
    dims = inputs[0].type.tensor_type.shape.dim
    shape = tuple(int(d.dim_value) if d.HasField("dim_value") and d.dim_value > 0 else 1 for d in dims)
    return inputs[0].name, shape, model.graph.output[0].name


def build_relax_module(onnx_path: Path | str, input_name: str, shape: tuple[int, ...]):
    """Import an ONNX file as a Relax IRModule with a static input shape."""
    import onnx
    from tvm.relax.frontend.onnx import from_onnx

    model = onnx.load(str(onnx_path))
    qops = sorted({n.op_type for n in model.graph.node} & QOPERATOR_OPS)
    if qops:
        raise MetaedgeError(
            f"{onnx_path} is QOperator-format quantized ONNX ({', '.join(qops)}), which TVM 0.27 cannot import",
            "quantize with QuantFormat.QDQ (metaedge's default) or compile this model with --backend onnxruntime",
        )
    opset = max((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), default=None)
    try:
        return from_onnx(model, shape_dict={input_name: list(shape)}, dtype_dict={input_name: "float32"}, opset=opset)
    except Exception as exc:  # the frontend raises bare TVM errors for unsupported ops
        raise MetaedgeError(
            f"TVM's ONNX importer failed on {onnx_path}: {str(exc).splitlines()[0][:200]}",
            "compile this model with --backend onnxruntime, or simplify the unsupported op",
        ) from exc


# --- GPU pipeline ----------------------------------------------------------------------------------
def gpu_pipeline(tvm_target):
    """TVM's default CUDA pipeline (legalize, fuse, dlight default schedules, VM lowering) with each
    dlight rule guarded: in TVM 0.27 the GEMV rule asserts on some small reductions (MobileNetV2 at
    32x32: ``assert s_loops`` in dlight/analysis/gemv.py) instead of declining them, which aborts
    the whole build. A rule that raises is treated as "does not apply" and the next one is tried."""
    import tvm
    from tvm import relax
    from tvm.relax.backend.cuda import pipeline as cuda_pipeline
    from tvm.s_tir import dlight as dl

    class Guarded(dl.ScheduleRule):
        def __init__(self, rule) -> None:
            self.rule = rule

        def apply(self, func, target, tunable):
            try:
                return self.rule.apply(func, target, tunable)
            except Exception:  # noqa: BLE001 - a rule's internal assert means "not my pattern"
                return None

    rules = [dl.gpu.Matmul(), dl.gpu.GEMV(), dl.gpu.Reduction(), dl.gpu.GeneralReduction(), dl.gpu.Fallback()]

    @tvm.transform.module_pass(opt_level=0)
    def _pipeline(mod, _ctx):
        with tvm_target:
            legalize = [
                relax.transform.LegalizeOps(),
                relax.transform.AnnotateTIROpPattern(),
                relax.transform.FoldConstant(),
                relax.transform.FuseOps(),
                relax.transform.FuseTIR(),
                dl.ApplyDefaultSchedule(*[Guarded(r) for r in rules]),
            ]
            seq = tvm.transform.Sequential(
                cuda_pipeline.library_dispatch_passes(tvm_target) + legalize
                + cuda_pipeline.dataflow_lower_passes(tvm_target) + cuda_pipeline.finalize_passes(tvm_target))
            return seq(mod)

    return _pipeline


def compile_module(mod, tvm_target):
    """``tvm.compile`` with the guarded GPU pipeline for CUDA targets, TVM's default otherwise."""
    import tvm

    if tvm_target.kind.name == "cuda":
        return tvm.compile(mod, target=tvm_target, relax_pipeline=gpu_pipeline(tvm_target))
    return tvm.compile(mod, target=tvm_target)


# --- MetaSchedule ------------------------------------------------------------------------------
def _fast_build(mod, target, _params):  # runs inside builder worker processes
    # The stock builder imports tvm.s_tir.tensor_intrin first (~45 s on this class of machine),
    # which blows its timeout for every candidate; plain tvm.compile is enough for CPU/GPU code.
    from tvm.driver import build as tvm_build
    from tvm.s_tir.transform import RemoveWeightLayoutRewriteBlock

    # Same as MetaSchedule's default_build, minus that import.
    return tvm_build(RemoveWeightLayoutRewriteBlock(skip_tensor_rewrite=True)(mod), target=target)


def _parse_tracker(device: str) -> tuple[str, int, str]:
    from metaedge.targets.measure.rpc import parse_device

    spec = parse_device(device)
    if spec.key is None:
        raise MetaedgeError(f"tuning device {device!r} has no key", "write it as tracker-host:port/key")
    return spec.host, spec.port, spec.key


def _with_num_cores(tvm_target, local_cores: int | None):
    """MetaSchedule's CPU rules need ``num-cores``; tags carry it, plain llvm dicts do not."""
    import tvm

    if tvm_target.kind.name != "llvm" or "num-cores" in tvm_target.attrs:
        return tvm_target
    spec = {k: v for k, v in dict(tvm_target.export()).items() if k not in ("tag",)}
    spec["num-cores"] = int(local_cores or 4)  # remote boards without a tag: assume a quad core
    return tvm.target.Target(spec)


def tune_module(mod, tvm_target, work_dir: Path, trials: int, *, max_trials_per_task: int | None = None,
                device: str | None = None, build_timeout_s: float = 180.0):
    """Tune a Relax module with MetaSchedule and return it with the tuned schedules applied.

    Records accumulate in ``work_dir`` (a JSON database); ``trials=0`` only applies what is there.
    """
    import tvm
    from tvm import relax
    from tvm.s_tir import meta_schedule as ms

    work_dir = Path(work_dir)
    work_dir.mkdir(parents=True, exist_ok=True)
    tvm_target = _with_num_cores(tvm_target, None if device else (os.cpu_count() or 1))
    with tvm_target:
        mod = tvm.transform.Sequential([
            relax.transform.DecomposeOpsForInference(),
            relax.transform.CanonicalizeBindings(),
            relax.pipeline.zero_pipeline(),
        ])(mod)
    if trials > 0:
        builder = ms.builder.LocalBuilder(f_build=_fast_build, timeout_sec=build_timeout_s)
        if device:
            host, port, key = _parse_tracker(device)
            runner = ms.runner.RPCRunner(ms.runner.RPCConfig(tracker_host=host, tracker_port=port, tracker_key=key,
                                                             session_timeout_sec=600))
        else:
            runner = ms.runner.LocalRunner(timeout_sec=60)
        ms.relax_integration.tune_relax(
            mod, {}, tvm_target, str(work_dir), max_trials_global=trials,
            max_trials_per_task=max_trials_per_task or trials,
            num_trials_per_iter=min(64, max(4, trials)), builder=builder, runner=runner,
        )
    # tune_relax's records are not picked up by compile_relax; applying the database as a pass is.
    with tvm_target:
        mod = relax.transform.MetaScheduleApplyDatabase(str(work_dir))(mod)
    return mod


# --- running and timing --------------------------------------------------------------------------
def time_vm(vm, dev, x_tvm, config: TimingConfig, func: str = "main") -> LatencyStats:
    """Time one VM call with TVM's ``time_evaluator`` (runs on the device itself, so RPC round
    trips are not counted): ``warmup`` untimed calls, then ``repeats`` single-call samples."""
    vm.set_input(func, x_tvm)
    if config.warmup:
        vm.time_evaluator("invoke_stateful", dev, number=config.warmup, repeat=1)(func)
    res = vm.time_evaluator("invoke_stateful", dev, number=1, repeat=config.repeats, min_repeat_ms=0)(func)
    return summarize([float(r) * 1e3 for r in res.results])


def _first_output(out) -> np.ndarray:
    while not hasattr(out, "numpy"):  # tuple outputs: the first one is the logits
        out = out[0]
    return out.numpy()


def set_threads(threads: int) -> None:
    import tvm

    # Mode 1 ("big cores") with an explicit count; the pool is resized in place.
    tvm.get_global_func("runtime.config_threadpool")(1, int(threads))


class TvmRunner:
    def __init__(self, lib_path: Path | str, device: str = "cpu", threads: int = 1) -> None:
        import tvm
        from tvm import relax

        set_threads(threads)
        self.dev = tvm.cuda(0) if device == "cuda" else tvm.cpu(0)
        self.lib = tvm.runtime.load_module(str(lib_path))
        self.vm = relax.VirtualMachine(self.lib, self.dev)

    def _tensor(self, x: np.ndarray):
        import tvm

        return tvm.runtime.tensor(np.ascontiguousarray(x, dtype=np.float32), self.dev)

    def run(self, x: np.ndarray) -> np.ndarray:
        return _first_output(self.vm["main"](self._tensor(x)))


@register_backend
class TvmBackend(Backend):
    name = "tvm"

    def __init__(self, options: TvmOptions | None = None) -> None:
        self.options = options or TvmOptions()

    def unavailable_reason(self) -> str | None:
        try:
            import tvm  # noqa: F401
            from tvm.relax.frontend.onnx import from_onnx  # noqa: F401
        except ImportError as exc:
            return f"Apache TVM is not importable ({exc}); pip install 'metaedge[tvm]'"
        return None

    def compile(self, onnx_path: Path, target: Any, out_dir: Path) -> CompiledModel:
        from metaedge.targets.registry import get_target

        import tvm

        target = get_target(target)
        onnx_path, out_dir = Path(onnx_path), Path(out_dir)
        input_name, shape, output_name = onnx_input_spec(onnx_path)
        shape = (1,) + tuple(shape[1:])
        tvm_target = target.tvm()
        t0 = time.perf_counter()
        mod = build_relax_module(onnx_path, input_name, shape)
        opts = self.options
        tuned = 0
        if opts.tune_trials > 0 or opts.tuning_dir is not None:
            work = opts.tuning_dir or Path(".metaedge-cache") / "tvm-tuning" / target.name
            mod = tune_module(mod, tvm_target, work, opts.tune_trials, max_trials_per_task=opts.max_trials_per_task,
                              device=opts.tune_device, build_timeout_s=opts.build_timeout_s)
            tuned = opts.tune_trials
        try:
            ex = compile_module(mod, tvm_target)
        except Exception as exc:
            raise MetaedgeError(
                f"TVM could not build {onnx_path.name} for target {target.name}: {str(exc).splitlines()[-1][:200]}",
                "try --backend onnxruntime, or report the model to metaedge",
            ) from exc
        lib = out_dir / "model.so"
        cc = target.cross_compiler if target.arch != platform.machine() else None
        _export(ex, lib, cc)
        meta = {
            "backend": self.name,
            "target": target.name,
            "tvm_target": str(tvm_target),
            "tvm_version": tvm.__version__,
            "arch": target.arch,
            "device": "cuda" if target.is_gpu else "cpu",
            "input_name": input_name,
            "input_shape": list(shape),
            "output_name": output_name,
            "onnx_sha256": file_sha256(onnx_path),
            "tune_trials": tuned,
            "compile_s": round(time.perf_counter() - t0, 3),
        }
        atomic_write_json(out_dir / "model.json", meta)
        return CompiledModel(self.name, target.name, lib, input_name, shape,
                             extra={"metadata": str(out_dir / "model.json"), "device": meta["device"],
                                    "arch": target.arch, "runs_here": target.runs_here()})

    def load(self, compiled: CompiledModel, threads: int = 1) -> TvmRunner:
        arch = compiled.extra.get("arch", platform.machine())
        if arch != platform.machine():
            raise MetaedgeError(
                f"{compiled.path} is built for {arch} and cannot run on this {platform.machine()} machine",
                "measure it on the device with --device tracker-host:port/key",
            )
        return TvmRunner(compiled.path, compiled.extra.get("device", "cpu"), threads)

    def time(self, runner: TvmRunner, x: np.ndarray, config: TimingConfig = TimingConfig()) -> LatencyStats:
        return time_vm(runner.vm, runner.dev, runner._tensor(x), config)


def _export(ex, lib: Path, cc: str | None) -> None:
    lib.parent.mkdir(parents=True, exist_ok=True)
    if cc is not None:
        import shutil

        if shutil.which(cc) is None:
            raise MetaedgeError(f"cross compiler {cc} is not installed", "run tools/arm64_device/setup.sh (or apt-get install g++-aarch64-linux-gnu)")
    # export_library picks the output kind from the suffix, so the temp name must end in .so.
    with atomic_path(lib) as tmp:
        so = tmp.with_name(tmp.name + ".so")
        try:
            if cc is None:
                ex.export_library(str(so))
            else:
                ex.export_library(str(so), cc=cc)
            os.replace(so, tmp)
        finally:
            if so.exists():
                so.unlink()


def read_metadata(lib_path: Path | str) -> dict[str, Any]:
    meta = Path(lib_path).with_name("model.json")
    return json.loads(meta.read_text()) if meta.is_file() else {}
