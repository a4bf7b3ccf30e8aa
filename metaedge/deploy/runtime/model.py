"""Open an artifact directory: pick the model file and backend, check its hash, wrap the engine."""
from __future__ import annotations

import importlib.util
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from metaedge.artifacts import file_sha256, load_manifest
from metaedge.deploy.runtime.engines import ENGINES, Engine, open_engine
from metaedge.deploy.runtime.spec import ModelSpec
from metaedge.errors import MetaedgeError

__all__ = ["LoadedModel", "load_model", "resolve_model_file"]

_SUFFIX_BACKEND = {".onnx": "onnxruntime", ".so": "tvm", ".engine": "tensorrt", ".plan": "tensorrt"}


def _importable(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def resolve_model_file(root: Path, manifest: dict[str, Any], backend: str | None = None,
                       model: str | None = None) -> tuple[Path, str]:
    """Which file to load and with which backend.

    Order: explicit ``model``/``backend``; the bundle's ``manifest["deploy"]`` (written by
    ``metaedge deploy``); else the best artifact present whose runtime imports here:
    a TensorRT engine, a TVM library under ``compiled/<target>/tvm/``, then ``model.onnx``.
    """
    if backend is not None and backend not in ENGINES:
        raise MetaedgeError(f"unknown runtime backend {backend!r}", f"choose one of: {', '.join(ENGINES)}")
    deploy = manifest.get("deploy") or {}
    rel = model or deploy.get("model")
    if rel:
        path = root / rel
        if not path.is_file():
            raise MetaedgeError(f"model file {path} does not exist", "check --model or the manifest's deploy.model")
        chosen = backend or deploy.get("backend") or _SUFFIX_BACKEND.get(path.suffix)
        if chosen is None:
            raise MetaedgeError(f"cannot tell the backend of {path.name}", f"pass --backend ({', '.join(ENGINES)})")
        return path, chosen
    candidates: list[tuple[str, Path]] = []
    if backend in (None, "tensorrt") and (backend or _importable("tensorrt")):
        candidates += [("tensorrt", p) for p in sorted(root.glob("*.engine"))]
        if backend == "tensorrt":
            candidates.append(("tensorrt", root / "model.onnx"))  # built on first start
    if backend in (None, "tvm") and (backend or _importable("tvm")):
        candidates += [("tvm", p) for p in sorted(root.glob("compiled/*/tvm/model.so"))]
        candidates.append(("tvm", root / "model.so"))
    if backend in (None, "onnxruntime"):
        candidates.append(("onnxruntime", root / "model.onnx"))
    for name, path in candidates:
        if path.is_file():
            return path, name
    raise MetaedgeError(
        f"no loadable model in {root}" + (f" for backend {backend}" if backend else ""),
        "point --artifact at a directory with model.onnx (or a compiled model)",
    )


def _check_hash(root: Path, path: Path, manifest: dict[str, Any]) -> None:
    # A truncated copy (interrupted scp, full disk) must fail loudly, not produce garbage logits.
    try:
        key = path.relative_to(root).as_posix()
    except ValueError:
        return
    entry = (manifest.get("files") or {}).get(key)
    if isinstance(entry, dict) and entry.get("sha256"):
        got = file_sha256(path)
        if got != entry["sha256"]:
            raise MetaedgeError(f"{path} does not match the manifest's sha256", "copy the artifact again; the file is corrupt or was replaced")


@dataclass
class LoadedModel:
    spec: ModelSpec
    engine: Engine
    path: Path
    backend: str

    def infer(self, x: np.ndarray) -> tuple[np.ndarray, float]:
        """Validated batch -> (logits [N, K], inference milliseconds)."""
        t0 = time.perf_counter()
        logits = self.engine.run(x)
        ms = (time.perf_counter() - t0) * 1e3
        return self.spec.check_output(logits, x.shape[0]), ms

    def describe(self) -> dict[str, Any]:
        return {
            "model": self.spec.name,
            "file": self.path.name,
            "model_bytes": self.path.stat().st_size,
            "input_shape": list(self.spec.input_shape),
            "num_classes": self.spec.num_classes,
            **self.engine.describe(),
        }


def load_model(artifact: str | Path, backend: str | None = None, model: str | None = None, threads: int = 1,
               cache_dir: str | Path | None = None) -> LoadedModel:
    root = Path(artifact)
    manifest = load_manifest(root)
    spec = ModelSpec.from_manifest(manifest)
    path, chosen = resolve_model_file(root, manifest, backend, model)
    _check_hash(root, path, manifest)
    engine = open_engine(chosen, path, spec.input_name, spec.input_shape, threads,
                         Path(cache_dir) if cache_dir else None)
    return LoadedModel(spec, engine, path, chosen)
