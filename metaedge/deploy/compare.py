"""Output parity between a compiled artifact and the ONNX Runtime reference.

Two numbers per comparison: the largest absolute difference of the logits and the fraction of
samples whose arg-max class agrees (what matters for a classifier; int8 paths may shift logits a
little yet keep every decision). Torch-free and numpy-only.
"""
from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["compare_outputs", "parity_ok"]


def compare_outputs(ref: np.ndarray, out: np.ndarray) -> dict[str, Any]:
    """``ref``/``out``: logits of shape [N, classes] (or [classes]). Returns max_abs_err,
    mean_abs_err, top1_agreement (0..1) and the sample count."""
    ref = np.asarray(ref, dtype=np.float64)
    out = np.asarray(out, dtype=np.float64)
    if ref.shape != out.shape:
        raise ValueError(f"output shapes differ: reference {ref.shape} vs compiled {out.shape}")
    if ref.ndim == 1:
        ref, out = ref[None], out[None]
    ref2 = ref.reshape(ref.shape[0], -1)
    out2 = out.reshape(out.shape[0], -1)
    diff = np.abs(ref2 - out2)
    return {
        "max_abs_err": float(diff.max()) if diff.size else 0.0,
        "mean_abs_err": float(diff.mean()) if diff.size else 0.0,
        "top1_agreement": float(np.mean(ref2.argmax(axis=1) == out2.argmax(axis=1))),
        "samples": int(ref2.shape[0]),
    }


def parity_ok(result: dict[str, Any], *, atol: float = 1e-3, min_top1: float = 1.0) -> bool:
    """fp32 artifacts should pass ``atol``; quantized ones are judged on top-1 agreement only."""
    return result["top1_agreement"] >= min_top1 and (atol is None or result["max_abs_err"] <= atol)
