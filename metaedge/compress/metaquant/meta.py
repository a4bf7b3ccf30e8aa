"""The MetaQuant meta network M_phi: one small network shared by all layers, applied element-wise.

``forward(g, W, key, wq)`` returns the meta gradient for a layer, given ``g = dL/dW_hat`` of the
previous step, the float weight and the layer's weight quantizer. Variants:

* ``fc``      FC-Grad as in the paper and its reference code: ``M(g) = FC2(FC1(g))``, hidden 100, no
  non-linearity, no biases, on the raw gradient. Kept for reference: without a non-linearity it is
  the map ``a * g`` (evaluated in that collapsed form, same values and gradients), a learned
  learning-rate multiplier -- it cannot change a gradient's direction. Trained to cut the next
  step's loss, that multiplier grows: 1 -> 5-12 within a few hundred steps in every bench run
  (``meta_gain`` in the QAT history), so it is not the default.
* ``multifc`` MultiFC: an MLP ``3 -> h -> h -> 1`` (tanh) on per-element features; the default.
* ``lstmfc``  LSTMFC: an ``LSTMCell(3, h)`` on the same features, one detached state per layer (the
  paper's choice), then ``Linear(h, 1)``.

Features of ``multifc`` / ``lstmfc``, so one shared network sees the same ranges in every layer:
``g / RMS(g)`` (per layer), ``W / scale`` (the weight in grid steps of its quantizer) and ``delta``,
the signed distance from the nearest rounding or sign threshold in grid steps
(:meth:`WeightQuantizer.grid_position`) -- where STE's error sits: a weight within ``|delta|`` of a
threshold flips its level on a small step, one far from it does not move its quantized value at all.

Output of ``multifc`` / ``lstmfc``: ``o = g/RMS(g) + f(features)`` (a residual on the normalised
gradient), then rescaled per layer, ``M = RMS(g) * o / RMS(o)``. The meta network can therefore
only re-weight and re-direct the gradient inside a layer; its size stays the STE gradient's, so it
cannot act as a learning-rate multiplier (what FC-Grad collapses to) -- the step size is the
optimiser's. ``M(c g) = c M(g)`` for any ``c > 0``.

Initialisation: metaedge fine-tunes a trained fp32 model rather than training from scratch as the
paper does, so every variant starts at STE: FC-Grad at ``a = 1``, the others with a zero last layer
(``f = 0``, ``M = g`` exactly; that layer still receives gradient, the others follow once it moves).

Memory: the element-wise features and hidden activations are kept for the backward pass of the
meta step (MobileNetV2 has 2.2M weights). ``multifc`` evaluates layers above ``CHUNK`` elements in
checkpointed chunks, so only the chunk being recomputed holds its hidden activations; ``lstmfc``
keeps an ``h``-wide state per weight, and :func:`~metaedge.compress.metaquant.qat.train_qat` refuses
it above 600k weights.
"""

from __future__ import annotations

import torch
import torch.nn as nn
from torch.utils.checkpoint import checkpoint

from metaedge.errors import MetaedgeError

__all__ = ["DEFAULT_HIDDEN", "META_VARIANTS", "MetaNet", "make_meta_net", "meta_features"]

META_VARIANTS = ("fc", "multifc", "lstmfc")
# hidden width per variant: the paper's 100 for the (collapsed, O(N)) FC-Grad; the element-wise
# non-linear variants cost O(h N) (h^2 N for MultiFC's second layer) per step and per weight
DEFAULT_HIDDEN = {"fc": 100, "multifc": 32, "lstmfc": 16}
CHUNK = 1 << 18  # elements per checkpointed chunk in MultiFC
FEATURE_CLIP = 4.0  # |W/scale| and |delta| beyond a few grid steps carry no more information


def _rms(x: torch.Tensor) -> torch.Tensor:
    return x.square().mean().sqrt().clamp_min(1e-12)


