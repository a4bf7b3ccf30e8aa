"""Which model file and backend to serve from an artifact directory, and why.

Order: an explicit ``--model``; a bundle's ``manifest["deploy"]``; the backend the compile stage
chose (``manifest["compiled"][target]["chosen"]``) for a target that runs on this machine; else
ONNX Runtime on ``model.onnx``. A library built for another architecture or for a GPU this machine
lacks is never picked (``dlopen`` of an aarch64 ``.so`` on x86 kills the server before ``/healthz``).
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, List, Mapping, Optional, Tuple

from metaedge.deploy.runtime.engines import ENGINES
from metaedge.deploy.runtime.host import Host, elf_arch, target_facts
from metaedge.errors import MetaedgeError

__all__ = ["SUFFIX_BACKEND", "Choice", "choose_model"]

SUFFIX_BACKEND = {".onnx": "onnxruntime", ".so": "tvm", ".engine": "tensorrt", ".plan": "tensorrt"}
_HOST_TARGET = {"x86_64": "x86", "aarch64": "arm64"}  # the built-in target to compile for this machine


@dataclass(frozen=True)
class Choice:
    path: Path
    backend: str
    reason: str
    target: Optional[str] = None


def _importable(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def _rel(root: Path, path: Path) -> str:
    try:
        return path.relative_to(root).as_posix()
    except ValueError:
        return str(path)


def _foreign_library(path: Path, backend: str, host: Host) -> Optional[str]:
    """The library's arch when it is a TVM library that cannot load here, else None."""
    if backend != "tvm":
        return None
    arch = elf_arch(path)
    return arch if arch is not None and arch != host.arch else None


def _refuse_foreign(root: Path, path: Path, backend: str, host: Host) -> None:
    arch = _foreign_library(path, backend, host)
    if arch is not None:
        raise MetaedgeError(
            f"{_rel(root, path)} is an {arch} library and this machine is {host.arch}",
            f"serve model.onnx with --backend onnxruntime, or compile for this machine (metaedge compile --target {_HOST_TARGET.get(host.arch, '<target>')})",
        )


def _matching_targets(manifest: Mapping[str, Any], host: Host) -> Tuple[List[Tuple[str, Mapping[str, Any]]], List[str]]:
    """Compiled targets that run here, best first; and the others as "name (arch)" for messages."""
    compiled = manifest.get("compiled") or {}
    ranked: List[Tuple[Tuple[int, int, int], str, Mapping[str, Any]]] = []
    others: List[str] = []
    for i, (name, section) in enumerate(compiled.items() if isinstance(compiled, Mapping) else ()):
        if not isinstance(section, Mapping):
            continue
        arch, gpu = target_facts(str(name), section)
        if not host.runs(arch, gpu):
            others.append(f"{name} ({arch or 'unknown arch'}{', GPU' if gpu else ''})")
            continue
        # A GPU target on a GPU machine is what the board is for; a measured choice beats a preference.
        measured = str(section.get("chosen_by", "")).startswith("fastest")
        ranked.append(((0 if gpu else 1, 0 if measured else 1, i), str(name), section))
    return [(name, section) for _, name, section in sorted(ranked, key=lambda r: r[0])], others


def _compiled_file(root: Path, name: str, section: Mapping[str, Any], backend: str) -> Optional[Path]:
    rec = section.get(backend)
    if not isinstance(rec, Mapping) or rec.get("status") in ("failed", "unavailable"):
        return None
    rel = rec.get("path")
    recorded = root / rel if isinstance(rel, str) and rel else None
    if backend == "tensorrt":
        if recorded is not None and recorded.suffix in (".engine", ".plan") and recorded.is_file():
            return recorded
        # Deferred: the engine is built from the ONNX at first start (and cached).
        cands: List[Optional[Path]] = [root / "compiled" / name / "tensorrt" / "model.onnx", root / "model.onnx"]
    elif backend == "onnxruntime":
        cands = [recorded, root / "model.onnx"]
    else:
        cands = [recorded, root / "compiled" / name / "tvm" / "model.so"]
    return next((p for p in cands if p is not None and p.is_file()), None)


def _tvm_libraries(root: Path, manifest: Mapping[str, Any], host: Host) -> Tuple[List[Path], List[str]]:
    """TVM libraries here that load on this machine, and the rejected ones as "path (arch)"."""
    compiled = manifest.get("compiled") or {}
    ok: List[Path] = []
    rejected: List[str] = []
    for lib in sorted(root.glob("compiled/*/tvm/model.so")) + [root / "model.so"]:
        if not lib.is_file():
            continue
        name = lib.parent.parent.name if lib.parent.name == "tvm" else ""
        section = compiled.get(name) if isinstance(compiled, Mapping) else None
        arch, gpu = target_facts(name, section if isinstance(section, Mapping) else {})
        lib_arch = elf_arch(lib) or arch
        if host.runs(lib_arch, gpu):
            ok.append(lib)
        else:
            rejected.append(f"{_rel(root, lib)} ({lib_arch or 'unknown arch'}{', GPU' if gpu else ''})")
    return ok, rejected


