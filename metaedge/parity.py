"""The one parity rule: does an artifact compute what its reference computes?

Every gate compares logits the same way (:func:`compare`) and judges them by the tolerance of the
artifact's kind:

* ``fp32`` (export vs PyTorch, a compiled fp32 artifact vs ONNX Runtime): the largest absolute
  logit difference is bounded by ``atol`` and the arg-max decisions must agree on
  ``min_top1_agreement`` of the inputs.
* ``quantized`` (a QDQ graph vs its fake-quant model, a compiled int8 artifact vs ONNX Runtime):
  errors are counted in steps of the output's quantizer (its scale). The QDQ graph computes what
  the eval-mode fake-quant model computes, but not bit for bit: conv sums differ in float rounding
  order and ORT's integer kernels (QLinearConv, QLinearAdd, QGemm) requantize each layer with
  fixed-point multipliers and their own rounding. Either moves a value that sits on a rounding
  boundary by one step, and the flips spread through the layers after it. Measured on ResNet-20
  and MobileNetV2 trained on digits (269 validation images, w8/w2/w1, both QDQ profiles): max
  error 2-12 steps, mean 0.02-0.92 steps, top-1 agreement >= 0.996. The bounds are about twice
  the worst of those; a wrong graph (other weights, a missing quantizer, a shifted zero point) is
  off by tens of steps on average.

Layer 0: numpy only, so the gates in ``compress/`` and ``deploy/`` and the torch-free runtime can
all read it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from metaedge.errors import MetaedgeError

__all__ = ["FP32", "KINDS", "QUANTIZED", "ParityError", "ParityReport", "Tolerance", "compare"]

KINDS = ("fp32", "quantized")


class ParityError(MetaedgeError):
    """The artifact disagrees with the model it came from."""


@dataclass(frozen=True)
class Tolerance:
    """How far an artifact of ``kind`` may be from its reference. ``atol`` bounds the max error
    absolutely (fp32; for a quantized artifact it replaces the ``max_steps`` bound)."""

    kind: str
    atol: float | None = None
    max_steps: float | None = None
    mean_steps: float | None = None
    min_top1_agreement: float = 1.0

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise MetaedgeError(f"unknown artifact kind {self.kind!r} for parity", f"use one of: {', '.join(KINDS)}")
        if self.kind == "fp32" and not (self.atol is not None and self.atol > 0):
            raise MetaedgeError(f"fp32 parity tolerance needs a positive atol, not {self.atol!r}", "pass e.g. 1e-3")
        if self.kind == "quantized" and not (self.mean_steps and self.mean_steps > 0 and (self.atol or (self.max_steps and self.max_steps > 0))):
            raise MetaedgeError("quantized parity tolerance needs positive max_steps (or atol) and mean_steps", "pass e.g. max_steps=24, mean_steps=2")
        if not 0.0 <= self.min_top1_agreement <= 1.0:
            raise MetaedgeError(f"top-1 agreement {self.min_top1_agreement} is outside 0..1", "pass a fraction such as 0.99")


FP32 = Tolerance("fp32", atol=1e-3, min_top1_agreement=1.0)
QUANTIZED = Tolerance("quantized", max_steps=24.0, mean_steps=2.0, min_top1_agreement=0.99)


@dataclass(frozen=True)
class ParityReport:
    kind: str
    max_abs_err: float
    mean_abs_err: float
    top1_agreement: float
    samples: int
    atol: float  # the bound the max error was held to (absolute)
    mean_atol: float | None  # quantized: the bound on the mean error (absolute)
    min_top1_agreement: float
    step: float | None  # quantized: the output's quantization step
    step_from: str | None  # where ``step`` came from
    passed: bool

    def to_dict(self) -> dict:
        d = asdict(self)
        if self.step:
            d["max_err_steps"] = self.max_abs_err / self.step
            d["mean_err_steps"] = self.mean_abs_err / self.step
        return d

    def describe(self) -> str:
        """One line: each measured number beside the bound it was held to."""
        if self.step:
            return (
                f"max abs error {self.max_abs_err:.3g} ({self.max_abs_err / self.step:.1f} steps, tolerance "
                f"{self.atol / self.step:.1f}), mean {self.mean_abs_err:.3g} ({self.mean_abs_err / self.step:.2f} steps, "
                f"tolerance {(self.mean_atol or 0) / self.step:g}), top-1 agreement {self.top1_agreement:.4f} "
                f"(need {self.min_top1_agreement:g})"
            )
        return f"max abs error {self.max_abs_err:.3g} (tolerance {self.atol:g}), top-1 agreement {self.top1_agreement:.4f} (need {self.min_top1_agreement:g})"

    def require(self, what: str, fix: str) -> "ParityReport":
        """Raise :class:`ParityError` naming ``what`` when the comparison failed."""
        if not self.passed:
            raise ParityError(f"parity gate failed for {what}: {self.describe()}", fix)
        return self


def compare(
    reference: np.ndarray, candidate: np.ndarray, tolerance: Tolerance = FP32, *, step: float | None = None, step_from: str | None = None
) -> ParityReport:
    """Compare two logit batches ([N, classes], or [classes] for one input) under ``tolerance``.

    For a quantized artifact ``step`` is the output's quantization step; without one, an 8-bit
    step of the reference's range is used."""
    ref = np.asarray(reference, dtype=np.float64)
    out = np.asarray(candidate, dtype=np.float64)
    if ref.shape != out.shape:
        raise ParityError(
            f"output shapes differ: reference {ref.shape}, artifact {out.shape}", "re-export the model: the artifact does not have the reference's outputs"
        )
    ref2 = ref.reshape(1, -1) if ref.ndim <= 1 else ref.reshape(ref.shape[0], -1)
    out2 = out.reshape(ref2.shape)
    diff = np.abs(ref2 - out2)
    max_err = float(diff.max()) if diff.size else 0.0
    mean_err = float(diff.mean()) if diff.size else 0.0
    agree = float(np.mean(ref2.argmax(axis=1) == out2.argmax(axis=1)))
    mean_atol = None
    if tolerance.kind == "quantized":
        if step is None:
            step, step_from = max(1e-6, float(np.abs(ref2).max(initial=0.0)) / 127.0), "max|logit| / 127"
        atol = float(tolerance.atol) if tolerance.atol is not None else float(tolerance.max_steps) * step  # type: ignore[arg-type]
        mean_atol = float(tolerance.mean_steps) * step  # type: ignore[arg-type]
        passed = max_err <= atol and mean_err <= mean_atol
    else:
        step, step_from = None, None
        atol = float(tolerance.atol)  # type: ignore[arg-type]
        passed = max_err <= atol
    passed = passed and agree >= tolerance.min_top1_agreement
    return ParityReport(tolerance.kind, max_err, mean_err, agree, int(ref2.shape[0]), atol, mean_atol, tolerance.min_top1_agreement, step, step_from, passed)
