"""Find the channel groups of a CNN: sets of channels that must be pruned together.

The model is traced with torch.fx and shapes are propagated once. Every tensor with a channel
dimension (dim 1) gets a :class:`Layout`: the ordered list of channel groups laid side by side
along that dimension (one group for a conv output, several after a ``torch.cat``). Rules:

- conv / linear outputs start a new group (the layer's output channels);
- BN, activations, pooling, dropout, spatial means pass the layout through;
- depthwise conv (groups == in == out) ties output to input: same layout;
- grouped conv (1 < groups < channels) prunes both sides evenly inside each of its blocks;
- element-wise binary ops (residual add, squeeze-excite multiply) *merge* the groups of their
  operands (union-find), so a whole residual stage shares one width;
- ``torch.cat`` on dim 1 concatenates layouts (offsets follow from the group widths);
- flatten of ``N x C x H x W`` into a linear keeps the layout with ``unit = H*W`` features per channel.

Anything else that touches a tensor with channels (view/reshape that mixes channels, channel
shuffle, indexing, unknown functions/methods/modules) fixes the groups involved at full width.
They are reported in ONE warning. The input channels and the model's output channels are fixed.
"""
from __future__ import annotations

import math
import operator
import warnings
from dataclasses import dataclass, field
from typing import Any, Sequence

import torch
import torch.fx as fx
import torch.nn as nn
import torch.nn.functional as F
from torch.fx.passes.shape_prop import ShapeProp

from metaedge.errors import MetaedgeError

__all__ = ["ChannelGroup", "GraphAnalysis", "Layout", "LayerInfo", "analyze_channels"]


@dataclass
class ChannelGroup:
    name: str
    size: int
    chunks: int = 1  # grouped conv: channels are pruned evenly inside each of `chunks` blocks
    prunable: bool = True
    producers: list[str] = field(default_factory=list)  # modules whose output channels are this group
    reason: str = ""  # why it is fixed


@dataclass(frozen=True)
class Layout:
    groups: tuple[str, ...]  # groups side by side along the channel dimension
    unit: int = 1  # features per channel after flattening C x H x W (linear inputs)


@dataclass
class LayerInfo:
    name: str
    kind: str  # "conv", "linear", "bn", "other" (activation, pooling: layout only)
    in_layout: Layout | None
    out_layout: Layout | None
    conv_groups: int = 1
    depthwise: bool = False


@dataclass
class GraphAnalysis:
    groups: dict[str, ChannelGroup]
    layers: dict[str, LayerInfo]  # module name -> layouts (call order)
    warnings: list[str]

    @property
    def prunable(self) -> list[str]:
        return [g for g, grp in self.groups.items() if grp.prunable]

    def layout_size(self, layout: Layout, widths: dict[str, int] | None = None) -> int:
        w = widths or {}
        return sum(w.get(g, self.groups[g].size) for g in layout.groups) * layout.unit

    def layout_index(self, layout: Layout, keep: dict[str, torch.Tensor]) -> torch.Tensor:
        """Indices (into the full tensor's channel/feature dim) of the kept channels of ``layout``."""
        parts, offset = [], 0
        for g in layout.groups:
            size = self.groups[g].size
            idx = keep[g] if g in keep else torch.arange(size)
            parts.append(idx + offset)
            offset += size
        ch = torch.cat(parts) if parts else torch.zeros(0, dtype=torch.long)
        if layout.unit == 1:
            return ch
        return (ch[:, None] * layout.unit + torch.arange(layout.unit)[None, :]).reshape(-1)

    def crop_keep(self, widths: dict[str, int]) -> dict[str, torch.Tensor]:
        """The 'first k channels' selection (per block for grouped convs) for each group's width."""
        keep = {}
        for g, grp in self.groups.items():
            w = widths.get(g, grp.size)
            if grp.chunks == 1:
                keep[g] = torch.arange(w)
            else:
                per, block = w // grp.chunks, grp.size // grp.chunks
                keep[g] = (torch.arange(grp.chunks)[:, None] * block + torch.arange(per)[None, :]).reshape(-1)
        return keep


_PASS_MODULES = (
    nn.ReLU, nn.ReLU6, nn.Hardswish, nn.Hardsigmoid, nn.SiLU, nn.GELU, nn.Sigmoid, nn.Tanh, nn.LeakyReLU,
    nn.ELU, nn.PReLU, nn.Mish, nn.Identity, nn.Dropout, nn.Dropout2d, nn.AvgPool2d, nn.MaxPool2d,
    nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d, nn.Upsample,
)
_PASS_FUNCS = {
    F.relu, F.relu6, F.gelu, F.silu, F.hardswish, F.hardsigmoid, F.sigmoid, F.tanh, F.leaky_relu, F.elu, F.mish,
    F.dropout, F.dropout2d, F.avg_pool2d, F.max_pool2d, F.adaptive_avg_pool2d, F.adaptive_max_pool2d, F.interpolate,
    torch.relu, torch.sigmoid, torch.tanh, torch.clamp, torch.clip,
}
_PASS_METHODS = {"relu", "relu_", "sigmoid", "sigmoid_", "tanh", "contiguous", "clone", "clamp", "clamp_", "clip", "float", "detach"}
_BINARY = {operator.add, operator.sub, operator.mul, operator.truediv, operator.iadd, operator.imul,
           torch.add, torch.sub, torch.mul, torch.div}
