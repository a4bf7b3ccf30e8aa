"""Apache TVM (Relax) backend: ONNX -> Relax -> shared library for a target, run by the Relax VM.

TVM 0.27 is Relax-only. The ONNX graph is imported with a static batch-1 shape (static shapes let
TVM plan memory and pick fixed loop bounds), built with ``tvm.compile`` and written with
``export_library`` -- linked by the cross toolchain (``targets/toolchain.py``: the distro's
``aarch64-linux-gnu-g++`` or zig from the ``ziglang`` wheel) for another CPU architecture.

CPU targets: NHWC layout, then per fused kernel the tuned schedule from the target's MetaSchedule
database where it has one (``tvm_tuning.py``) and metaedge's default schedules elsewhere
(``tvm_schedules/``). TVM's own CPU pipeline schedules no convolution; measured here (one thread,
ResNet-20 28x28) that is 31.8 ms against ONNX Runtime's 0.8 ms, and 0.9 ms with the default rules.
GPU targets use TVM's CUDA pipeline with dlight's default schedules (guarded, see gpu_pipeline).

QDQ ONNX imports as quantize/dequantize around fp32 compute: the model is numerically the
quantized one but runs in fp32 (the manifest's ``int8`` field says so). QOperator ONNX
(QLinearConv, ConvInteger...) does not import in TVM 0.27 and is refused with a clear error.
"""

from __future__ import annotations

import json
import os
import platform
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import numpy as np

from metaedge.artifacts import atomic_path, atomic_write_json, file_sha256
from metaedge.deploy.backends.base import Backend, CompiledModel, LoadedArtifact, register_backend
from metaedge.errors import MetaedgeError
from metaedge.latency import LatencyStats, TimingConfig, summarize
from metaedge.onnx_graph import onnx_input_spec

__all__ = [
    "QOPERATOR_OPS",
    "TvmBackend",
    "TvmOptions",
    "TvmRunner",
    "build_relax_module",
    "compile_module",
    "default_rules",
    "prepare_module",
    "schedule_module",
    "tuning_dir_for",
    "with_num_cores",
    "gpu_pipeline",
    "first_output",
    "time_vm",
    "tune_module",
]

# ONNX ops of the QOperator quantization format; TVM 0.27's ONNX frontend cannot import them.
QOPERATOR_OPS = frozenset(
    {
        "QLinearConv",
        "QLinearMatMul",
        "ConvInteger",
        "MatMulInteger",
        "QLinearAdd",
        "QLinearMul",
        "QLinearGlobalAveragePool",
        "QLinearAveragePool",
        "QLinearConcat",
    }
)


@dataclass(frozen=True)
class TvmOptions:
    """Compile options. Every compile applies the target's tuning database (``tuning_dir``,
    default ``.metaedge-cache/tvm-tuning/<target>``) where it exists; ``tune_trials`` > 0 first
    tunes until the database holds that many measurements of this model's tasks.
    ``tune_device`` (``tracker:port/key``) measures tuning candidates on a remote device;
    ``threads`` is the thread count the model will run with (what local tuning measures)."""

    tune_trials: int = 0
    tuning_dir: Path | None = None
    tune_device: str | None = None
    threads: int = 1
    build_timeout_s: float = 180.0  # builder workers import TVM's tensor intrinsics (~45 s here)
    report: Any = field(default=None, compare=False)  # callable(TuneProgress): a progress bar

    def __post_init__(self) -> None:
        if self.tune_trials < 0:
            raise MetaedgeError(f"--tune-trials {self.tune_trials} is negative", "pass 0 (no tuning) or a trial count such as 500")
        if self.threads < 1:
            raise MetaedgeError(f"TVM threads {self.threads} is below 1", "pass --threads 1 or more")


def tuning_dir_for(target_name: str, cache_dir: Path | str = ".metaedge-cache") -> Path:
    """The per-target tuning database under the cache (records keyed by workload inside)."""
    return Path(cache_dir) / "tvm-tuning" / target_name


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
                cuda_pipeline.library_dispatch_passes(tvm_target)
                + legalize
                + cuda_pipeline.dataflow_lower_passes(tvm_target)
                + cuda_pipeline.finalize_passes(tvm_target)
            )
            return seq(mod)

    return _pipeline


def _is_cpu(tvm_target) -> bool:
    return tvm_target.kind.name == "llvm"


def vector_lanes(tvm_target) -> int:
    """fp32 lanes of one SIMD register for the target's CPU (what the default schedules tile by)."""
    triple = str(tvm_target.attrs.get("mtriple", "")) if "mtriple" in tvm_target.attrs else ""
    return 4 if triple.startswith("aarch64") or triple.startswith("arm") else 8


