"""Per-layer weight bits: which layers keep 8 bits when the body goes to k.

The first layer (it sees the raw image), the last one (it writes the logits) and depthwise convs
(nine weights per output channel: a 2-bit grid leaves three values for a whole filter) carry most
of the error of low-bit weights for a small share of the size; keeping them at 8 bits is what
kept MobileNetV2 off chance at w2 and w1 (issue 11). :class:`BitPolicy` says so per role, and
``layers`` pins single layers by name pattern.

Spec strings (``--quant-layer-bits``): ``"default"`` (first, last and depthwise at 8), ``"uniform"``
(every layer at the body's bits), or comma-separated ``ROLE=BITS`` / ``PATTERN=BITS`` items where ROLE is
``first``, ``last`` or ``depthwise``, PATTERN an fnmatch pattern over module names (``layer1.*``),
and BITS 1, 2, 4, 8 or ``same`` (the body's bits). Items not named keep their default.
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass, replace
from typing import Any, Iterable

from metaedge.errors import MetaedgeError

__all__ = ["BitPolicy", "LayerRole", "UNIFORM", "assign_bits", "parse_bit_policy"]

ROLES = ("first", "last", "depthwise")
_BITS = (1, 2, 4, 8)


@dataclass(frozen=True)
class LayerRole:
    """What the policy needs to know about one quantized layer."""

    name: str
    first: bool
    last: bool
    depthwise: bool


@dataclass(frozen=True)
class BitPolicy:
    first: int | None = 8  # None: the body's bits
    last: int | None = 8
    depthwise: int | None = 8
    layers: tuple[tuple[str, int | None], ...] = ()  # (fnmatch pattern, bits), the first match wins

    def __post_init__(self) -> None:
        for what, bits in [*((r, getattr(self, r)) for r in ROLES), *self.layers]:
            if bits is not None and bits not in _BITS:
                raise MetaedgeError(f"layer bits {what}={bits} are not supported", "use 1, 2, 4, 8 or 'same'")

    def bits_for(self, role: LayerRole, body_bits: int) -> tuple[int, str]:
        """(bits, why) for one layer: a name pattern, else first/last, else depthwise, else the body."""
        for pattern, bits in self.layers:
            if fnmatch.fnmatchcase(role.name, pattern):
                return (body_bits if bits is None else bits), f"pattern {pattern}"
        for flag in ROLES:
            bits = getattr(self, flag)
            if getattr(role, flag) and bits is not None:
                return bits, flag
        return body_bits, "body"

    def to_spec(self) -> str:
        items = [f"{r}={'same' if getattr(self, r) is None else getattr(self, r)}" for r in ROLES]
        items += [f"{p}={'same' if b is None else b}" for p, b in self.layers]
        return ",".join(items)


UNIFORM = BitPolicy(first=None, last=None, depthwise=None)


def _bits(value: str, item: str) -> int | None:
    v = value.strip().lower()
    if v in ("same", "k", "body"):
        return None
    if v.startswith("w"):
        v = v[1:]
    if not v.isdigit() or int(v) not in _BITS:
        raise MetaedgeError(f"layer-bits item {item!r} has bits {value!r}", "use 1, 2, 4, 8 or 'same', e.g. depthwise=8")
    return int(v)


def parse_bit_policy(spec: str | BitPolicy | None) -> BitPolicy:
    """``"default"``, ``"uniform"`` or ``"first=8,depthwise=same,layer4.*=4"`` -> :class:`BitPolicy`."""
    if isinstance(spec, BitPolicy):
        return spec
    text = (spec or "default").strip()
    if text.lower() in ("default", ""):
        return BitPolicy()
    if text.lower() in ("uniform", "none", "off"):
        return UNIFORM
    policy, patterns = BitPolicy(), []
    for item in (i.strip() for i in text.split(",")):
        if not item:
            continue
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise MetaedgeError(f"layer-bits item {item!r} is not KEY=BITS", "write e.g. first=8,last=8,depthwise=8 or 'uniform'")
        key = key.strip()
        if key.lower() in ROLES:
            role_bits: dict[str, Any] = {key.lower(): _bits(value, item)}  # one of the role fields
            policy = replace(policy, **role_bits)
        else:
            patterns.append((key, _bits(value, item)))
    return replace(policy, layers=tuple(patterns))


def assign_bits(policy: BitPolicy, roles: Iterable[LayerRole], body_bits: int) -> dict[str, tuple[int, str]]:
    return {r.name: policy.bits_for(r, body_bits) for r in roles}