_BINARY_METHODS = {"add", "add_", "sub", "mul", "mul_", "div"}
_REDUCE_FUNCS = {torch.mean, torch.sum, torch.amax}
_REDUCE_METHODS = {"mean", "sum", "amax"}
_BN = (nn.BatchNorm2d, nn.BatchNorm1d)


class _UF:
    def __init__(self) -> None:
        self.parent: dict[str, str] = {}

    def add(self, x: str) -> None:
        self.parent.setdefault(x, x)

    def find(self, x: str) -> str:
        while self.parent[x] != x:
            self.parent[x] = self.parent[self.parent[x]]
            x = self.parent[x]
        return x

    def union(self, a: str, b: str) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            order = list(self.parent)  # insertion order: the group created first keeps its name
            if order.index(rb) < order.index(ra):
                ra, rb = rb, ra
            self.parent[rb] = ra


def _shape(node: Any) -> tuple[int, ...] | None:
    if not isinstance(node, fx.Node):
        return None
    meta = node.meta.get("tensor_meta")
    shape = getattr(meta, "shape", None)
    return tuple(int(s) for s in shape) if shape is not None else None


def _flatten_args(args: Any) -> list[fx.Node]:
    out: list[fx.Node] = []
    fx.node.map_arg(args, lambda n: out.append(n))
    return out


