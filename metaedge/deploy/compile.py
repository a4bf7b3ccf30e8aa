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

import platform
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from metaedge.artifacts import file_sha256
from metaedge.deploy.backends.base import Backend, get_backend
from metaedge.deploy.compare import compare_outputs
from metaedge.errors import MetaedgeError
from metaedge.latency import TimingConfig
from metaedge.targets.toolchain import ToolchainMissing

__all__ = ["compile_for_target", "make_backend", "parity_inputs", "reference_outputs"]

PARITY_SAMPLES = 4
FP32_ATOL = 1e-3  # relative to the logits' scale (see _parity_pass)


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


def _is_quantized(onnx_path: Path) -> bool:
    from metaedge.deploy.backends.tensorrt import is_qdq

    return is_qdq(onnx_path)


def _parity_pass(parity: dict[str, Any], ref: np.ndarray, quantized: bool) -> bool:
    # fp32 artifacts must match ORT closely; quantized graphs run int8 kernels in ORT but fake-quant
    # fp32 in TVM, so small logit shifts are expected and only the decisions are judged.
    if quantized:
        return parity["top1_agreement"] >= 0.75
    scale = max(1.0, float(np.abs(ref).max()))
    return parity["top1_agreement"] == 1.0 and parity["max_abs_err"] <= FP32_ATOL * scale


def _resolve_backends(backends: str | Sequence[str], target) -> list[str]:
    if isinstance(backends, str):
        if backends == "auto":
            return list(target.backends)
        backends = [b.strip() for b in backends.split(",") if b.strip()]
    from metaedge.deploy.backends.base import list_backends

    known = list_backends()
    bad = [b for b in backends if b not in known]
    if bad:
        raise MetaedgeError(f"unknown backend {bad[0]!r}", f"choose auto or one of: {', '.join(known)}")
    return list(backends)


def _measure_one(backend: Backend, compiled, target, onnx_path: Path, xs: np.ndarray, ref: np.ndarray,
                 timing: TimingConfig, device: str | None, quantized: bool) -> dict[str, Any]:
    """Parity + latency for one compiled artifact: locally, remotely, or not at all (with why)."""
    if device is not None:
        if backend.name != "tvm":
            return {"status": "compiled", "reason": f"{backend.name} cannot be measured over TVM RPC; "
                                                     "measure it with the device runner (metaedge deploy)"}
        from metaedge.targets.measure.rpc import measure_remote

        res = measure_remote(compiled.path, device, compiled.input_shape, timing,
                             device_kind=compiled.extra.get("device", "cpu"), x=xs)
        parity = compare_outputs(ref.reshape(len(xs), -1), res.output.reshape(len(xs), -1))
        return {"status": "ok", "latency": res.latency.to_dict(), "parity": parity, "measured_on": str(device),
                "parity_pass": _parity_pass(parity, ref, quantized)}
    if not target.runs_here() and backend.name != "onnxruntime" or (
            backend.name == "onnxruntime" and target.arch != platform.machine()):
        return {"status": "compiled", "reason": f"built for {target.name} ({target.arch}"
                f"{', GPU' if target.is_gpu else ''}); measure it on the device with --device tracker-host:port/key"}
    if target.is_gpu and backend.name == "onnxruntime":
        return {"status": "compiled", "reason": "onnxruntime here is the CPU build; GPU latency needs onnxruntime-gpu on the target"}
    runner = backend.load(compiled, threads=timing.threads)
    outs = np.stack([runner.run(x) for x in xs])
    parity = compare_outputs(ref.reshape(len(xs), -1), outs.reshape(len(xs), -1))
    lat = backend.time(runner, xs[0], timing)
    return {"status": "ok", "latency": lat.to_dict(), "parity": parity, "measured_on": "local",
            "parity_pass": _parity_pass(parity, ref, quantized)}


