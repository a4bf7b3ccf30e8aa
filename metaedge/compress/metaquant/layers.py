"""Conv2d / Linear with a quantized weight and, optionally, their BatchNorm kept live.

Training mode: ``BN(conv(x, Q(W)))`` with batch statistics -- BN keeps normalising while the
weights move on their k-bit grid (folding BN before QAT froze the statistics of the fp32 model, and
MobileNetV2 fell to chance at 2 and 1 bits). Eval and export: BN is folded *after* quantization,
``W_f = Q(W) * k`` with ``k = gamma / sqrt(var + eps)`` per output channel, which is again an integer
grid: ``q_f = sign(k) * q`` (every grid here is symmetric about 0, so ``-q`` is on it) with the
per-channel scale ``s_f = s * |k|``. The per-channel scale absorbs BN exactly, for any weight
quantizer; the eval forward computes ``q_f * s_f`` and the folded bias, which is what the QDQ graph
holds, so export reproduces the eval model up to float rounding.

Bias: the folded bias sits on the int32 grid ``s_x * s_f`` (what QLinearConv adds; the tensorrt
profile writes the same values as floats), see :mod:`metaedge.qdq.profiles` for why both profiles round it.
"""

from __future__ import annotations

from typing import cast

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.modules.batchnorm import _BatchNorm

from metaedge.compress.metaquant.quantizers import ActFakeQuant, WeightQuantizer, _decomposed_ops, round_ste

__all__ = ["QConv2d", "QLinear", "QuantLayer"]


