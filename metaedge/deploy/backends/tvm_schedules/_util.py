"""Small helpers shared by the schedule rules."""

from __future__ import annotations

from tvm import s_tir, tirx
from tvm.s_tir import dlight as dl

__all__ = ["DeclineOnError", "iter_kinds", "largest_divisor"]


def iter_kinds(block_stmt) -> list[str]:
    """``S`` (data parallel), ``R`` (reduction) or ``O`` (anything else) per block iter var."""
    return ["S" if iv.iter_type == 0 else ("R" if iv.iter_type == 2 else "O") for iv in block_stmt.iter_vars]


def largest_divisor(n: int, cap: int) -> int:
    """The largest divisor of ``n`` that is at most ``cap`` (a tile that needs no tail loop)."""
    for d in range(min(n, cap), 0, -1):
        if n % d == 0:
            return d
    return 1


class DeclineOnError(dl.ScheduleRule):
    """A rule whose ``_schedule(func)`` builds a schedule or returns None; a primitive that refuses
    (a pattern the rule does not cover) means "not mine", so the next rule can try."""

    def apply(self, func, target, tunable):
        if not isinstance(func, tirx.PrimFunc):
            return None
        try:
            return self._schedule(func)
        except s_tir.ScheduleError:
            return None

    def _schedule(self, func):  # pragma: no cover - abstract
        raise NotImplementedError
