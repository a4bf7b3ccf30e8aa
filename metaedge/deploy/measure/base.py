"""One measurement interface for every place a model can run: here, a device over TVM RPC, a
runtime bundle over HTTP.

Modelled on TVM's ``meta_schedule/runner``: a :class:`Runner` is built from one immutable config
and turns a batch of :class:`MeasureInput` into one :class:`MeasureResult` each, in order. Callers
(compile, the per-layer latency table, the CLI) never branch on where the model runs; they ask
:func:`metaedge.deploy.measure.runner_for` for the runner that can measure an artifact, and get a
:class:`NotMeasurable` (a one-line error saying where it can be measured) when none can.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

from metaedge.deploy.backends.base import CompiledModel
from metaedge.errors import MetaedgeError
from metaedge.latency import LatencyStats

__all__ = ["MeasureInput", "MeasureResult", "NotMeasurable", "Runner", "random_input", "samples_of"]


class NotMeasurable(MetaedgeError):
    """No runner here can time this artifact; the message says where it can be timed."""


@dataclass(frozen=True)
class MeasureInput:
    """What to measure. ``artifact``: a compiled model (None for an HTTP runner: the server holds
    the model). ``inputs``: ``[k, *input_shape]`` samples whose outputs come back (for parity);
    None times a seeded random input and returns no outputs. ``batch``: the request batch of an
    HTTP runner (compiled artifacts have a static batch of one)."""

    artifact: CompiledModel | None
    inputs: np.ndarray | None = field(default=None, compare=False, hash=False)
    batch: int = 1
    tag: str = ""  # the caller's label, echoed in the result


@dataclass(frozen=True)
class MeasureResult:
    latency: LatencyStats
    outputs: np.ndarray | None  # [k, ...] for MeasureInput.inputs, else None
    measured_on: str  # "local", the device spec, or the runtime URL
    seconds: float  # wall time of the whole job (upload, load, runs)
    tag: str = ""
    detail: dict[str, Any] = field(default_factory=dict)  # runner-specific extras (HTTP: server time, throughput)
    samples_ms: tuple[float, ...] = field(default=(), repr=False)  # raw samples where the runner keeps them


class Runner(ABC):
    """Measures inputs somewhere; one config per runner, fixed at construction."""

    config: Any

    @abstractmethod
    def run(self, inputs: Sequence[MeasureInput]) -> list[MeasureResult]: ...

    def measure(self, inp: MeasureInput) -> MeasureResult:
        return self.run([inp])[0]


def random_input(shape: Sequence[int], seed: int = 0) -> np.ndarray:
    """The seeded input timed when the caller gives none (latency does not depend on the values)."""
    return np.random.default_rng(seed).random(tuple(shape), dtype=np.float32)


def samples_of(inp: MeasureInput) -> list[np.ndarray]:
    """The single inputs to run: each row of ``inputs``, or one seeded random input."""
    if inp.inputs is not None:
        return [np.ascontiguousarray(s, dtype=np.float32) for s in np.asarray(inp.inputs)]
    assert inp.artifact is not None
    return [random_input(inp.artifact.input_shape)]
