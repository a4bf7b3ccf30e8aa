"""The shared training settings every stage composes (torch-free, so settings are checked before torch is imported)."""

from __future__ import annotations

from dataclasses import dataclass

from metaedge.errors import MetaedgeError

__all__ = ["TrainConfig"]


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 10
    batch_size: int = 64
    lr: float = 0.05
    momentum: float = 0.9
    weight_decay: float = 4e-5
    label_smoothing: float = 0.1
    warmup_steps: int = 0
    distill_alpha: float = 0.0  # weight of the KD term when a teacher is given
    distill_temperature: float = 4.0
    seed: int = 0
    # NHWC runs MobileNets up to 2x faster on CPU, but torch 2.13's CPU conv backward corrupts the
    # heap for some shapes in NHWC (ResNet-20 x0.5, 16 px, a batch of 43 aborts with "double free"):
    # opt-in until that is fixed upstream.
    channels_last: bool = False

    def __post_init__(self) -> None:
        if self.epochs < 0 or self.batch_size < 1 or self.lr <= 0:
            raise MetaedgeError(
                f"bad training settings (epochs={self.epochs}, batch_size={self.batch_size}, lr={self.lr})", "use epochs >= 0, batch_size >= 1, lr > 0"
            )