def compile_for_target(onnx_path: Path | str, target: Any, artifact_dir: Path | str, backends: str | Sequence[str] = "auto",
                       timing: TimingConfig = TimingConfig(), device: str | None = None, *, tvm_options: Any = None,
                       parity_samples: int = PARITY_SAMPLES, cache: Any = None) -> dict[str, Any]:
    """Compile ``onnx_path`` for ``target`` (a name or Target) into ``artifact_dir/compiled/<target>/``
    and return the target's manifest section ``{<backend>: {...}, "chosen": ..., "chosen_by": ...}``.

    ``device`` (``tracker-host:port/key`` or ``host:port``) measures TVM artifacts on a remote device.
    ``cache`` (a :class:`~metaedge.targets.measure.cache.LatencyCache`) skips re-measuring the same
    model bytes on the same target/backend/device."""
    from metaedge.targets.registry import get_target

    target = get_target(target)
    onnx_path, artifact_dir = Path(onnx_path), Path(artifact_dir)
    if not onnx_path.is_file():
        raise MetaedgeError(f"{onnx_path} does not exist", "export the model first (metaedge export / compress)")
    names = _resolve_backends(backends, target)
    from metaedge.deploy.backends.tvm import onnx_input_spec

    input_name, shape, _ = onnx_input_spec(onnx_path)
    shape = (1,) + tuple(shape[1:])
    xs = parity_inputs(shape, parity_samples)
    ref = reference_outputs(onnx_path, xs)
    quantized = _is_quantized(onnx_path)
    sha = file_sha256(onnx_path)
    variant = str(device or "local")
    # arch/gpu let the torch-free runner tell which target's choice runs on the machine it is on.
    entry: dict[str, Any] = {"target": target.name, "arch": target.arch, "gpu": target.is_gpu,
                             "device": device, "onnx_sha256": sha, "quantized": quantized,
                             "timing": {"warmup": timing.warmup, "repeats": timing.repeats, "threads": timing.threads}}
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
            rec.update(status="deferred", reason=compiled.extra.get("reason"), trtexec=compiled.extra.get("trtexec"),
                       int8=compiled.extra.get("int8"))
            entry[name] = rec
            continue
        cache_tag = f"{variant}|{getattr(tvm_options, 'tune_trials', 0) if name == 'tvm' else 0}"
        cached = cache.get(sha, target.name, name, cache_tag) if cache is not None else None
        if cached and cached.get("status") == "ok":
            rec.update({k: v for k, v in cached.items() if k not in ("measured_at",)}, cached=True)
        else:
            rec.update(_measure_one(backend, compiled, target, onnx_path, xs, ref, timing, device, quantized))
            if cache is not None and rec.get("status") == "ok":
                cache.put(sha, target.name, name, rec["latency"], cache_tag, status="ok", parity=rec["parity"],
                          parity_pass=rec["parity_pass"], measured_on=rec["measured_on"])
        entry[name] = rec
    entry.update(_choose(entry, names, target))
    return entry


def _choose(entry: dict[str, Any], names: list[str], target) -> dict[str, Any]:
    measured = [(entry[n]["latency"]["p50_ms"], n) for n in names
                if isinstance(entry.get(n), dict) and entry[n].get("status") == "ok" and entry[n].get("parity_pass")]
    if measured:
        best = min(measured)
        return {"chosen": best[1], "chosen_by": f"fastest p50 among {', '.join(n for _, n in sorted(measured))}"}
    built = [n for n in target.backends if n in names and isinstance(entry.get(n), dict)
             and entry[n].get("status") in ("compiled", "deferred")]
    if built:
        return {"chosen": built[0], "chosen_by": "target preference (nothing could be measured here)"}
    failed = [n for n in names if entry.get(n, {}).get("status") == "ok"]
    if failed:
        raise MetaedgeError(f"every measured backend failed the parity check for {target.name} ({', '.join(failed)})",
                            "inspect the parity numbers in the manifest; compile with --backend onnxruntime")
    reasons = "; ".join(f"{n}: {entry.get(n, {}).get('reason', '?')}" for n in names)
    raise MetaedgeError(f"no backend could compile for {target.name} ({reasons})", "install a backend or pick another --backend")


def _rel(path: Path, root: Path) -> str:
    try:
        return str(Path(path).resolve().relative_to(root.resolve()))
    except ValueError:
        return str(path)
