"""metaedge's default CPU schedules for TVM: what an untuned compile gets instead of naive loops.

TVM 0.27's CPU pipeline legalizes every operator to TOPI compute and schedules nothing (its dlight
CPU rules cover GEMV and softmax-like reductions, not convolution), so an untuned CNN runs as
scalar loop nests: measured 31.8 ms for ResNet-20 at 28x28 against ONNX Runtime's 0.8 ms (one
thread, this AVX2 VM). metaedge compiles CPU models in NHWC with HWIO kernels (so output channels
are contiguous) and applies, per fused function, the first rule that fits:

* :class:`ConvNHWC` (``conv_nhwc.py``)  register-tiled, channel-vectorised conv/depthwise/1x1
* dlight's CPU ``GEMV`` and ``Reduction`` (the classifier's matmul, global pooling)
* :class:`Injective` (``injective.py``)  elementwise chains inlined and vectorised

Measured with these rules, untuned (one thread, batch 1, side by side with ONNX Runtime on this VM):
ResNet-20 28x28 0.94 ms vs ONNX Runtime 0.91 ms; MobileNetV2 28x28 5.7 ms vs 3.5 ms.
MetaSchedule tuning starts from these schedules (they are committed to the tuning database as
measured records), so a tuned model is never slower than the default.
"""

from __future__ import annotations

from metaedge.deploy.backends.tvm_schedules.conv_nhwc import ConvNHWC
from metaedge.deploy.backends.tvm_schedules.injective import Injective

__all__ = ["ConvNHWC", "Injective", "cpu_default_rules", "CPU_LAYOUTS"]

# ConvertLayout's desired layouts for CPU targets: NHWC activations, HWIO kernels.
CPU_LAYOUTS = {"relax.nn.conv2d": ["NHWC", "HWIO"]}


def cpu_default_rules(vector_lanes: int = 8) -> list:
    """The rules, best first, for ``dlight.ApplyDefaultSchedule`` on an LLVM CPU target.

    ``vector_lanes`` is the fp32 lanes of one SIMD register (8 on AVX2 and AVX-512's ymm use; 4 on
    NEON): one vector of output channels per register, several registers along the output row."""
    from tvm.s_tir import dlight as dl

    return [ConvNHWC(vector_lanes), dl.cpu.GEMV(), dl.cpu.Reduction(), Injective(vector_lanes)]
