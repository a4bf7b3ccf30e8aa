"""The MetaQuant meta network M_phi: one small network shared by all layers, applied element-wise.

Variants (paper section 3.3; hidden size 100, no non-linearity in the FC parts):

* ``fc``      FC-Grad:  M(g) = FC2(FC1(g)) (no biases), g = dL/dW_hat of the previous step
* ``multifc`` MultiFC:  M(g, W) = g * FC2(FC1(W_n))
* ``lstmfc``  LSTMFC:   M(g, W) = g * FC(LSTM(W_n)),   one detached LSTM state per layer

``W_n`` is the weight normalised per output channel to [-1, 1] (so one shared network sees
inputs of the same range in every layer). Because FC2(FC1(.)) has no non-linearity it is the affine
map ``a*x + b`` with ``a = W2 W1`` and ``b = W2 b1 + b2``; we evaluate it in that collapsed form,
which gives the same values and the same gradients for every parameter (chain rule through the
product) but costs O(N) memory instead of O(100 N) -- MobileNetV2 has 2.2M weights.

Initialisation: metaedge fine-tunes a trained fp32 model rather than training from scratch as the
paper does, so the FC variants start at M(g) ~= g (FC-Grad) / g * 1 (MultiFC), i.e. at STE, and the
meta optimiser moves them from there; a random start would add a random bias to every gradient.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from metaedge.errors import MetaedgeError

__all__ = ["META_VARIANTS", "MetaNet", "make_meta_net"]

META_VARIANTS = ("fc", "multifc", "lstmfc")


class _AffineFC(nn.Module):
    """Linear(1, hidden) -> Linear(hidden, 1), evaluated in collapsed form."""

    def __init__(self, hidden: int, gain: float, offset: float, bias: bool = True) -> None:
        super().__init__()
        self.fc1 = nn.Linear(1, hidden, bias=bias)
        self.fc2 = nn.Linear(hidden, 1, bias=bias)
        with torch.no_grad():
            # fc2 . fc1 = gain, fc2 . b1 + b2 = offset. Balanced 1/sqrt(hidden) weights: Adam moves
            # every parameter by ~meta_lr per step, so a = fc2 . fc1 drifts by ~2 sqrt(hidden) meta_lr
            # per step (0.02), not hidden * meta_lr (0.1) as with fc1 = 1, fc2 = 1/hidden.
            u = 1.0 + 0.01 * torch.randn(hidden, 1)
            self.fc1.weight.copy_(u / hidden**0.5)
            if bias:
                self.fc1.bias.zero_()
            self.fc2.weight.copy_(torch.full((1, hidden), 1.0 / hidden**0.5))
            if gain != 0.0:
                self.fc2.weight.mul_(gain / float(self.fc2.weight @ self.fc1.weight))
            else:
                self.fc2.weight.mul_(0.01)
            if bias:
                self.fc2.bias.fill_(offset)

    def coeffs(self) -> tuple[torch.Tensor, torch.Tensor]:
        a = (self.fc2.weight @ self.fc1.weight).reshape(())
        if self.fc1.bias is None:
            return a, torch.zeros((), dtype=a.dtype)
        b = (self.fc2.weight @ self.fc1.bias.unsqueeze(1)).reshape(()) + self.fc2.bias.reshape(())
        return a, b

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a, b = self.coeffs()
        return a * x + b


class MetaNet(nn.Module):
    """``forward(grad, weight, layer_key) -> meta output`` with the weight's shape."""

    def __init__(self, variant: str = "fc", hidden: int = 100) -> None:
        super().__init__()
        if variant not in META_VARIANTS:
            raise MetaedgeError(f"unknown meta network variant {variant!r}", f"use one of {', '.join(META_VARIANTS)}")
        self.variant, self.hidden = variant, hidden
        if variant == "fc":
            # bias-free (as the reference code's FC layers): M(0) = 0. With biases the output has a
            # constant term that drifts every weight of every layer the same way; on MobileNetV2 that
            # drift killed the ReLUs within two epochs (measured: 98% -> 10%).
            self.net = _AffineFC(hidden, gain=1.0, offset=0.0, bias=False)
        elif variant == "multifc":
            self.net = _AffineFC(hidden, gain=0.0, offset=1.0)
        else:
            self.lstm = nn.LSTMCell(1, hidden)
            self.fc = nn.Linear(hidden, 1)
            with torch.no_grad():  # start near g * 1 (STE), like the FC variants
                self.fc.weight.mul_(0.01)
                self.fc.bias.fill_(1.0)
        self._state: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}

    def reset_state(self) -> None:
        self._state.clear()

    def forward(self, grad: torch.Tensor, weight: torch.Tensor, key: str = "") -> torch.Tensor:
        if self.variant == "fc":
            return self.net(grad)
        w = weight.detach()
        wn = w / w.reshape(w.shape[0], -1).abs().amax(1).clamp_min(1e-8).reshape(-1, *([1] * (w.dim() - 1)))
        if self.variant == "multifc":
            return grad * self.net(wn)
        flat = wn.reshape(-1, 1)
        state = self._state.get(key)
        if state is not None and state[0].shape[0] != flat.shape[0]:
            state = None
        h, c = self.lstm(flat, state)
        self._state[key] = (h.detach(), c.detach())  # the paper detaches the LSTM state per layer
        return grad * self.fc(h).reshape(grad.shape)


def make_meta_net(variant: str, hidden: int = 100) -> MetaNet:
    return MetaNet(variant, hidden)
