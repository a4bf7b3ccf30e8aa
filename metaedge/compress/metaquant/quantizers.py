"""Weight and activation quantizers whose outputs are exactly ``scale * int`` on a k-bit grid.

Every weight quantizer returns ``(q, scale)`` with ``q`` a float tensor of integers and ``scale``
one value per output channel (axis 0), and the quantized weight is ``q * scale``. That product is
what DequantizeLinear computes in ONNX, so the exported int8 weight plus per-channel scale
reproduces the fake-quant weight bit for bit.

* ``symmetric`` k in 2..8: ``q in [-(2^(k-1)-1), 2^(k-1)-1]``, ``scale = max|W_c| / qmax`` above 4
  bits; at <= 4 bits ``scale = r * max|W_c| / qmax`` with the per-channel clip ratio r that
  minimises the weight MSE (chosen afresh each step, no gradient through it).
* ``dorefa``  k in {1,2,4} (any k <= 7): the paper's ``tanh(W)/(2 max|tanh W|) + 1/2`` on the
  channel-normalised weight, k-bit rounding, mapped to [-1, 1] and multiplied by ``max|W_c|``.
  The 2^k levels ``(2n - (2^k - 1)) / (2^k - 1)`` are odd integers over ``2^k - 1``, so they sit in
  an int8 container only for k <= 7 (8-bit DoReFa would need 9 signed bits: use ``symmetric``).
  Per output channel, so one shared range never zeroes a small channel.
* ``bwn`` k = 1: ``mean|W_c| * sign(W)``, stored as int8 {-1, +1} with scale ``mean|W_c|``.
* ``lsq`` (Esser et al., ICLR 2020) k in 1..8: a learned per-channel step ``s`` (an
  ``nn.Parameter``, gradient scaled by ``1/sqrt(N_c * Qp)`` as in the paper), ``q = clamp(round(W/s),
  -Qn, Qp)`` with ``Qn = 2^(k-1), Qp = 2^(k-1) - 1`` (k = 1: ``sign(W)``). Initialised from the
  MSE-best symmetric step (k = 1: ``mean|W_c|``) rather than the paper's ``2 mean|W| / sqrt(Qp)``:
  metaedge fine-tunes a trained model, where the MSE step is already a good grid.

Backward (the standard straight-through estimators; ``tests/test_quantizers.py`` pins each one):
the gradient reaching W is ``calib(W) * g`` with ``g = dL/dW_hat`` -- identity for BWN (the scale
``mean|W_c|`` is *not* multiplied in: passing ``alpha_c * g`` trains 10-30x slower after BN
folding), identity inside the clip range and 0 outside for ``symmetric`` and ``lsq``, and for
DoReFa the chain rule through the tanh transform with an identity through the rounding,
``(1 - tanh^2) / max|tanh|``, which is the paper's calibration term. ``calib`` therefore is both the
STE's Jacobian and the factor MetaQuant multiplies its meta gradient by: MetaQuant with an
identity meta network *is* STE.

Activations use :class:`ActFakeQuant`: per-tensor 8-bit, asymmetric uint8 by default (ONNX
Runtime's fast path) or symmetric int8 (zero point 0, what TensorRT's explicit quantization needs),
scale from an EMA min/max observer or learned (LSQ, gradient through the scale, scaled by
``1/sqrt(N * Qp)``). Its backward is the clipped STE: identity inside [qmin, qmax], 0 outside.
Rounding is half-to-even and ``x / scale`` is a true division, as in ONNX QuantizeLinear.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn

from metaedge.errors import MetaedgeError

__all__ = [
    "ActFakeQuant",
    "LSQQuantizer",
    "WEIGHT_QUANTIZERS",
    "WeightQuantizer",
    "grad_scale",
    "make_weight_quantizer",
    "round_ste",
    "sign_ste",
]

WEIGHT_QUANTIZERS = ("symmetric", "dorefa", "bwn", "lsq")


class _RoundSTE(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        return torch.round(x)  # half to even, like ONNX QuantizeLinear

    @staticmethod
    def backward(ctx, g: torch.Tensor) -> torch.Tensor:
        return g


def round_ste(x: torch.Tensor) -> torch.Tensor:
    return _RoundSTE.apply(x)


def grad_scale(x: torch.Tensor, scale: float) -> torch.Tensor:
    """``x`` in the forward pass, ``scale * g`` in the backward (LSQ's step-size gradient scale)."""
    return (x - x * scale).detach() + x * scale


class _SignSTE(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        return torch.where(x >= 0, torch.ones_like(x), -torch.ones_like(x))  # sign(0) = +1: never a third level

    @staticmethod
    def backward(ctx, g: torch.Tensor) -> torch.Tensor:
        return g


def sign_ste(x: torch.Tensor) -> torch.Tensor:
    return _SignSTE.apply(x)


def _per_channel(fn, w: torch.Tensor) -> torch.Tensor:
    """Reduce over all but axis 0, keep dims for broadcasting."""
    return fn(w.detach().reshape(w.shape[0], -1), dim=1).reshape(-1, *([1] * (w.dim() - 1)))


def _absmax(w: torch.Tensor) -> torch.Tensor:
    return _per_channel(lambda t, dim: t.abs().amax(dim=dim), w).clamp_min(1e-8)


def _round_delta(u: torch.Tensor, lo: int, hi: int) -> torch.Tensor:
    """Signed distance of ``u`` from the nearest rounding midpoint of the integer grid [lo, hi]."""
    if hi - lo < 2:  # two levels: the one threshold sits between them
        return u - 0.5 * (lo + hi)
    return u - torch.clamp(torch.floor(u) + 0.5, lo + 0.5, hi - 0.5)


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
        """dW_hat/dW of the straight-through estimator, element-wise (the paper's calibration term)."""
        return torch.ones_like(w)

    def fake(self, w: torch.Tensor) -> torch.Tensor:
        q, scale = self(w)
        return q * scale

    def grid_position(self, w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(W / scale, delta)`` element-wise, no gradient: the weight in grid steps, and the signed
        distance (in grid steps) from the nearest decision threshold -- the rounding midpoint, or 0 for
        a sign -- with ``delta > 0`` above it. A step of ``|delta|`` against its sign flips the
        level; that is where the STE's error sits (MetaQuant's meta network reads both)."""
        w = w.detach()
        with torch.no_grad():
            _, scale = self(w)
            return w / scale, self._threshold_delta(w, scale)

    def _threshold_delta(self, w: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
        return _round_delta(w / scale, -self.qmax, self.qmax)

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
                if best_err is None or best is None:
                    best_err, best = err, s.clone()
                else:
                    better = err < best_err
                    best_err = torch.where(better, err, best_err)
                    best = torch.where(better.unsqueeze(1), s, best)
        assert best is not None  # CLIP_RATIOS is not empty
        return best.reshape(amax.shape)

    def __call__(self, w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        scale = self._scale(w)
        q = torch.clamp(round_ste(w / scale), -self.qmax, self.qmax)  # clamp after rounding: the extremes keep their gradient
        return q, scale

    def calib(self, w: torch.Tensor) -> torch.Tensor:
        # identity inside the (clipped) grid, 0 for the weights the clip ratio cuts off
        w = w.detach()
        return (torch.round(w / self._scale(w)).abs() <= self.qmax).to(w.dtype)


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

    def _threshold_delta(self, w: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
        _, t, tmax = self._tanh(w)  # rounding happens on (t / (2 tmax) + 1/2) * qmax in [0, qmax]
        return _round_delta((t / (2 * tmax) + 0.5) * self.qmax, 0, self.qmax)


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
        # sign(W / alpha) = sign(W); the division makes d(q * alpha)/dW = 1, the standard BWN STE.
        # sign(W) * alpha with a detached alpha would pass alpha * g, a per-layer learning-rate cut.
        return sign_ste(w / scale), scale

    def _threshold_delta(self, w: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
        return w / scale  # the sign's threshold is 0


class LSQQuantizer(nn.Module, WeightQuantizer):
    """Learned step size quantization (Esser et al. 2020), one step per output channel.

    An ``nn.Module``: the step is a parameter that lives in the layer's state dict and is trained by
    the QAT optimiser with the other non-weight parameters."""

    kind = "lsq"

    def __init__(self, bits: int, weight: torch.Tensor) -> None:
        if not 1 <= bits <= 8:
            raise MetaedgeError(f"LSQ weights need 1..8 bits, got {bits}", "use w1, w2, w4 or w8")
        nn.Module.__init__(self)
        WeightQuantizer.__init__(self, bits)
        with torch.no_grad():
            if bits == 1:
                init = _per_channel(lambda t, dim: t.abs().mean(dim=dim), weight).clamp_min(1e-8)
            else:
                init = SymmetricQuantizer(bits)._scale(weight)  # the same Qp = 2^(k-1) - 1
        self.step = nn.Parameter(init.clone())
        per_channel = weight[0].numel()
        self._gscale = 1.0 / math.sqrt(per_channel * max(1, self.qmax))

    @property
    def qmax(self) -> int:
        return 1 if self.bits == 1 else 2 ** (self.bits - 1) - 1

    @property
    def qmin(self) -> int:
        return -1 if self.bits == 1 else -(2 ** (self.bits - 1))

    def levels(self) -> int:
        return 2**self.bits

    def _step(self) -> torch.Tensor:
        return grad_scale(self.step, self._gscale).abs().clamp_min(1e-8)

    def forward(self, w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        s = self._step()
        if self.bits == 1:
            return sign_ste(w / s), s
        return torch.clamp(round_ste(w / s), self.qmin, self.qmax), s

    def calib(self, w: torch.Tensor) -> torch.Tensor:
        w = w.detach()
        if self.bits == 1:
            return torch.ones_like(w)
        n = torch.round(w / self._step().detach())
        return ((n >= self.qmin) & (n <= self.qmax)).to(w.dtype)

    def _threshold_delta(self, w: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
        return w / scale if self.bits == 1 else _round_delta(w / scale, self.qmin, self.qmax)

    def __repr__(self) -> str:
        return f"LSQQuantizer(bits={self.bits})"


def _decomposed_ops():
    """torch's quantized_decomposed ops (registered on import); the ONNX exporter maps them to
    QuantizeLinear / DequantizeLinear."""
    import torch.ao.quantization.fx._decomposed  # noqa: F401

    return torch.ops.quantized_decomposed


def make_weight_quantizer(kind: str, bits: int, weight: torch.Tensor | None = None) -> WeightQuantizer:
    """A quantizer for ``bits``-bit weights; ``lsq`` needs the layer's ``weight`` to initialise its
    step (without one it is only validated and a symmetric stand-in is returned)."""
    if kind == "lsq":
        if weight is None:
            LSQQuantizer(bits, torch.ones(1, 1))  # validates bits
            return SymmetricQuantizer(bits) if bits > 1 else BWNQuantizer(1)
        return LSQQuantizer(bits, weight)
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

    # buffers (registered in __init__)
    min_val: torch.Tensor
    max_val: torch.Tensor
    initialized: torch.Tensor
    zero_point: torch.Tensor

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
    def reset_observer(self) -> None:
        """Forget the observed range: the next observed batch sets it afresh (as after construction)."""
        self.min_val.zero_()
        self.max_val.zero_()
        self.initialized.fill_(False)

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
            frozen_scale, frozen_zp = self._frozen
            dt = torch.int8 if self.symmetric else torch.uint8
            qd = _decomposed_ops()
            q = qd.quantize_per_tensor(x, frozen_scale, frozen_zp, self.qmin, self.qmax, dt)
            return qd.dequantize_per_tensor(q, frozen_scale, frozen_zp, self.qmin, self.qmax, dt)
        if self.learn_scale:  # LSQ: gradient through the step, scaled by 1/sqrt(N * Qp)
            scale = grad_scale(self.scale, 1.0 / math.sqrt(x[0].numel() * self.qmax)).abs().clamp_min(1e-8)
        else:
            scale = self.scale.detach()
        zp = self.zero_point
        q = torch.clamp(round_ste(x / scale) + zp, self.qmin, self.qmax)
        return (q - zp) * scale

    def extra_repr(self) -> str:
        return f"{'int8 symmetric' if self.symmetric else 'uint8'}, scale={float(self.scale):.4g}, zp={int(self.zero_point)}"
