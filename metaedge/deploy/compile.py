"""Compile an exported ONNX model for a target with one or more backends and pick the fastest.

For each backend: compile into ``compiled/<target>/<backend>/`` of the artifact directory, check
the artifact's outputs against ONNX Runtime on the original ONNX (where it can run: here, or on
the device through ``--device``), and time it. ``backends="auto"`` tries every backend the target
lists and chooses the fastest one that passed parity; the whole comparison is returned as the
manifest's ``compiled`` section for that target, ``{<backend>: {...}, "chosen": name, ...}`` (the caller
stores it as ``ArtifactDir.update(compiled={target_name: section})``).

Backends that cannot be measured (an aarch64 library without a device, a TensorRT engine that can
only be built on the target) are still compiled and recorded with the reason; if nothing could be
measured, the target's preferred backend among those that compiled is chosen, and the entry says so.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from metaedge.artifacts import file_sha256
from metaedge.deploy.backends.base import Backend, CompiledModel, get_backend, list_backends
from metaedge.deploy.measure.base import MeasureInput, NotMeasurable
from metaedge.deploy.measure.select import runner_for
from metaedge.errors import MetaedgeError
from metaedge.latency import TimingConfig
from metaedge.onnx_graph import is_qdq, onnx_input_spec, output_step
from metaedge.parity import FP32, QUANTIZED, ParityReport, Tolerance, compare
from metaedge.targets.registry import Target, get_target
from metaedge.targets.toolchain import ToolchainMissing

__all__ = ["COMPILED_TOLERANCE", "compile_for_target", "make_backend", "parity_inputs", "reference_outputs"]

PARITY_SAMPLES = 4
# The parity rule by artifact kind (metaedge.parity), with one change for compiled quantized
# artifacts: the reference is ONNX Runtime running int8 kernels while TVM emulates Q/DQ in fp32,
# on PARITY_SAMPLES random inputs rather than real images, so one flipped decision in four is
# tolerated; the error bounds in output steps are the QDQ export's.
COMPILED_TOLERANCE: dict[str, Tolerance] = {
    "fp32": FP32,
    "quantized": Tolerance("quantized", max_steps=QUANTIZED.max_steps, mean_steps=QUANTIZED.mean_steps, min_top1_agreement=0.75),
}


def make_backend(name: str, tvm_options: Any = None) -> Backend:
    if name == "tvm" and tvm_options is not None:
        from metaedge.deploy.backends.tvm import TvmBackend

        return TvmBackend(tvm_options)
    return get_backend(name)


def parity_inputs(input_shape: Sequence[int], samples: int = PARITY_SAMPLES, seed: int = 0) -> np.ndarray:
    """[samples, *input_shape] float32 inputs; normalized-image-like values (mean 0, std 1)."""
    rng = np.random.default_rng(seed)
    return rng.standard_normal((samples, *input_shape), dtype=np.float32)


def reference_outputs(onnx_path: Path, xs: np.ndarray) -> np.ndarray:
    from metaedge.deploy.backends.onnxruntime import OrtRunner

    ref = OrtRunner(onnx_path)
    return np.stack([ref.run(x) for x in xs])


def _resolve_backends(backends: str | Sequence[str], target: Target) -> list[str]:
    if isinstance(backends, str):
        if backends == "auto":
            return list(target.backends)
        backends = [b.strip() for b in backends.split(",") if b.strip()]
    known = list_backends()
    bad = [b for b in backends if b not in known]
    if bad:
        raise MetaedgeError(f"unknown backend {bad[0]!r}", f"choose auto or one of: {', '.join(known)}")
    return list(backends)


def _parity(ref: np.ndarray, outputs: np.ndarray, tolerance: Tolerance, step: float | None) -> ParityReport:
    n = len(ref)
    return compare(ref.reshape(n, -1), outputs.reshape(n, -1), tolerance, step=step, step_from="output DequantizeLinear scale" if step else None)


def _measure_one(
    compiled: CompiledModel, target: Target, xs: np.ndarray, ref: np.ndarray, timing: TimingConfig, device: str | None, tolerance: Tolerance, step: float | None
) -> dict[str, Any]:
    """Parity + latency for one compiled artifact: locally, remotely, or not at all (with why)."""
    try:
        runner = runner_for(target, compiled.backend, device, timing)
    except NotMeasurable as exc:
        return {"status": "compiled", "reason": exc.one_line()}
    res = runner.measure(MeasureInput(compiled, xs))
    assert res.outputs is not None  # MeasureInput.inputs given: the outputs come back
    parity = _parity(ref, res.outputs, tolerance, step)
    return {"status": "ok", "latency": res.latency.to_dict(), "parity": parity.to_dict(), "measured_on": res.measured_on, "parity_pass": parity.passed}


def compile_for_target(
    onnx_path: Path | str,
    target: Any,
    artifact_dir: Path | str,
    backends: str | Sequence[str] = "auto",
    timing: TimingConfig = TimingConfig(),
    device: str | None = None,
    *,
    tvm_options: Any = None,
    parity_samples: int = PARITY_SAMPLES,
    cache: Any = None,
) -> dict[str, Any]:
    """Compile ``onnx_path`` for ``target`` (a name or Target) into ``artifact_dir/compiled/<target>/``
    and return the target's manifest section ``{<backend>: {...}, "chosen": ..., "chosen_by": ...}``.

    ``device`` (``tracker-host:port/key`` or ``host:port``) measures TVM artifacts on a remote device.
    ``cache`` (a :class:`~metaedge.deploy.measure.cache.LatencyCache`) skips re-measuring the same
    model bytes on the same target/backend/device."""
    target = get_target(target)
    onnx_path, artifact_dir = Path(onnx_path), Path(artifact_dir)
    if not onnx_path.is_file():
        raise MetaedgeError(f"{onnx_path} does not exist", "export the model first (metaedge export / compress)")
    names = _resolve_backends(backends, target)
    _, shape, _ = onnx_input_spec(onnx_path)
    shape = (1,) + tuple(shape[1:])
    xs = parity_inputs(shape, parity_samples)
    ref = reference_outputs(onnx_path, xs)
    quantized = is_qdq(onnx_path)
    step = output_step(onnx_path) if quantized else None
    tolerance = COMPILED_TOLERANCE["quantized" if quantized else "fp32"]
    sha = file_sha256(onnx_path)
    variant = str(device or "local")
    # arch/gpu let the torch-free runner tell which target's choice runs on the machine it is on.
    entry: dict[str, Any] = {
        "target": target.name,
        "arch": target.arch,
        "gpu": target.is_gpu,
        "device": device,
        "onnx_sha256": sha,
        "quantized": quantized,
        "timing": {"warmup": timing.warmup, "repeats": timing.repeats, "threads": timing.threads},
    }
    for name in names:
        t0 = time.perf_counter()
        backend = make_backend(name, tvm_options)
        reason = backend.unavailable_reason()
        if reason is not None and name != "tensorrt":  # tensorrt still writes its on-target build script
            entry[name] = {"status": "unavailable", "reason": reason}
            continue
        out_dir = artifact_dir / "compiled" / target.name / name
        try:
            compiled = backend.compile(onnx_path, target, out_dir)
        except ToolchainMissing as exc:  # a set-up step, not a broken model: say what to install
            entry[name] = {"status": "skipped", "reason": exc.one_line()}
            continue
        except MetaedgeError as exc:
            if len(names) == 1:
                raise
            entry[name] = {"status": "failed", "reason": str(exc)}
            continue
        rec: dict[str, Any] = {"path": _rel(compiled.path, artifact_dir), "compile_s": round(time.perf_counter() - t0, 3)}
        if name == "tensorrt" and not compiled.extra.get("built"):
            rec.update(status="deferred", reason=compiled.extra.get("reason"), trtexec=compiled.extra.get("trtexec"), int8=compiled.extra.get("int8"))
            entry[name] = rec
            continue
        # The tolerance is part of the key: a cached verdict holds only under the rule that gave it.
        cache_tag = f"{variant}|{getattr(tvm_options, 'tune_trials', 0) if name == 'tvm' else 0}|{tolerance}"
        cached = cache.get(sha, target.name, name, cache_tag) if cache is not None else None
        if cached and cached.get("status") == "ok":
            rec.update({k: v for k, v in cached.items() if k not in ("measured_at",)}, cached=True)
        else:
            rec.update(_measure_one(compiled, target, xs, ref, timing, device, tolerance, step))
            if cache is not None and rec.get("status") == "ok":
                cache.put(
                    sha,
                    target.name,
                    name,
                    rec["latency"],
                    cache_tag,
                    status="ok",
                    parity=rec["parity"],
                    parity_pass=rec["parity_pass"],
                    measured_on=rec["measured_on"],
                )
        entry[name] = rec
    entry.update(_choose(entry, names, target))
    return entry


def _choose(entry: dict[str, Any], names: list[str], target: Target) -> dict[str, Any]:
    measured = [
        (entry[n]["latency"]["p50_ms"], n) for n in names if isinstance(entry.get(n), dict) and entry[n].get("status") == "ok" and entry[n].get("parity_pass")
    ]
    if measured:
        best = min(measured)
        return {"chosen": best[1], "chosen_by": f"fastest p50 among {', '.join(n for _, n in sorted(measured))}"}
    built = [n for n in target.backends if n in names and isinstance(entry.get(n), dict) and entry[n].get("status") in ("compiled", "deferred")]
    if built:
        return {"chosen": built[0], "chosen_by": "target preference (nothing could be measured here)"}
    failed = [n for n in names if entry.get(n, {}).get("status") == "ok"]
    if failed:
        raise MetaedgeError(
            f"every measured backend failed the parity check for {target.name} ({', '.join(failed)})",
            "inspect the parity numbers in the manifest; compile with --backend onnxruntime",
        )
    reasons = "; ".join(f"{n}: {entry.get(n, {}).get('reason', '?')}" for n in names)
    raise MetaedgeError(f"no backend could compile for {target.name} ({reasons})", "install a backend or pick another --backend")


def _rel(path: Path, root: Path) -> str:
    try:
        return str(Path(path).resolve().relative_to(root.resolve()))
    except ValueError:
        return str(path)