class QuantLayer:
    """Mixin for conv/linear layers with a quantized weight, an optional live BN and an int32-grid bias."""

    # provided by the nn.Conv2d / nn.Linear the mixin is combined with
    weight: torch.Tensor
    bias: torch.Tensor | None
    training: bool

    wq: WeightQuantizer
    bn: _BatchNorm | None
    w_meta: torch.Tensor | None
    w_hat: torch.Tensor | None
    capture: bool
    export_mode: bool
    role: str
    bits_note: str
    _in_quant: list[ActFakeQuant]
    _frozen: tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None] | None  # export constants

    def _init_quant(self, wq: WeightQuantizer, bn: _BatchNorm | None = None, role: str = "body") -> None:
        self.wq = wq  # an nn.Module (LSQ) registers as a submodule, so its step is saved and trained
        self.bn = bn
        self.role = role  # why the layer has its bits (policy): first / last / depthwise / body / pattern
        self.bits_note = ""  # set by prepare_qat when the profile lowers the policy's bits
        self.w_meta = None  # set by the MetaQuant step for one forward pass
        self.w_hat = None
        self.capture = False
        self.export_mode = False
        self._frozen = None
        self._in_quant = []  # a list keeps the shared module out of this layer's state dict

    # --- quantized weight, training path -------------------------------------------------------
    def quant_weight(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(fake-quant weight, its per-channel scale) from W, or from W_meta during a MetaQuant step."""
        q, scale = self.wq(self.w_meta if self.w_meta is not None else self.weight)
        w_hat = q * scale
        if self.capture and w_hat.requires_grad:
            w_hat.retain_grad()
            self.w_hat = w_hat
        return w_hat, scale.detach()

    # --- folded form: eval and export ----------------------------------------------------------
    def _bn_affine(self) -> tuple[torch.Tensor, torch.Tensor] | None:
        """Eval-mode BN as ``y * k + shift`` per channel, or None without BN."""
        bn = self.bn
        if bn is None:
            return None
        # prepare_qat keeps only BNs that track running statistics
        assert bn.running_var is not None and bn.running_mean is not None
        k = torch.rsqrt(bn.running_var + bn.eps)
        if bn.weight is not None:
            k = k * bn.weight
        shift = -bn.running_mean * k
        if bn.bias is not None:
            shift = shift + bn.bias
        return k, shift

    def has_bias(self) -> bool:
        return self.bias is not None or self.bn is not None

    def folded(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """(q_f, s_f, float bias): integer weight, positive per-channel scale (shaped for
        broadcasting), bias -- BN folded in."""
        q, scale = self.wq(self.weight)
        bias = self.bias
        aff = self._bn_affine()
        if aff is None:
            return q, scale, bias
        k, shift = aff
        kb = k.reshape(-1, *([1] * (q.dim() - 1)))
        sign = torch.where(kb < 0, -torch.ones_like(kb), torch.ones_like(kb))
        mag = kb.abs()
        dead = mag == 0  # gamma = 0: the channel is its shift alone; any positive scale will do
        q_f = torch.where(dead, torch.zeros_like(q), q * sign)
        s_f = torch.where(dead, scale, scale * mag)
        b = shift if bias is None else shift + bias * k
        return q_f, s_f, b

    def int_weight(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The deployed integer weight (int8 container) and its per-output-channel scale."""
        with torch.no_grad():
            q, scale, _ = self.folded()
        return q.to(torch.int8), scale.reshape(-1).float()

    def bias_scale(self, w_scale: torch.Tensor) -> torch.Tensor | None:
        if not self._in_quant:
            return None
        s_x, _ = self._in_quant[0].qparams()
        return torch.tensor(s_x, dtype=torch.float32) * w_scale.reshape(-1).float()

    def quant_bias(self, bias: torch.Tensor | None, w_scale: torch.Tensor) -> torch.Tensor | None:
        """Bias on the int32 grid s_x * s_w (what QLinearConv adds)."""
        if bias is None:
            return None
        s_b = self.bias_scale(w_scale)
        if s_b is None:
            return bias
        return round_ste(bias / s_b.detach()) * s_b.detach()

    def _eval_weight_and_bias(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        q, s, b = self.folded()
        return q * s, self.quant_bias(b, s)

    def freeze_export(self) -> None:
        """Compute the deployed weight/bias once, as constants, so torch.export sees no data-dependent ops."""
        with torch.no_grad():
            q, s, b = self.folded()
            bias = self.quant_bias(b, s)
            q8, scale = q.to(torch.int8), s.reshape(-1).float()
        self._frozen = (q8.clone(), scale.clone(), torch.zeros_like(scale, dtype=torch.int64), None if bias is None else bias.detach().clone())

    def _export_weight(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        if self._frozen is None:
            self.freeze_export()
        assert self._frozen is not None
        q, scale, zp, bias = self._frozen
        # int8 constant -> DequantizeLinear(axis 0); the tensorrt profile rewrites it to float -> Q -> DQ
        w = _decomposed_ops().dequantize_per_channel(q, scale, zp, 0, -128, 127, torch.int8)
        return w, bias

    def _compute(self, x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None) -> torch.Tensor:
        raise NotImplementedError

    def _quant_forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.export_mode:
            return self._compute(x, *self._export_weight())
        if self.training:
            w_hat, scale = self.quant_weight()
            if self.bn is not None:  # live BN: batch statistics, the bias grid only exists once folded
                return self.bn(self._compute(x, w_hat, self.bias))
            return self._compute(x, w_hat, self.quant_bias(self.bias, scale))
        return self._compute(x, *self._eval_weight_and_bias())


class QConv2d(nn.Conv2d, QuantLayer):
    @classmethod
    def from_float(cls, m: nn.Conv2d, wq: WeightQuantizer, bn: _BatchNorm | None = None, role: str = "body") -> "QConv2d":
        # nn.Conv2d types its size tuples as tuple[int, ...]; a Conv2d's hold two ints
        kernel, stride, dilation = (cast("tuple[int, int]", t) for t in (m.kernel_size, m.stride, m.dilation))
        padding = cast("str | tuple[int, int]", m.padding)
        q = cls(m.in_channels, m.out_channels, kernel, stride, padding, dilation, m.groups, m.bias is not None, m.padding_mode)
        q.load_state_dict(m.state_dict())
        q._init_quant(wq, bn, role)
        return q

    def _compute(self, x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None) -> torch.Tensor:
        return self._conv_forward(x, w, b)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._quant_forward(x)


# nn.Linear's stub infers bias as Parameter, but it is None for bias=False (QuantLayer's type)
class QLinear(nn.Linear, QuantLayer):  # type: ignore[misc]
    @classmethod
    def from_float(cls, m: nn.Linear, wq: WeightQuantizer, bn: _BatchNorm | None = None, role: str = "body") -> "QLinear":
        q = cls(m.in_features, m.out_features, m.bias is not None)
        q.load_state_dict(m.state_dict())
        q._init_quant(wq, bn, role)
        return q

    def _compute(self, x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None) -> torch.Tensor:
        return F.linear(x, w, b)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._quant_forward(x)
