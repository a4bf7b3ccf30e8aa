"""Default schedule for functions of only elementwise/layout blocks (clip, add, transpose chains).

``ConvertLayout`` cannot see through ops the ONNX importer emits as prebuilt TIR (Clip becomes
``call_tir(maximum/minimum)``), so MobileNetV2's ReLU6 arrives as transpose -> max -> min ->
transpose. Inlining every block into the last turns that chain back into one elementwise loop in
the tensor's own layout; its innermost loop is then vectorised.
"""

from __future__ import annotations

from tvm import s_tir

from metaedge.deploy.backends.tvm_schedules._util import DeclineOnError, iter_kinds

__all__ = ["Injective"]


class Injective(DeclineOnError):
    def __init__(self, vector_lanes: int = 8) -> None:
        self.vector_lanes = vector_lanes

    def _schedule(self, func):
        sch = s_tir.Schedule(func)
        blocks = list(sch.get_child_blocks(sch.get_sblock("root")))
        if not blocks or any(set(iter_kinds(sch.get(b))) - {"S"} for b in blocks):
            return None
        for block in blocks[:-1]:
            sch.compute_inline(block)
        loops = sch.get_loops(blocks[-1])
        if not loops:
            return None
        extent = int(sch.get(loops[-1]).extent)
        if extent % self.vector_lanes == 0 and extent > self.vector_lanes:
            sch.vectorize(sch.split(loops[-1], [None, self.vector_lanes])[1])
        elif extent <= 8 * self.vector_lanes:
            sch.vectorize(loops[-1])
        return sch
