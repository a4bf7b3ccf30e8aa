"""Settings of VIB gate training (the budget, channel multiple and fine-tune are the shared PruneConfig's)."""

from __future__ import annotations

from dataclasses import dataclass

from metaedge.errors import MetaedgeError

__all__ = ["PRESETS", "VIBConfig"]


@dataclass(frozen=True)
class VIBConfig:
    epochs: int = 3  # gate training, weights trained with the gates (the PruningNet's epochs in every preset)
    lr: float = 0.01  # weights: Nesterov SGD, cosine; low, they start trained
    gate_lr: float = 0.03  # gates (mu, log sigma^2): Adam, cosine; each gate moves ~gate_lr per step whatever its gradient's scale
    # KL weight (the cost-weighted mean over gated channels of log(1 + mu^2 / sigma^2), against the batch loss):
    # the start value when budget_control is on. A fixed gamma is data-dependent: 2, chosen on digits, closed all
    # 448 gates of ResNet-20 on Fashion-MNIST at 25% MACs (mu -> 0 everywhere, 10% test after fine-tune).
    gamma: float = 0.1
    # gamma follows the budget (a multiplicative controller, every step): up by exp(control_rate) while the
    # informative channels (mu^2 / sigma^2 > 1) cost more than the budget, down while they fit, so the
    # bottleneck squeezes just until the budget holds instead of until every channel is noise
    budget_control: bool = True
    control_rate: float = 0.05
    init_log_sigma2: float = -9.0  # the paper's initialisation: mu ~ N(1, 0.01), log sigma^2 ~ N(-9, 0.01)
    # each channel's KL weighted by what it costs in the budget's unit (mean weight 1). Off: on MobileNetV2 /
    # digits at 25% MACs (demo preset, seed 0) weighting squeezed the residual groups to 8 channels and cost
    # 1-3 points (val 98.5 / test 94.4 vs 99.6 / 97.4 unweighted; gamma 0.5 and 5 unweighted: 97.8 / 96.7, 98.9 / 95.9)
    cost_weighted: bool = False
    seed: int = 0

    def __post_init__(self) -> None:
        if self.epochs < 1 or self.lr <= 0 or self.gate_lr <= 0:
            raise MetaedgeError(f"bad VIB settings (epochs={self.epochs}, lr={self.lr}, gate_lr={self.gate_lr})", "use epochs >= 1 and positive learning rates")
        if self.budget_control and not (0 < self.control_rate <= 1 and self.gamma > 0):
            raise MetaedgeError(
                f"bad VIB budget control (gamma={self.gamma}, control_rate={self.control_rate})",
                "use gamma > 0 and 0 < control_rate <= 1, or budget_control=False",
            )
        if self.gamma < 0:
            raise MetaedgeError(f"VIB gamma must not be negative, got {self.gamma}", "use gamma >= 0 (0: no bottleneck, gates learn from the task alone)")


PRESETS: dict[str, VIBConfig] = {
    # as many gate-training epochs as the MetaPruning preset of the same name trains its PruningNet
    "demo": VIBConfig(epochs=3),
    "bench": VIBConfig(epochs=6),
    "full": VIBConfig(epochs=32),
}
