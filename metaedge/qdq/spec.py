"""The CLI's quantization spec ("w4a8"): the bit widths a run asks for, checked before any work."""

from __future__ import annotations

import re

from metaedge.errors import MetaedgeError

__all__ = ["parse_quant_spec"]

_SPEC = re.compile(r"^\s*w(\d+)\s*a(\d+)\s*$", re.IGNORECASE)


def parse_quant_spec(spec: str) -> tuple[int, int]:
    """``"w4a8" -> (4, 8)``. Weights 1, 2, 4 or 8 bits; activations 8 bits."""
    m = _SPEC.match(str(spec))
    if not m:
        raise MetaedgeError(f"quantization spec {spec!r} is not of the form wKaM", "use e.g. --quant w8a8, w4a8, w2a8 or w1a8")
    wbits, abits = int(m.group(1)), int(m.group(2))
    if wbits not in (1, 2, 4, 8):
        raise MetaedgeError(f"{wbits}-bit weights are not supported (spec {spec!r})", "use 1, 2, 4 or 8 weight bits")
    if abits != 8:
        raise MetaedgeError(f"{abits}-bit activations are not supported (spec {spec!r})", "use a8: integer runtimes take 8-bit activations")
    return wbits, abits