def prepare_module(mod, tvm_target):
    """Inference simplifications, NHWC layout on CPU, legalization and fusion: the module whose
    fused TIR functions are the tuning tasks and get the default schedules."""
    import tvm
    from tvm import relax

    from metaedge.deploy.backends.tvm_schedules import CPU_LAYOUTS

    passes = [relax.transform.DecomposeOpsForInference(), relax.transform.CanonicalizeBindings()]
    if _is_cpu(tvm_target):
        passes.append(relax.transform.ConvertLayout(CPU_LAYOUTS))
    passes += [
        relax.transform.LegalizeOps(),
        relax.transform.AnnotateTIROpPattern(),
        relax.transform.FoldConstant(),
        relax.transform.FuseOps(),
        relax.transform.FuseTIR(),
    ]
    with tvm_target:
        return tvm.transform.Sequential(passes)(mod)


def default_rules(tvm_target) -> list:
    from metaedge.deploy.backends.tvm_schedules import cpu_default_rules

    return cpu_default_rules(vector_lanes(tvm_target)) if _is_cpu(tvm_target) else []


def schedule_module(mod, tvm_target, database_dir: Path | None = None):
    """Tuned schedules from the database where it has them, the default rules elsewhere."""
    from tvm import relax
    from tvm.s_tir import dlight as dl

    with tvm_target:
        if database_dir is not None and (Path(database_dir) / "database_tuning_record.json").is_file():
            mod = relax.transform.MetaScheduleApplyDatabase(str(database_dir))(mod)
        rules = default_rules(tvm_target)
        if rules:
            mod = dl.ApplyDefaultSchedule(*rules)(mod)
    return mod


def compile_module(mod, tvm_target, database_dir: Path | None = None):
    """Build a Relax module: the guarded dlight pipeline for CUDA; on CPU, NHWC + tuned/default
    schedules (``prepare_module`` -> ``schedule_module``) and TVM's CPU lowering passes."""
    import tvm

    if tvm_target.kind.name == "cuda":
        return tvm.compile(mod, target=tvm_target, relax_pipeline=gpu_pipeline(tvm_target))
    if not _is_cpu(tvm_target):
        return tvm.compile(mod, target=tvm_target)
    from tvm.relax.backend.cpu_generic import pipeline as cpu

    mod = schedule_module(prepare_module(mod, tvm_target), tvm_target, database_dir)

    @tvm.transform.module_pass(opt_level=0)
    def _lower(m, _ctx):
        with tvm_target:
            return tvm.transform.Sequential(cpu.library_dispatch_passes(tvm_target) + cpu.dataflow_lower_passes(tvm_target) + cpu.finalize_passes(tvm_target))(
                m
            )

    return tvm.compile(mod, target=tvm_target, relax_pipeline=_lower)


# --- MetaSchedule ------------------------------------------------------------------------------
def with_num_cores(tvm_target, cores: int | None):
    """MetaSchedule's CPU rules need ``num-cores``; it is also how many threads its schedules
    parallelise over, so local tuning uses the timing's thread count (one, by default)."""
    import tvm

    if tvm_target.kind.name != "llvm" or ("num-cores" in tvm_target.attrs and cores is None):
        return tvm_target
    spec = {k: v for k, v in dict(tvm_target.export()).items() if k not in ("tag",)}
    spec["num-cores"] = int(cores or 4)  # remote boards without a tag: assume a quad core
    return tvm.target.Target(spec)


def tune_module(mod, tvm_target, work_dir: Path, trials: int, *, device: str | None = None, threads: int = 1, build_timeout_s: float = 180.0, report=None):
    """Tune ``mod`` (an imported Relax module) into the database ``work_dir``; returns the
    :class:`~metaedge.deploy.backends.tvm_tuning.TuneResult`."""
    from metaedge.deploy.backends.tvm_tuning import tune_tasks_in_database

    tvm_target = with_num_cores(tvm_target, None if device else threads)
    prepared = prepare_module(mod, tvm_target)
    return tune_tasks_in_database(
        prepared, tvm_target, Path(work_dir), trials, rules=default_rules(tvm_target), device=device, build_timeout_s=build_timeout_s, report=report
    )


# --- running and timing --------------------------------------------------------------------------
def time_vm(vm, dev, x_tvm, config: TimingConfig, func: str = "main") -> LatencyStats:
    """Time one VM call with TVM's ``time_evaluator`` (runs on the device itself, so RPC round
    trips are not counted): ``warmup`` untimed calls, then ``repeats`` single-call samples."""
    vm.set_input(func, x_tvm)
    if config.warmup:
        vm.time_evaluator("invoke_stateful", dev, number=config.warmup, repeat=1)(func)
    res = vm.time_evaluator("invoke_stateful", dev, number=1, repeat=config.repeats, min_repeat_ms=0)(func)
    return summarize([float(r) * 1e3 for r in res.results])