class _Analyzer:
    def __init__(self, gm: fx.GraphModule) -> None:
        self.gm = gm
        self.modules = dict(gm.named_modules())
        self.uf = _UF()
        self.size: dict[str, int] = {}
        self.chunks: dict[str, int] = {}
        self.producers: dict[str, list[str]] = {}
        self.fixed: dict[str, str] = {}
        self.env: dict[fx.Node, Layout] = {}
        self.layers: dict[str, LayerInfo] = {}
        self.first_out: dict[str, str] = {}  # shared modules: one output group for every call
        self.problems: list[str] = []

    def new_group(self, name: str, size: int, producer: str | None = None, fixed: str = "") -> str:
        base, i = name, 1
        while name in self.size:
            i += 1
            name = f"{base}#{i}"
        self.uf.add(name)
        self.size[name] = size
        self.producers[name] = [producer] if producer else []
        if fixed:
            self.fixed[name] = fixed
        return name

    def fix(self, layout: Layout | None, reason: str) -> None:
        if layout is None:
            return
        for g in layout.groups:
            self.fixed.setdefault(g, reason)

    def unsafe(self, node: fx.Node, what: str) -> Layout | None:
        touched = [self.env[a] for a in _flatten_args((node.args, node.kwargs)) if a in self.env]
        touched = [t for t in touched if t.groups]
        if touched:
            self.problems.append(f"{node.name} ({what})")
            for t in touched:
                self.fix(t, f"used by {what} at {node.name}")
        return self.fresh_fixed(node, f"output of {what}")

    def fresh_fixed(self, node: fx.Node, reason: str) -> Layout | None:
        shape = _shape(node)
        if shape is None or len(shape) < 2:
            return None
        return Layout((self.new_group(node.name, shape[1], fixed=reason),))

    def merge(self, node: fx.Node, layouts: list[Layout]) -> Layout | None:
        """Element-wise op on tensors that must keep the same channels: tie their groups."""
        first = layouts[0]
        for other in layouts[1:]:
            a = [self.size[g] for g in first.groups]
            b = [self.size[g] for g in other.groups]
            if a == b and first.unit == other.unit:
                for ga, gb in zip(first.groups, other.groups):
                    self.uf.union(ga, gb)
            else:
                self.problems.append(f"{node.name} (element-wise op on differently split channels)")
                self.fix(first, f"misaligned operands at {node.name}")
                self.fix(other, f"misaligned operands at {node.name}")
        return first

    def binary(self, node: fx.Node) -> Layout | None:
        out_shape = _shape(node)
        if out_shape is None:
            return None
        layouts = []
        for a in _flatten_args((node.args, node.kwargs)):
            shp = _shape(a)
            if shp is None or len(shp) < 2 or shp[1] == 1:
                continue  # scalars and channel-broadcast maps (e.g. spatial attention) are fine
            if a not in self.env:
                # a channel-wise tensor from a parameter/buffer we cannot crop
                return self.unsafe(node, "element-wise op with an uncroppable per-channel tensor")
            layouts.append(self.env[a])
        if not layouts:
            return self.fresh_fixed(node, "element-wise op without channel layout") if len(out_shape) >= 2 else None
        return self.merge(node, layouts)

    def flatten(self, node: fx.Node, x: fx.Node, start_dim: int) -> Layout | None:
        shp = _shape(x)
        if x not in self.env or shp is None:
            return None
        if start_dim != 1:
            return self.unsafe(node, "flatten that mixes the batch or keeps channels apart")
        layout = self.env[x]
        return Layout(layout.groups, layout.unit * math.prod(shp[2:]))

    def visit(self, node: fx.Node) -> Layout | None:
        op, target = node.op, node.target
        args = node.args
        if op == "placeholder":
            shp = _shape(node)
            return Layout((self.new_group("input", shp[1], fixed="model input"),)) if shp and len(shp) >= 2 else None
        if op == "get_attr":
            return None
        if op == "output":
            for a in _flatten_args(node.args):
                self.fix(self.env.get(a), "model output")
            return None
        if op == "call_module":
            mod = self.modules[target]
            x = args[0] if args else None
            lin = self.env.get(x) if isinstance(x, fx.Node) else None
            if isinstance(mod, (nn.Conv2d, nn.Linear)):
                return self.producer(node, mod, lin)
            if isinstance(mod, _BN):
                self.layers.setdefault(target, LayerInfo(target, "bn", lin, lin))
                return lin
            if isinstance(mod, _PASS_MODULES):
                self.layers.setdefault(target, LayerInfo(target, "other", lin, lin))
                return lin
            if isinstance(mod, nn.Flatten):
                return self.flatten(node, x, mod.start_dim)
            return self.unsafe(node, f"module {type(mod).__name__}")
        if op == "call_function":
            if target in _PASS_FUNCS:
                return self.env.get(args[0]) if args and isinstance(args[0], fx.Node) else None
            if target in _BINARY:
                return self.binary(node)
            if target is torch.flatten:
                start = args[1] if len(args) > 1 else node.kwargs.get("start_dim", 0)
                return self.flatten(node, args[0], start)
            if target is torch.cat:
                return self.cat(node, args[0], args[1] if len(args) > 1 else node.kwargs.get("dim", 0))
            if target in _REDUCE_FUNCS:
                return self.reduce(node, args[0], args[1] if len(args) > 1 else node.kwargs.get("dim"))
            if target is getattr or target is operator.getitem and _shape(node) is None:
                return None
            return self.unsafe(node, f"function {getattr(target, '__name__', target)}")
        if op == "call_method":
            x = args[0]
            if target in ("size", "dim") or _shape(node) is None:
                return None
            if target in _PASS_METHODS:
                return self.env.get(x)
            if target in _BINARY_METHODS:
                return self.binary(node)
            if target == "flatten":
                return self.flatten(node, x, args[1] if len(args) > 1 else node.kwargs.get("start_dim", 0))
            if target in ("view", "reshape"):
                shape = args[1:] if not (len(args) == 2 and isinstance(args[1], (tuple, list))) else args[1]
                in_shp, out_shp = _shape(x), _shape(node)
                if len(shape) == 2 and shape[1] == -1 and in_shp and out_shp and out_shp[0] == in_shp[0]:
                    return self.flatten(node, x, 1)  # x.view(x.size(0), -1)
                return self.unsafe(node, f"{target} that may mix channels")
            if target in _REDUCE_METHODS:
                return self.reduce(node, x, args[1] if len(args) > 1 else node.kwargs.get("dim"))
            return self.unsafe(node, f"method .{target}()")
        return self.unsafe(node, f"{op} {target}")

    def reduce(self, node: fx.Node, x: fx.Node, dim: Any) -> Layout | None:
        in_shp, out_shp = _shape(x), _shape(node)
        dims = dim if isinstance(dim, (tuple, list)) else (dim,)
        if dim is None or in_shp is None or any((d % len(in_shp)) in (0, 1) for d in dims if isinstance(d, int)) or not all(isinstance(d, int) for d in dims):
            return self.unsafe(node, "reduction over channels")
        if out_shp is None or len(out_shp) < 2 or out_shp[1] != in_shp[1]:
            return self.unsafe(node, "reduction that moves the channel dimension")
        return self.env.get(x)

    def cat(self, node: fx.Node, tensors: Sequence[fx.Node], dim: int) -> Layout | None:
        shp = _shape(node)
        layouts = [self.env.get(t) for t in tensors]
        if shp is None or any(lay is None or lay.unit != 1 for lay in layouts):
            return self.unsafe(node, "concatenation of tensors without channel layout")
        if dim % len(shp) == 1:
            return Layout(tuple(g for lay in layouts for g in lay.groups))
        if dim % len(shp) == 0:
            return self.unsafe(node, "concatenation along the batch dimension")
        return self.merge(node, layouts)  # concat along space: channels must agree

    def producer(self, node: fx.Node, mod: nn.Module, lin: Layout | None) -> Layout | None:
        name = node.target
        if lin is None:
            return self.unsafe(node, f"{type(mod).__name__} on a tensor without channel layout")
        if isinstance(mod, nn.Linear):
            out = self.out_group(name, mod.out_features)
            self.layers.setdefault(name, LayerInfo(name, "linear", lin, out))
            return out
        g, cin, cout = mod.groups, mod.in_channels, mod.out_channels
        if g == 1:
            out = self.out_group(name, cout)
            self.layers.setdefault(name, LayerInfo(name, "conv", lin, out))
            return out
        if g == cin == cout:  # depthwise: channel c in -> channel c out
            self.layers.setdefault(name, LayerInfo(name, "conv", lin, lin, conv_groups=g, depthwise=True))
            return lin
        out = self.out_group(name, cout)
        self.layers.setdefault(name, LayerInfo(name, "conv", lin, out, conv_groups=g))
        if len(lin.groups) != 1 or g == cin:  # blocks spanning several groups / depthwise multiplier
            self.problems.append(f"{node.name} (grouped conv over {len(lin.groups)} groups or with channel multiplier)")
            self.fix(lin, f"grouped conv {name}")
            self.fix(out, f"grouped conv {name}")
        else:
            for grp in (lin.groups[0], out.groups[0]):
                self.chunks[grp] = math.lcm(self.chunks.get(grp, 1), g)
        return out

    def out_group(self, name: str, size: int) -> Layout:
        if name in self.first_out:  # a module called twice produces the same channels both times
            return Layout((self.first_out[name],))
        g = self.new_group(name, size, producer=name)
        self.first_out[name] = g
        return Layout((g,))

    def run(self) -> GraphAnalysis:
        for node in self.gm.graph.nodes:
            lay = self.visit(node)
            if lay is not None:
                self.env[node] = lay
        roots: dict[str, ChannelGroup] = {}
        for g in self.size:
            r = self.uf.find(g)
            grp = roots.setdefault(r, ChannelGroup(r, self.size[r]))
            if g != r and self.size[g] != grp.size:
                raise AssertionError(f"channel group {r} merged with a group of another size ({g})")
            grp.producers += self.producers[g]
            grp.chunks = math.lcm(grp.chunks, self.chunks.get(g, 1))
            if g in self.fixed and grp.prunable:
                grp.prunable, grp.reason = False, self.fixed[g]
        for grp in roots.values():
            if grp.prunable and not grp.producers:
                grp.prunable, grp.reason = False, "no conv/linear produces it"
            if grp.size % grp.chunks:
                grp.prunable, grp.reason = False, "grouped conv blocks do not divide it"
        rl = lambda lay: None if lay is None else Layout(tuple(self.uf.find(g) for g in lay.groups), lay.unit)  # noqa: E731
        layers = {n: LayerInfo(i.name, i.kind, rl(i.in_layout), rl(i.out_layout), i.conv_groups, i.depthwise) for n, i in self.layers.items()}
        msgs = []
        if self.problems:
            fixed = sorted({g.name for g in roots.values() if not g.prunable and g.reason not in ("model input", "model output")})
            msgs.append(
                "channel pruning left these channel groups at full width because of patterns it cannot prune safely: "
                + "; ".join(dict.fromkeys(self.problems)) + f" -> fixed groups: {', '.join(fixed) or 'none'}"
            )
        return GraphAnalysis(roots, layers, msgs)


def analyze_channels(model: nn.Module, example_input: torch.Tensor, warn: bool = True) -> GraphAnalysis:
    """Trace ``model`` and return its channel groups; unsafe patterns are listed in one warning."""
    try:
        gm = fx.symbolic_trace(model)
    except Exception as exc:  # data-dependent control flow, unsupported Python in forward
        raise MetaedgeError(
            f"torch.fx cannot trace {type(model).__name__} for channel pruning ({type(exc).__name__}: {str(exc).splitlines()[0][:120]})",
            "remove data-dependent control flow from forward() or prune with --prune none",
        ) from exc
    was = model.training
    model.eval()
    try:
        with torch.no_grad():
            ShapeProp(gm).propagate(example_input[:1])
    finally:
        model.train(was)
    result = _Analyzer(gm).run()
    if warn:
        for msg in result.warnings:
            warnings.warn(msg, stacklevel=2)
    return result