def choose_model(
    root: Path,
    manifest: Mapping[str, Any],
    backend: Optional[str] = None,
    model: Optional[str] = None,
    host: Optional[Host] = None,
    importable: Callable[[str], bool] = _importable,
) -> Choice:
    """Decide the file and backend to serve; ``reason`` says why (the runner prints it)."""
    if backend is not None and backend not in ENGINES:
        raise MetaedgeError(f"unknown runtime backend {backend!r}", f"choose one of: {', '.join(ENGINES)}")
    host = host or Host.detect()
    deploy = manifest.get("deploy") or {}
    if model or (deploy.get("model") and backend in (None, deploy.get("backend"))):
        rel = model or deploy["model"]
        path = root / rel
        if not path.is_file():
            raise MetaedgeError(f"model file {path} does not exist", "check --model or the manifest's deploy.model")
        chosen = backend or (None if model else deploy.get("backend")) or SUFFIX_BACKEND.get(path.suffix)
        if chosen is None:
            raise MetaedgeError(f"cannot tell the backend of {path.name}", f"pass --backend ({', '.join(ENGINES)})")
        _refuse_foreign(root, path, chosen, host)
        why = "--model given" if model else f"the bundle's deploy section (target {deploy.get('target', '?')})"
        return Choice(path, chosen, why, None if model else deploy.get("target"))

    targets, others = _matching_targets(manifest, host)
    skipped: List[str] = []
    for name, section in targets:
        want = backend or section.get("chosen")
        if want not in ENGINES:
            continue
        if backend is None and not importable(want):
            skipped.append(f"{name} chose {want}, which is not installed here")
            continue
        found = _compiled_file(root, name, section, want)
        if found is None:
            if backend is None:
                skipped.append(f"{name} chose {want} but its artifact is missing")
            continue
        arch = _foreign_library(found, want, host)
        if arch is not None:  # the manifest says one thing, the file another: trust the file
            skipped.append(f"{_rel(root, found)} is an {arch} library")
            continue
        if backend is None:
            why = f"the compile stage chose it for target {name} ({section.get('chosen_by', 'no reason recorded')})"
        else:
            why = f"--backend {backend}, compiled for target {name}"
        passed_over = "".join(f"{note}; " for note in skipped)
        return Choice(found, want, f"{passed_over}{why}; {name} runs on this {host.arch} machine", name)
    return _fallback(root, manifest, backend, host, importable, others, skipped)


def _fallback(
    root: Path, manifest: Mapping[str, Any], backend: Optional[str], host: Host, importable: Callable[[str], bool], others: List[str], skipped: List[str]
) -> Choice:
    if others and not skipped:
        why = f"no compiled target runs on this {host.arch} machine (compiled for: {', '.join(others)})"
    elif skipped:
        why = "; ".join(skipped)
    else:
        why = "the manifest records no compile-stage choice"
    onnx = root / "model.onnx"
    if backend in (None, "onnxruntime") and onnx.is_file():
        return Choice(onnx, "onnxruntime", f"{why}; ONNX Runtime on model.onnx" if backend is None else "--backend onnxruntime")
    libs, rejected = _tvm_libraries(root, manifest, host)
    if backend in (None, "tvm") and libs:
        return Choice(libs[0], "tvm", f"{why}; {_rel(root, libs[0])} is the TVM library for {host.arch} here")
    if backend == "tvm":
        seen = f" ({', '.join(rejected)})" if rejected else ""
        raise MetaedgeError(
            f"no TVM library for this {host.arch} machine in {root}{seen}",
            f"compile for this machine (metaedge compile --target {_HOST_TARGET.get(host.arch, '<target>')}) or serve model.onnx with --backend onnxruntime",
        )
    if backend == "tensorrt" or (backend is None and importable("tensorrt")):
        engines: List[Path] = sorted(root.glob("*.engine"))
        if backend == "tensorrt":
            engines.append(onnx)  # the engine is built at first start
        for path in engines:
            if path.is_file():
                return Choice(path, "tensorrt", f"{why}; TensorRT on {path.name}" if backend is None else "--backend tensorrt")
    raise MetaedgeError(
        f"no loadable model in {root}" + (f" for backend {backend}" if backend else ""),
        "point --artifact at a directory with model.onnx (or a model compiled for this machine)",
    )
