"""Export profiles: the numerics of the deployed QDQ graph differ per runtime, so QAT must know.

* ``ort``: uint8 activations with a zero point, integer weight initializers behind
  DequantizeLinear, int32 biases on the ``s_x * s_w`` grid -- ONNX Runtime's QDQ selectors fuse
  exactly this into QLinearConv / QGemm (symmetric int8 activations leave a ReLU/Clip between a
  conv and its output Q that ORT cannot fold). 8-bit weight layers get a 7-bit grid (|q| <= 63,
  ORT's own ``reduce_range``): on x86 without VNNI, ORT's u8s8 kernels (VPMADDUBSW) saturate the
  16-bit sum of two u8*s8 products above 32767, which a full 8-bit grid reaches (255 * 127 * 2).
  Measured on digits: a trained ResNet-20 at w8a8 lost 3 points in ORT (95.5% vs 98.5% in torch,
  parity off by up to 80 logit steps); uint8 weights (u8u8 kernels) were exact but slower than fp32
  (0.94x vs 1.6x); the 7-bit grid keeps the fast kernels and cannot saturate (255 * 63 * 2 < 32767).
* ``tensorrt``: int8 activations with zero point 0 (TensorRT's explicit quantization is symmetric
  only), float weights through QuantizeLinear -> DequantizeLinear per channel on axis 0, float
  biases (TensorRT quantizes neither biases nor a DequantizeLinear on a stored int8 tensor in
  several versions: onnx/onnx-tensorrt#850, microsoft/onnxruntime#14229), one Q/DQ pair per
  consumer. Checked by :mod:`metaedge.qdq.tensorrt_rules`.

The profile changes QAT (activation zero points, the 8-bit weight grid), so it is chosen before
training and stored on the prepared model; the exporter refuses a tensorrt export of a model with uint8 activations. In
both profiles QAT keeps every bias on the ``s_x * s_w`` grid (TensorRT gets those values as
floats): conv sums of grid values are then exact in float32 whatever the summation order, so a
runtime and the torch model round the same activations the same way (measured: with free float
biases, 10x more one-step flips between torch and ORT in ResNet-20's logits).
"""

from __future__ import annotations

from dataclasses import dataclass

from metaedge.errors import MetaedgeError

__all__ = ["PROFILES", "QdqProfile", "get_profile"]


@dataclass(frozen=True)
class QdqProfile:
    name: str
    act_symmetric: bool  # int8 zero point 0 (True) or uint8 with a zero point (False)
    int32_bias: bool  # bias written as int32 behind its own DequantizeLinear (else float)
    float_weights: bool  # float weight -> Q -> DQ (True) or integer initializer -> DQ (False)
    dedicated_pairs: bool  # one Q/DQ pair per consumer of a quantized tensor
    max_weight_bits: int  # layers asked for more get this many (7 for ort: see above)


PROFILES: dict[str, QdqProfile] = {
    "ort": QdqProfile("ort", act_symmetric=False, int32_bias=True, float_weights=False, dedicated_pairs=False, max_weight_bits=7),
    "tensorrt": QdqProfile("tensorrt", act_symmetric=True, int32_bias=False, float_weights=True, dedicated_pairs=True, max_weight_bits=8),
}


def get_profile(name: str | QdqProfile) -> QdqProfile:
    if isinstance(name, QdqProfile):
        return name
    try:
        return PROFILES[str(name).lower()]
    except KeyError:
        raise MetaedgeError(f"unknown QDQ export profile {name!r}", f"use one of {', '.join(PROFILES)} (or auto on the CLI)") from None
