"""Open an artifact directory: pick the model file and backend, check its hash, wrap the engine."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from metaedge.artifacts import file_sha256, load_manifest
from metaedge.deploy.runtime.choice import choose_model
from metaedge.deploy.runtime.engines import Engine, open_engine
from metaedge.deploy.runtime.host import Host
from metaedge.deploy.runtime.spec import ModelSpec
from metaedge.errors import MetaedgeError

__all__ = ["LoadedModel", "load_model", "resolve_model_file"]


def resolve_model_file(
    root: Path, manifest: dict[str, Any], backend: str | None = None, model: str | None = None, host: Host | None = None
) -> tuple[Path, str]:
    """(file, backend) to load; see :func:`choose_model` for the order and the reason."""
    choice = choose_model(root, manifest, backend, model, host)
    return choice.path, choice.backend


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
    reason: str = ""  # why this file and backend (printed at start, shown by /healthz)
    target: str | None = None  # the compiled target it came from, if any
    root: Path | None = None  # the artifact directory

    @property
    def file(self) -> str:
        """The model file as a path inside the artifact (compiled/x86/tvm/model.so)."""
        try:
            return self.path.relative_to(self.root).as_posix() if self.root else self.path.name
        except ValueError:
            return self.path.name

    @property
    def batch_limit(self) -> int | None:
        return self.engine.batch_limit

    def warmup(self, batch_sizes: tuple[int, ...] = (1,), repeats: int = 2) -> None:
        """Run zeros through the engine so first requests do not pay for lazy allocation."""
        for n in batch_sizes:
            x = np.zeros((n,) + self.spec.chw, np.float32)
            for _ in range(repeats):
                self.infer(x)

    def infer(self, x: np.ndarray) -> tuple[np.ndarray, float]:
        """Validated batch -> (logits [N, K], inference milliseconds)."""
        t0 = time.perf_counter()
        logits = self.engine.run(x)
        ms = (time.perf_counter() - t0) * 1e3
        return self.spec.check_output(logits, x.shape[0]), ms

    def describe(self) -> dict[str, Any]:
        return {
            "model": self.spec.name,
            "file": self.file,
            "model_bytes": self.path.stat().st_size,
            "input_shape": list(self.spec.input_shape),
            "num_classes": self.spec.num_classes,
            **self.engine.describe(),
            "chosen_by": self.reason,
            "target": self.target,
        }


def load_model(
    artifact: str | Path, backend: str | None = None, model: str | None = None, threads: int = 1, cache_dir: str | Path | None = None, host: Host | None = None
) -> LoadedModel:
    root = Path(artifact)
    manifest = load_manifest(root)
    spec = ModelSpec.from_manifest(manifest)
    choice = choose_model(root, manifest, backend, model, host)
    _check_hash(root, choice.path, manifest)
    engine = open_engine(choice.backend, choice.path, spec.input_name, spec.input_shape, threads, Path(cache_dir) if cache_dir else None)
    return LoadedModel(spec, engine, choice.path, choice.backend, choice.reason, choice.target, root)
