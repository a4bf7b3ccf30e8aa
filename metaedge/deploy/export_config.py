"""Settings of the fp32 ONNX export and its parity gate (torch-free, so settings are checked before torch is imported)."""

from __future__ import annotations

from dataclasses import dataclass

from metaedge.parity import FP32, Tolerance

__all__ = ["ExportConfig"]


@dataclass(frozen=True)
class ExportConfig:
    opset: int = 18
    atol: float = FP32.atol  # type: ignore[assignment]  # max |onnx - torch| over all logits
    min_top1_agreement: float = FP32.min_top1_agreement  # fraction of inputs whose arg-max must agree
    parity_samples: int = 256

    @property
    def tolerance(self) -> Tolerance:
        return Tolerance("fp32", atol=self.atol, min_top1_agreement=self.min_top1_agreement)
