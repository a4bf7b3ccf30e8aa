"""One small interface for every inference backend: compile, load, run, time.

A backend turns an exported ONNX file into an artifact for a target (``compile``), opens that
artifact (``load``) and gives a :class:`LoadedArtifact` whose ``run`` maps one numpy batch to logits.
Timing defaults to wall-clock around ``run``; backends with a better timer (TVM's
``time_evaluator``) override :meth:`Backend.time`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Protocol

import numpy as np

from metaedge.errors import MetaedgeError
from metaedge.latency import LatencyStats, TimingConfig, time_callable

__all__ = ["Backend", "CompiledModel", "LoadedArtifact", "get_backend", "list_backends", "register_backend"]


@dataclass(frozen=True)
class CompiledModel:
    """What ``compile`` produced: the file to ship plus what is needed to load it."""

    backend: str
    target: str
    path: Path
    input_name: str
    input_shape: tuple[int, ...]
    extra: dict[str, Any] = field(default_factory=dict)


class LoadedArtifact(Protocol):
    """A compiled artifact opened for inference (not a measurement Runner: see deploy/measure/)."""

    def run(self, x: np.ndarray) -> np.ndarray: ...


class Backend(ABC):
    name: ClassVar[str]

    def unavailable_reason(self) -> str | None:
        """None when the backend can run here, else one line saying why not and what to install."""
        return None

    @abstractmethod
    def compile(self, onnx_path: Path, target: Any, out_dir: Path) -> CompiledModel: ...

    @abstractmethod
    def load(self, compiled: CompiledModel, threads: int = 1) -> LoadedArtifact: ...

    def time(self, runner: LoadedArtifact, x: np.ndarray, config: TimingConfig = TimingConfig()) -> LatencyStats:
        return time_callable(lambda: runner.run(x), config)


_BACKENDS: dict[str, type[Backend]] = {}


def register_backend(cls: type[Backend]) -> type[Backend]:
    _BACKENDS[cls.name] = cls
    return cls


def list_backends() -> list[str]:
    _import_builtin()
    return sorted(_BACKENDS)


def get_backend(name: str) -> Backend:
    _import_builtin()
    if name not in _BACKENDS:
        raise MetaedgeError(f"unknown backend {name!r}", f"choose one of: {', '.join(sorted(_BACKENDS))}")
    return _BACKENDS[name]()


def _import_builtin() -> None:
    # Imported lazily: each backend module imports its runtime only when used.
    import importlib

    for mod in ("onnxruntime", "tvm", "tensorrt"):
        try:
            importlib.import_module(f"metaedge.deploy.backends.{mod}")
        except ModuleNotFoundError as exc:
            if exc.name != f"metaedge.deploy.backends.{mod}":
                raise
