"""Weight and activation quantizers whose outputs are exactly ``scale * int`` on a k-bit grid.

Every weight quantizer returns ``(q, scale)`` with ``q`` a float tensor of integers (rounding has
a straight-through gradient) and ``scale`` one value per output channel (axis 0), and the
quantized weight is ``q * scale``. That product is what DequantizeLinear computes in ONNX, so the
exported int8 initializer plus per-channel scale reproduces the fake-quant weight bit for bit.

* ``symmetric`` k in {2,4,8}: ``q in [-(2^(k-1)-1), 2^(k-1)-1]``, ``scale = max|W_c| / qmax`` at 8
  bits; at <= 4 bits ``scale = r * max|W_c| / qmax`` with the per-channel clip ratio r that
  minimises the weight MSE (chosen afresh each step, no gradient through it).
* ``dorefa``  k in {1,2,4} (any k <= 7): the paper's ``tanh(W)/(2 max|tanh W|) + 1/2`` on the
  channel-normalised weight, k-bit rounding, mapped to [-1, 1] and multiplied by ``max|W_c|``.
  The 2^k levels ``(2n - (2^k - 1)) / (2^k - 1)`` are odd integers over ``2^k - 1``, so they sit in
  an int8 container only for k <= 7 (8-bit DoReFa would need 9 signed bits: use ``symmetric``).
  Normalisation is per output channel because BN is folded into the conv before QAT (see qat.py):
  folded channels differ by orders of magnitude and one per-tensor range would zero the small ones.
* ``bwn`` k = 1: ``mean|W_c| * sign(W)``, stored as int8 {-1, +1} with scale ``mean|W_c|``.

Activations use :class:`ActFakeQuant`: per-tensor 8-bit, asymmetric uint8 by default (ONNX
Runtime's fast path) or symmetric int8 (zero point 0, what TensorRT's explicit quantization needs),
scale from an EMA min/max observer or learned (LSQ-style, gradient through the scale).
Rounding is half-to-even and ``x / scale`` is a true division, as in ONNX QuantizeLinear.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from metaedge.errors import MetaedgeError

__all__ = [
    "ActFakeQuant",
    "WEIGHT_QUANTIZERS",
    "WeightQuantizer",
    "make_weight_quantizer",
    "round_ste",
]

WEIGHT_QUANTIZERS = ("symmetric", "dorefa", "bwn")


class _RoundSTE(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        return torch.round(x)  # half to even, like ONNX QuantizeLinear

    @staticmethod
    def backward(ctx, g: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        return g


def round_ste(x: torch.Tensor) -> torch.Tensor:
    return _RoundSTE.apply(x)


class _SignSTE(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        return torch.where(x >= 0, torch.ones_like(x), -torch.ones_like(x))  # sign(0) = +1: never a third level

    @staticmethod
    def backward(ctx, g: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        return g


def _per_channel(fn, w: torch.Tensor) -> torch.Tensor:
    """Reduce over all but axis 0, keep dims for broadcasting."""
    return fn(w.detach().reshape(w.shape[0], -1), dim=1).reshape(-1, *([1] * (w.dim() - 1)))


def _absmax(w: torch.Tensor) -> torch.Tensor:
    return _per_channel(lambda t, dim: t.abs().amax(dim=dim), w).clamp_min(1e-8)


class WeightQuantizer:
    """A stateless k-bit weight quantizer. ``__call__(w) -> (q, scale)``; ``calib(w)`` is the
    paper's calibration term dW_tilde/dW used to scale the meta network's output."""

    kind: str = ""

    def __init__(self, bits: int) -> None:
        self.bits = int(bits)

    @property
    def qmax(self) -> int:
        raise NotImplementedError

    def __call__(self, w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def calib(self, w: torch.Tensor) -> torch.Tensor:
        return torch.ones_like(w)

    def fake(self, w: torch.Tensor) -> torch.Tensor:
        q, scale = self(w)
        return q * scale

    def levels(self) -> int:
        """How many distinct integer values the grid has."""
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}(bits={self.bits})"


class SymmetricQuantizer(WeightQuantizer):
    kind = "symmetric"

    def __init__(self, bits: int) -> None:
        if not 2 <= bits <= 8:
            raise MetaedgeError(f"symmetric weight quantizer needs 2..8 bits, got {bits}", "use bwn or dorefa for 1-bit weights")
        super().__init__(bits)

    @property
    def qmax(self) -> int:
        return 2 ** (self.bits - 1) - 1

    def levels(self) -> int:
        return 2 * self.qmax + 1

    # Clipping ratios tried per channel at <= 4 bits. With the absmax scale a 2-bit (ternary) grid
    # is {-max, 0, +max} and one outlier sends nearly every weight to 0 (measured: MobileNetV2 and
    # ResNet-20 on digits fell to chance); the MSE-best clip keeps the grid where the weights are.
    CLIP_RATIOS = (1.0, 0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2)

    def _scale(self, w: torch.Tensor) -> torch.Tensor:
        amax = _absmax(w)
        if self.bits > 4:
            return amax / self.qmax
        with torch.no_grad():
            flat = w.detach().reshape(w.shape[0], -1)
            best_err, best = None, None
            for r in self.CLIP_RATIOS:
                s = (amax.reshape(-1, 1) * r) / self.qmax
                err = ((torch.clamp(torch.round(flat / s), -self.qmax, self.qmax) * s - flat) ** 2).sum(1)
                if best_err is None:
                    best_err, best = err, s.clone()
                else:
                    better = err < best_err
                    best_err = torch.where(better, err, best_err)
                    best = torch.where(better.unsqueeze(1), s, best)
        return best.reshape(amax.shape)

    def __call__(self, w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        scale = self._scale(w)
        q = torch.clamp(round_ste(w / scale), -self.qmax, self.qmax)
        return q, scale


class DoReFaQuantizer(WeightQuantizer):
    kind = "dorefa"

    def __init__(self, bits: int) -> None:
        if not 1 <= bits <= 7:
            raise MetaedgeError(
                f"DoReFa with {bits}-bit weights needs {bits + 1} signed bits, more than an int8 container holds",
                "use weight_quantizer 'symmetric' for 8-bit weights (DoReFa supports 1..7 bits)",
            )
        super().__init__(bits)

    @property
    def qmax(self) -> int:
        return 2**self.bits - 1

    def levels(self) -> int:
        return 2**self.bits

    def _tanh(self, w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        alpha = _absmax(w)
        t = torch.tanh(w / alpha)
        tmax = _per_channel(lambda x, dim: x.abs().amax(dim=dim), t).clamp_min(1e-8)
        return alpha, t, tmax

    def __call__(self, w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        alpha, t, tmax = self._tanh(w)
        wt = t / (2 * tmax) + 0.5  # in [0, 1]
        n = torch.clamp(round_ste(wt * self.qmax), 0, self.qmax)
        q = 2 * n - self.qmax  # odd integers in [-(2^k-1), 2^k-1]
        return q, alpha / self.qmax

    def calib(self, w: torch.Tensor) -> torch.Tensor:
        _, t, tmax = self._tanh(w.detach())
        return (1 - t * t) / tmax


class BWNQuantizer(WeightQuantizer):
    kind = "bwn"

    def __init__(self, bits: int = 1) -> None:
        if bits != 1:
            raise MetaedgeError(f"BWN is a 1-bit quantizer, got {bits} bits", "use weight_quantizer 'symmetric' or 'dorefa' for more bits")
        super().__init__(1)

    @property
    def qmax(self) -> int:
        return 1

    def levels(self) -> int:
        return 2

    def __call__(self, w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        scale = _per_channel(lambda t, dim: t.abs().mean(dim=dim), w).clamp_min(1e-8)
        return _SignSTE.apply(w), scale


def _decomposed_ops():
    """torch's quantized_decomposed ops (registered on import); the ONNX exporter maps them to
    QuantizeLinear / DequantizeLinear."""
    import torch.ao.quantization.fx._decomposed  # noqa: F401

    return torch.ops.quantized_decomposed


def make_weight_quantizer(kind: str, bits: int) -> WeightQuantizer:
    if kind == "symmetric":
        return SymmetricQuantizer(bits)
    if kind == "dorefa":
        return DoReFaQuantizer(bits)
    if kind == "bwn":
        return BWNQuantizer(bits)
    raise MetaedgeError(f"unknown weight quantizer {kind!r}", f"use one of {', '.join(WEIGHT_QUANTIZERS)}")


class ActFakeQuant(nn.Module):
    """Per-tensor fake quantization of an activation, matching ONNX QuantizeLinear/DequantizeLinear.

    ``observe`` (a plain attribute) switches the EMA min/max observer on; the pipeline turns it on
    for calibration and QAT and off for evaluation and export. With ``learn_scale`` the scale is a
    parameter initialised from the observer once observation stops, trained through the STE.
    """

    def __init__(self, bits: int = 8, symmetric: bool = False, learn_scale: bool = False, momentum: float = 0.05) -> None:
        super().__init__()
        if bits != 8:
            raise MetaedgeError(f"activations quantize to 8 bits only, got {bits}", "use act_bits 8 (a8): integer runtimes take int8/uint8 activations")
        self.bits, self.symmetric, self.learn_scale, self.momentum = bits, symmetric, learn_scale, momentum
        self.qmin, self.qmax = (-128, 127) if symmetric else (0, 255)
        self.register_buffer("min_val", torch.tensor(0.0))
        self.register_buffer("max_val", torch.tensor(0.0))
        self.register_buffer("initialized", torch.tensor(False))
        self.register_buffer("zero_point", torch.tensor(0.0))
        self.scale = nn.Parameter(torch.tensor(1.0), requires_grad=learn_scale)
        self.observe = False
        self.export_mode = False
        self._frozen: tuple[float, int] | None = None  # qparams as Python numbers while exporting

    @torch.no_grad()
    def _update(self, x: torch.Tensor) -> None:
        lo, hi = x.min().clamp(max=0.0), x.max().clamp(min=0.0)  # the range always holds 0 exactly
        if not bool(self.initialized):
            self.min_val.copy_(lo)
            self.max_val.copy_(hi)
            self.initialized.fill_(True)
        else:
            self.min_val.lerp_(lo, self.momentum)
            self.max_val.lerp_(hi, self.momentum)
        self._set_qparams()

    @torch.no_grad()
    def _set_qparams(self) -> None:
        lo, hi = float(self.min_val), float(self.max_val)
        if self.symmetric:
            scale = max(abs(lo), abs(hi)) / 127.0
            zp = 0.0
        else:
            scale = (hi - lo) / 255.0
            zp = float(min(255, max(0, round(-lo / scale)))) if scale > 0 else 0.0
        self.scale.copy_(torch.tensor(max(scale, 1e-8)))
        self.zero_point.fill_(zp)

    def qparams(self) -> tuple[float, int]:
        return float(self.scale.detach().abs().clamp_min(1e-8)), int(self.zero_point)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.observe:
            self._update(x)
        if self.export_mode:  # becomes QuantizeLinear -> DequantizeLinear in the ONNX graph
            if self._frozen is None:
                self._frozen = self.qparams()
            scale, zp = self._frozen
            dt = torch.int8 if self.symmetric else torch.uint8
            qd = _decomposed_ops()
            q = qd.quantize_per_tensor(x, scale, zp, self.qmin, self.qmax, dt)
            return qd.dequantize_per_tensor(q, scale, zp, self.qmin, self.qmax, dt)
        scale = self.scale.abs().clamp_min(1e-8) if self.learn_scale else self.scale.detach()
        zp = self.zero_point
        q = torch.clamp(round_ste(x / scale) + zp, self.qmin, self.qmax)
        return (q - zp) * scale

    def extra_repr(self) -> str:
        return f"{'int8 symmetric' if self.symmetric else 'uint8'}, scale={float(self.scale):.4g}, zp={int(self.zero_point)}"