def first_output(out) -> np.ndarray:
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
        return first_output(self.vm["main"](self._tensor(x)))


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
        import tvm

        from metaedge.targets.registry import get_target

        target = get_target(target)
        linker = None
        if target.arch != platform.machine():  # before any work: a missing toolchain is told at once
            from metaedge.targets.toolchain import cross_linker

            linker = cross_linker(target.host_triple, target.cross_compiler)
        onnx_path, out_dir = Path(onnx_path), Path(out_dir)
        input_name, shape, output_name = onnx_input_spec(onnx_path)
        shape = (1,) + tuple(shape[1:])
        tvm_target = target.tvm()
        t0 = time.perf_counter()
        mod = build_relax_module(onnx_path, input_name, shape)
        opts = self.options
        if not target.is_gpu:
            tvm_target = with_num_cores(tvm_target, None if target.measurement == "rpc" or opts.tune_device else opts.threads)
        database = opts.tuning_dir or tuning_dir_for(target.name)
        tuning: dict[str, Any] = {"database": str(database), "trials_requested": opts.tune_trials}
        if opts.tune_trials > 0:
            res = tune_module(
                mod,
                tvm_target,
                database,
                opts.tune_trials,
                device=opts.tune_device,
                threads=opts.threads,
                build_timeout_s=opts.build_timeout_s,
                report=opts.report,
            )
            tuning.update(
                tasks=res.tasks,
                trials_before=res.trials_before,
                trials_run=res.trials_run,
                seconds=round(res.seconds, 1),
                estimated_ms=res.estimated_ms,
                interrupted=res.interrupted,
                skipped_reason=res.skipped_reason,
            )
        has_records = (Path(database) / "database_tuning_record.json").is_file()
        tuning["applied"] = has_records
        try:
            ex = compile_module(mod, tvm_target, database if has_records else None)
        except Exception as exc:
            raise MetaedgeError(
                f"TVM could not build {onnx_path.name} for target {target.name}: {str(exc).splitlines()[-1][:200]}",
                "try --backend onnxruntime, or report the model to metaedge",
            ) from exc
        lib = out_dir / "model.so"
        _export(ex, lib, linker)
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
            "tune_trials": opts.tune_trials,
            "tuning": tuning,
            "linker": linker.name if linker is not None else "host",
            "int8": _int8_note(onnx_path),
            "schedules": "tuned database + metaedge default rules" if has_records else "metaedge default rules",
            "compile_s": round(time.perf_counter() - t0, 3),
        }
        atomic_write_json(out_dir / "model.json", meta)
        return CompiledModel(
            self.name,
            target.name,
            lib,
            input_name,
            shape,
            extra={"metadata": str(out_dir / "model.json"), "device": meta["device"], "arch": target.arch, "runs_here": target.runs_here()},
        )

    def load(self, compiled: CompiledModel, threads: int = 1) -> TvmRunner:
        arch = compiled.extra.get("arch", platform.machine())
        if arch != platform.machine():
            raise MetaedgeError(
                f"{compiled.path} is built for {arch} and cannot run on this {platform.machine()} machine",
                "measure it on the device with --device tracker-host:port/key",
            )
        return TvmRunner(compiled.path, compiled.extra.get("device", "cpu"), threads)

    def time(self, runner: LoadedArtifact, x: np.ndarray, config: TimingConfig = TimingConfig()) -> LatencyStats:
        tvm_runner = cast(TvmRunner, runner)  # load() made it
        return time_vm(tvm_runner.vm, tvm_runner.dev, tvm_runner._tensor(x), config)


def _int8_note(onnx_path: Path) -> str | None:
    """What TVM does with a QDQ graph, for the manifest (None for fp32 models)."""
    import onnx

    ops = {n.op_type for n in onnx.load(str(onnx_path), load_external_data=False).graph.node}
    if "DequantizeLinear" not in ops:
        return None
    return (
        "emulated: TVM 0.27's Relax ONNX frontend imports QuantizeLinear/DequantizeLinear as float ops "
        "(relax.quantize/dequantize, legalized elementwise; Relax has no QNN lowering), so weights are "
        "dequantized at build time and convs run in fp32 with the int8 model's numerics"
    )


def _export(ex, lib: Path, linker=None) -> None:
    """Write the library atomically; ``linker`` (a :class:`~metaedge.targets.toolchain.CrossLinker`)
    links it for another CPU architecture."""
    lib.parent.mkdir(parents=True, exist_ok=True)
    # export_library picks the output kind from the suffix, so the temp name must end in .so.
    with atomic_path(lib) as tmp:
        so = tmp.with_name(tmp.name + ".so")
        try:
            if linker is None:
                ex.export_library(str(so))
            else:
                ex.export_library(str(so), fcompile=linker.fcompile)
            os.replace(so, tmp)
        finally:
            if so.exists():
                so.unlink()


def read_metadata(lib_path: Path | str) -> dict[str, Any]:
    meta = Path(lib_path).with_name("model.json")
    return json.loads(meta.read_text()) if meta.is_file() else {}
