"""What the model expects, read from the artifact manifest, and input validation against it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np

from metaedge.deploy.runtime.errors import InputError
from metaedge.errors import MetaedgeError

__all__ = ["MAX_BATCH", "ModelSpec"]

# Upper bound on one request's batch: keeps a single request from exhausting device memory.
MAX_BATCH = 64


@dataclass(frozen=True)
class ModelSpec:
    """Input/output contract of one exported model (``manifest["model"]``)."""

    name: str
    input_name: str
    output_name: str
    input_shape: tuple[int, int, int, int]  # [1, C, H, W]; the batch dimension is dynamic
    num_classes: int | None
    mean: tuple[float, ...]
    std: tuple[float, ...]
    dtype: str = "float32"

    @property
    def chw(self) -> tuple[int, int, int]:
        return self.input_shape[1], self.input_shape[2], self.input_shape[3]

    @classmethod
    def from_manifest(cls, manifest: Mapping[str, Any]) -> "ModelSpec":
        model = manifest.get("model")
        if not isinstance(model, Mapping):
            raise MetaedgeError("manifest has no 'model' section", "re-export the artifact with `metaedge compress`")
        shape = model.get("input_shape")
        if not (isinstance(shape, (list, tuple)) and len(shape) == 4 and all(isinstance(d, int) and d > 0 for d in shape)):
            raise MetaedgeError(
                f"manifest model.input_shape must be [N, C, H, W] positive integers, got {shape!r}",
                "re-export the artifact with `metaedge compress`",
            )
        channels = shape[1]
        pre = model.get("preprocess") or {}
        mean = tuple(float(v) for v in pre.get("mean", [0.0] * channels))
        std = tuple(float(v) for v in pre.get("std", [1.0] * channels))
        if len(mean) != channels or len(std) != channels or any(s == 0 for s in std):
            raise MetaedgeError(
                f"manifest preprocess mean/std must have {channels} entries and non-zero std, got {mean} / {std}",
                "fix model.preprocess in manifest.json",
            )
        return cls(
            name=str(model.get("name", "model")),
            input_name=str(model.get("input_name", "input")),
            output_name=str(model.get("output_name", "logits")),
            input_shape=(1, int(shape[1]), int(shape[2]), int(shape[3])),
            num_classes=int(model["num_classes"]) if model.get("num_classes") is not None else None,
            mean=mean,
            std=std,
        )

    def validate(self, x: Any) -> np.ndarray:
        """Return ``x`` as a contiguous float32 [N, C, H, W] batch, or raise :class:`InputError`.

        Accepts one sample [C, H, W] (a batch of one is added) or a batch [N, C, H, W]. The dtype must
        be float32: silently casting ints or float64 would hide a client sending the wrong tensor.
        """
        if not isinstance(x, np.ndarray):
            raise InputError(f"input must be an array, got {type(x).__name__}")
        if x.dtype != np.float32:
            raise InputError(f"input dtype must be float32, got {x.dtype}")
        c, h, w = self.chw
        if x.ndim == 3:
            x = x[None]
        if x.ndim != 4 or tuple(x.shape[1:]) != (c, h, w):
            raise InputError(f"input shape must be [N, {c}, {h}, {w}] or [{c}, {h}, {w}], got {list(x.shape)}")
        if not 1 <= x.shape[0] <= MAX_BATCH:
            raise InputError(f"batch size must be between 1 and {MAX_BATCH}, got {x.shape[0]}")
        if not np.isfinite(x).all():
            raise InputError("input contains NaN or infinity")
        return np.ascontiguousarray(x)

    def from_nested_list(self, data: Any) -> np.ndarray:
        """JSON nested lists -> float32 array (JSON carries no dtype, so numbers are read as float32)."""
        if not isinstance(data, list):
            raise InputError(f"'input' must be a nested list of numbers, got {type(data).__name__}")
        try:
            with np.errstate(over="ignore"):  # 1e39 becomes inf, which validate() rejects with a message
                arr = np.array(data, dtype=np.float32)
        except (ValueError, TypeError, OverflowError) as exc:
            raise InputError(f"'input' must be a rectangular nested list of numbers ({_first_line(exc)})") from None
        if arr.dtype == object or arr.size == 0:
            raise InputError("'input' must be a non-empty rectangular nested list of numbers")
        return self.validate(arr)

    def check_output(self, logits: np.ndarray, batch: int) -> np.ndarray:
        logits = np.asarray(logits)
        if logits.ndim != 2 or logits.shape[0] != batch:
            raise RuntimeError(f"model returned shape {list(logits.shape)}, expected [{batch}, num_classes]")
        return logits.astype(np.float32, copy=False)


def _first_line(exc: Exception) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__