def meta_features(grad: torch.Tensor, weight: torch.Tensor, wq=None) -> torch.Tensor:
    """(N, 3) features ``[g / RMS(g), W / scale, delta]``, no gradient, each clipped to
    +-FEATURE_CLIP. Without a quantizer the weight is normalised per output channel to [-1, 1] and
    ``delta`` is that value (a sign's)."""
    with torch.no_grad():
        w = weight.detach()
        if wq is not None:
            wn, delta = wq.grid_position(w)
        else:
            wn = w / w.reshape(w.shape[0], -1).abs().amax(1).clamp_min(1e-8).reshape(-1, *([1] * (w.dim() - 1)))
            delta = wn
        g = grad.detach()
        feats = torch.stack([(g / _rms(g)).reshape(-1), wn.reshape(-1), delta.reshape(-1)], 1)
        return feats.clamp(-FEATURE_CLIP, FEATURE_CLIP)


class _AffineFC(nn.Module):
    """Linear(1, hidden) -> Linear(hidden, 1), no biases, evaluated in collapsed form ``a * x``."""

    def __init__(self, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(1, hidden, bias=False)
        self.fc2 = nn.Linear(hidden, 1, bias=False)
        with torch.no_grad():
            # fc2 . fc1 = 1. Balanced 1/sqrt(hidden) weights: Adam moves every parameter by ~meta_lr
            # per step, so a = fc2 . fc1 drifts by ~2 sqrt(hidden) meta_lr per step (0.02), not
            # hidden * meta_lr (0.1) as with fc1 = 1, fc2 = 1/hidden.
            u = 1.0 + 0.01 * torch.randn(hidden, 1)
            self.fc1.weight.copy_(u / hidden**0.5)
            self.fc2.weight.copy_(torch.full((1, hidden), 1.0 / hidden**0.5))
            self.fc2.weight.mul_(1.0 / float(self.fc2.weight @ self.fc1.weight))

    def gain(self) -> torch.Tensor:
        return (self.fc2.weight @ self.fc1.weight).reshape(())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.gain() * x


def _zero_(layer: nn.Linear) -> nn.Linear:
    with torch.no_grad():
        layer.weight.zero_()
        layer.bias.zero_()
    return layer


class MetaNet(nn.Module):
    """``forward(grad, weight, key, wq) -> meta gradient`` with the weight's shape."""

    def __init__(self, variant: str = "fc", hidden: int | None = None) -> None:
        super().__init__()
        if variant not in META_VARIANTS:
            raise MetaedgeError(f"unknown meta network variant {variant!r}", f"use one of {', '.join(META_VARIANTS)}")
        hidden = int(hidden or DEFAULT_HIDDEN[variant])
        if hidden < 1:
            raise MetaedgeError(f"meta network hidden size must be >= 1, got {hidden}", "use e.g. 32")
        self.variant, self.hidden = variant, hidden
        self.net: nn.Module
        if variant == "fc":
            self.net = _AffineFC(hidden)
        elif variant == "multifc":
            self.net = nn.Sequential(nn.Linear(3, hidden), nn.Tanh(), nn.Linear(hidden, hidden), nn.Tanh(), _zero_(nn.Linear(hidden, 1)))
        else:
            self.lstm = nn.LSTMCell(3, hidden)
            self.fc = _zero_(nn.Linear(hidden, 1))
        self._state: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}

    def reset_state(self) -> None:
        self._state.clear()

    def _residual(self, feats: torch.Tensor, key: str) -> torch.Tensor:
        if self.variant == "multifc":
            if feats.shape[0] <= CHUNK or not torch.is_grad_enabled():
                return self.net(feats)
            return torch.cat([checkpoint(self.net, c, use_reentrant=False) for c in feats.split(CHUNK)])
        state = self._state.get(key)
        if state is not None and state[0].shape[0] != feats.shape[0]:
            state = None
        h, c = self.lstm(feats, state)
        self._state[key] = (h.detach(), c.detach())  # the paper detaches the LSTM state per layer
        return self.fc(h)

    def forward(self, grad: torch.Tensor, weight: torch.Tensor, key: str = "", wq=None) -> torch.Tensor:
        if self.variant == "fc":
            return self.net(grad)
        g = grad.detach()
        o = (g / _rms(g)).reshape(-1) + self._residual(meta_features(g, weight, wq), key).reshape(-1)
        return (_rms(g) * o / _rms(o)).reshape(grad.shape)


def make_meta_net(variant: str, hidden: int | None = None) -> MetaNet:
    return MetaNet(variant, hidden)
