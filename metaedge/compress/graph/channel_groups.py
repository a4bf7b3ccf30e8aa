"""Find the channel groups of a CNN: sets of channels that must be pruned together.

The model is traced with torch.fx in eval mode *and* in training mode (modules such as an
auxiliary classifier may run only while training, and the PruningNet trains), and shapes are
propagated once per trace. Every tensor with a channel dimension (dim 1) gets a :class:`Layout`:
the ordered list of channel groups laid side by side along that dimension (one group for a conv
output, several after a ``torch.cat``). Rules:

- conv / linear outputs start a new group (the layer's output channels);
- BN, activations, pooling, spatial means pass the layout through;
- registered pass-through functions and modules (dropout, and whatever user code declares with
  :func:`register_passthrough`, e.g. a ``torch.fx.wrap``-ped drop path) pass the layout through
  when their output has the shape of their first tensor argument;
- depthwise conv (groups == in == out) ties output to input: same layout;
- grouped conv (1 < groups < channels) prunes both sides evenly inside each of its blocks;
- element-wise binary ops (residual add, squeeze-excite multiply) *merge* the groups of their
  operands (union-find), so a whole residual stage shares one width;
- ``torch.cat`` on dim 1 concatenates layouts (offsets follow from the group widths);
- ``chunk`` / ``tensor_split(n)`` on dim 1 give each piece its own groups when the pieces hold the
  same sequence of whole groups (those are then tied, so the runtime split follows the widths);
  any other channel split (constant sizes, a group cut in two, ``unbind``) fixes its input;
  splits along other dims pass the layout to every piece;
- flatten of ``N x C x H x W`` into a linear keeps the layout with ``unit = H*W`` features per channel;
- a module called more than once (or seen in both traces) ties the inputs of its calls.

Anything else that touches a tensor with channels (view/reshape that mixes channels, channel
shuffle, indexing, unknown functions/methods/modules -- even those that keep the shape, as they
may mix channels) fixes the groups involved at full width. They are reported in ONE warning.
The input channels and the model's output channels are fixed.
"""

from __future__ import annotations

import contextlib
import math
import operator
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Sequence, TypeVar, cast

import torch
import torch.fx as fx
import torch.nn as nn
import torch.nn.functional as F
from torch.fx.passes.shape_prop import ShapeProp, TensorMetadata

from metaedge.errors import MetaedgeError

__all__ = ["ChannelGroup", "GraphAnalysis", "Layout", "LayerInfo", "analyze_channels", "register_passthrough"]


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
    layers: dict[str, LayerInfo]  # module name -> layouts (call order; training-only modules last)
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


# --- pass-through registry -------------------------------------------------------------------
# Identity-based on purpose: a name match ("drop_path", "Dropout") could hit a function that mixes
# channels, and a wrong pass-through crashes the PruningNet or silently corrupts the pruned model.
_PASSTHROUGH_FUNCS: set[Callable[..., Any]] = {
    F.dropout,
    F.dropout1d,
    F.dropout2d,
    F.dropout3d,
    F.alpha_dropout,
    F.feature_alpha_dropout,
    torch.dropout,
    torch.feature_dropout,
    torch.alpha_dropout,
    torch.feature_alpha_dropout,
}
_PASSTHROUGH_MODULES: list[type[nn.Module]] = [
    nn.Dropout,
    nn.Dropout1d,
    nn.Dropout2d,
    nn.Dropout3d,
    nn.AlphaDropout,
    nn.FeatureAlphaDropout,
]

_T = TypeVar("_T")


def register_passthrough(fn_or_module_type: _T) -> _T:
    """Declare a function or ``nn.Module`` subclass channel-preserving for channel pruning.

    Use it for code the analysis cannot see into, e.g. stochastic depth written as a
    ``torch.fx.wrap``-ped ``drop_path(x, p, training)`` (as timm does) or a ``DropPath`` module::

        @register_passthrough
        def drop_path(x, p, training): ...
        torch.fx.wrap("drop_path")  # at module level, where drop_path is defined

        register_passthrough(timm.layers.DropPath)

    Only declare what keeps output channel ``c`` a function of input channel ``c`` alone (dropping
    or scaling whole samples or channels is fine) and holds no per-channel parameters or buffers:
    the layout of the *first* tensor argument is passed to the output, and only when the output
    has exactly that argument's shape. Registered module types are traced as leaves (their forward
    is not looked into); a registered module with parameters or buffers is still treated as
    unknown. Dropout functions and modules are registered already. Returns its argument, so it
    works as a decorator.
    """
    obj: Any = fn_or_module_type
    if isinstance(obj, type):
        if not issubclass(obj, nn.Module):
            raise TypeError(f"register_passthrough takes a function or an nn.Module subclass, not the class {obj.__name__}")
        if obj not in _PASSTHROUGH_MODULES:
            _PASSTHROUGH_MODULES.append(obj)
    elif callable(obj) and not isinstance(obj, nn.Module):
        _PASSTHROUGH_FUNCS.add(obj)
    else:
        raise TypeError(f"register_passthrough takes a function or an nn.Module subclass, not {type(obj).__name__}")
    return fn_or_module_type


def _is_passthrough_fn(target: Any) -> bool:
    try:
        return target in _PASSTHROUGH_FUNCS
    except TypeError:  # unhashable target
        return False


def _is_passthrough_module(mod: nn.Module) -> bool:
    return isinstance(mod, tuple(_PASSTHROUGH_MODULES))


_PASS_MODULES = (
    nn.ReLU,
    nn.ReLU6,
    nn.Hardswish,
    nn.Hardsigmoid,
    nn.SiLU,
    nn.GELU,
    nn.Sigmoid,
    nn.Tanh,
    nn.LeakyReLU,
    nn.ELU,
    nn.PReLU,
    nn.Mish,
    nn.Identity,
    nn.AvgPool2d,
    nn.MaxPool2d,
    nn.AdaptiveAvgPool2d,
    nn.AdaptiveMaxPool2d,
    nn.Upsample,
)
_PASS_FUNCS = {
    F.relu,
    F.relu6,
    F.gelu,
    F.silu,
    F.hardswish,
    F.hardsigmoid,
    F.sigmoid,
    F.tanh,
    F.leaky_relu,
    F.elu,
    F.mish,
    F.avg_pool2d,
    F.max_pool2d,
    F.adaptive_avg_pool2d,
    F.adaptive_max_pool2d,
    F.interpolate,
    torch.relu,
    torch.sigmoid,
    torch.tanh,
    torch.clamp,
    torch.clip,
}
_PASS_METHODS = {"relu", "relu_", "sigmoid", "sigmoid_", "tanh", "contiguous", "clone", "clamp", "clamp_", "clip", "float", "detach"}
_BINARY = {operator.add, operator.sub, operator.mul, operator.truediv, operator.iadd, operator.imul, torch.add, torch.sub, torch.mul, torch.div}
_BINARY_METHODS = {"add", "add_", "sub", "mul", "mul_", "div"}
_REDUCE_FUNCS = {torch.mean, torch.sum, torch.amax}
_REDUCE_METHODS = {"mean", "sum", "amax"}
_BN = (nn.BatchNorm2d, nn.BatchNorm1d)
# x.new_empty(shape) etc. take only dtype/device from x: its channels are not used (timm's drop path
# builds its per-sample mask this way, so it shows up in the training-mode trace).
_FACTORY_METHODS = {"new_empty", "new_zeros", "new_ones", "new_full"}
# Splits of one tensor into a tuple of tensors; the value says where the `dim` argument sits.
_SPLIT_FUNCS: dict[Any, str] = {torch.chunk: "chunk", torch.functional.split: "split", torch.tensor_split: "tensor_split", torch.unbind: "unbind"}
_SPLIT_METHODS = {"chunk", "split", "split_with_sizes", "tensor_split", "unbind"}


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


def _piece_shapes(node: fx.Node) -> list[tuple[int, ...] | None] | None:
    """Shapes of a node that returns a tuple/list of tensors (``chunk``, ``split``...), else None."""
    meta = node.meta.get("tensor_meta")
    if not isinstance(meta, (tuple, list)) or isinstance(meta, TensorMetadata):  # TensorMetadata is a NamedTuple
        return None
    return [tuple(int(s) for s in m.shape) if isinstance(m, TensorMetadata) else None for m in meta]


def _flatten_args(args: Any) -> list[fx.Node]:
    out: list[fx.Node] = []
    fx.node.map_arg(args, lambda n: out.append(n))
    return out


def _first_tensor(node: fx.Node) -> fx.Node | None:
    return next((a for a in _flatten_args((node.args, node.kwargs)) if _shape(a) is not None), None)


def _arg(node: fx.Node, pos: int, name: str, default: Any) -> Any:
    return node.args[pos] if len(node.args) > pos else node.kwargs.get(name, default)


def _module_name(node: fx.Node) -> str:
    # fx names the called submodule of a call_module node by its qualified name
    assert isinstance(node.target, str), node.target
    return node.target


def _call_name(node: fx.Node, modules: dict[str, nn.Module]) -> str:
    if node.op == "call_module":
        return type(modules[_module_name(node)]).__name__
    return getattr(node.target, "__name__", str(node.target))


class _Analyzer:
    """Visits one or more traces of the same model; module-named groups are shared between them."""

    def __init__(self, model: nn.Module) -> None:
        self.modules = dict(model.named_modules())
        self.uf = _UF()
        self.size: dict[str, int] = {}
        self.chunks: dict[str, int] = {}
        self.producers: dict[str, list[str]] = {}
        self.fixed: dict[str, str] = {}
        self.env: dict[fx.Node, Layout] = {}
        self.pieces: dict[fx.Node, tuple[Layout | None, ...]] = {}  # tuple-valued nodes (splits)
        self.layers: dict[str, LayerInfo] = {}
        self.first_out: dict[str, str] = {}  # shared modules: one output group for every call
        self.inputs: dict[str, str] = {}  # placeholder name -> group, the same in every trace
        self.problems: list[str] = []
        self.hints: list[str] = []  # unknown same-shape calls: register_passthrough may fix them

    # --- groups ----------------------------------------------------------------------------------
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

    def layouts_of(self, args: Any) -> list[Layout]:
        """Layouts of every tensor in ``args``, the pieces of tuple-valued nodes included."""
        out: list[Layout] = []
        for a in _flatten_args(args):
            if a in self.env:
                out.append(self.env[a])
            out += [p for p in self.pieces.get(a, ()) if p is not None]
        return [lay for lay in out if lay.groups]

    def layout(self, x: Any) -> Layout | None:
        """The layout of ``x`` when it is a traced tensor with channels (args may be constants)."""
        return self.env.get(x) if isinstance(x, fx.Node) else None

    def unsafe(self, node: fx.Node, what: str) -> Layout | None:
        touched = self.layouts_of((node.args, node.kwargs))
        # report only what fixes something new: ops on already-fixed tensors explain nothing
        if any(g not in self.fixed for t in touched for g in t.groups):
            self.problems.append(f"{node.name} ({what})")
        for t in touched:
            self.fix(t, f"used by {what} at {node.name}")
        return self.fresh_fixed(node, f"output of {what}")

    def fresh_fixed(self, node: fx.Node, reason: str) -> Layout | None:
        shapes = _piece_shapes(node)
        if shapes is not None:  # a tuple of tensors: one fixed group per piece
            self.pieces[node] = tuple(self.fixed_layout(f"{node.name}.{i}", s, reason) for i, s in enumerate(shapes))
            return None
        return self.fixed_layout(node.name, _shape(node), reason)

    def fixed_layout(self, name: str, shape: tuple[int, ...] | None, reason: str) -> Layout | None:
        if shape is None or len(shape) < 2:
            return None
        return Layout((self.new_group(name, shape[1], fixed=reason),))

    def tie(self, node: fx.Node, layouts: list[Layout], what: str) -> Layout:
        """Tensors that must keep the same channels: tie their groups, or fix them if they are split differently."""
        first = layouts[0]
        for other in layouts[1:]:
            a = [self.size[g] for g in first.groups]
            b = [self.size[g] for g in other.groups]
            if a == b and first.unit == other.unit:
                for ga, gb in zip(first.groups, other.groups, strict=True):
                    self.uf.union(ga, gb)
            else:
                self.problems.append(f"{node.name} ({what})")
                self.fix(first, f"{what} at {node.name}")
                self.fix(other, f"{what} at {node.name}")
        return first

    def merge(self, node: fx.Node, layouts: list[Layout]) -> Layout:
        """Element-wise op on tensors that must keep the same channels."""
        return self.tie(node, layouts, "element-wise op on differently split channels")

    def record(self, node: fx.Node, info: LayerInfo) -> None:
        """Layouts of a module; a later call (or the other trace) must feed it the same channels."""
        old = self.layers.setdefault(info.name, info)
        if old is info or info.kind not in ("conv", "linear", "bn"):
            return  # parameter-free modules (ReLU reused on many tensors) constrain nothing
        if old.in_layout is not None and info.in_layout is not None:
            self.tie(node, [old.in_layout, info.in_layout], f"module {info.name} called on differently split channels")
        elif old.in_layout is not info.in_layout:  # one call without a layout: keep the other whole
            self.problems.append(f"{node.name} (module {info.name} also called on a tensor without channel layout)")
            self.fix(old.in_layout or info.in_layout, f"{info.name} called on a tensor without channel layout")

    # --- visitor ---------------------------------------------------------------------------------
    def visit(self, node: fx.Node) -> Layout | None:
        op = node.op
        if op == "placeholder":
            shp = _shape(node)
            if not shp or len(shp) < 2:
                return None
            if node.name not in self.inputs:
                self.inputs[node.name] = self.new_group("input", shp[1], fixed="model input")
            return Layout((self.inputs[node.name],))
        if op == "get_attr":
            return None
        if op == "output":
            for lay in self.layouts_of(node.args):
                self.fix(lay, "model output")
            return None
        if op == "call_module":
            return self.visit_module(node, self.modules[_module_name(node)])
        if op == "call_function":
            return self.visit_function(node)
        if op == "call_method":
            return self.visit_method(node)
        return self.unsafe(node, f"{op} {node.target}")

    def visit_module(self, node: fx.Node, mod: nn.Module) -> Layout | None:
        target, args = _module_name(node), node.args
        x = args[0] if args else None
        lin = self.layout(x)
        if isinstance(mod, (nn.Conv2d, nn.Linear)):
            return self.producer(node, mod, lin)
        if isinstance(mod, _BN):
            self.record(node, LayerInfo(target, "bn", lin, lin))
            return lin
        if isinstance(mod, _PASS_MODULES):
            self.record(node, LayerInfo(target, "other", lin, lin))
            return lin
        if isinstance(mod, nn.Flatten):
            return self.flatten(node, x, mod.start_dim)
        if _is_passthrough_module(mod):
            if any(True for _ in mod.parameters()) or any(True for _ in mod.buffers()):
                return self.unsafe(node, f"registered pass-through module {type(mod).__name__} with parameters or buffers")
            out = self.passthrough(node, f"module {type(mod).__name__}")
            self.record(node, LayerInfo(target, "other", lin, out))
            return out
        return self.unknown(node, f"module {type(mod).__name__}")

    def visit_function(self, node: fx.Node) -> Layout | None:
        target, args = node.target, node.args
        if target in _PASS_FUNCS:
            return self.layout(args[0]) if args else None
        if _is_passthrough_fn(target):
            return self.passthrough(node, f"function {getattr(target, '__name__', target)}")
        if target in _BINARY:
            return self.binary(node)
        if target is torch.flatten:
            return self.flatten(node, args[0], _arg(node, 1, "start_dim", 0))
        if target is torch.cat:
            return self.cat(node, args[0], _arg(node, 1, "dim", 0))
        if target in _REDUCE_FUNCS:
            return self.reduce(node, args[0], _arg(node, 1, "dim", None))
        if target in _SPLIT_FUNCS:
            return self.split(node, _SPLIT_FUNCS[target])
        if target is operator.getitem and args and isinstance(args[0], fx.Node) and args[0] in self.pieces:
            return self.getitem(node, args[0], args[1])
        if target is getattr or target is operator.getitem and _shape(node) is None and _piece_shapes(node) is None:
            return None
        return self.unknown(node, f"function {getattr(target, '__name__', target)}")

    def visit_method(self, node: fx.Node) -> Layout | None:
        target, args = node.target, node.args
        x = args[0]
        if target in _SPLIT_METHODS:
            return self.split(node, "split" if target == "split_with_sizes" else target)
        if target in ("size", "dim") or _shape(node) is None and _piece_shapes(node) is None:
            return None  # not a tensor
        if target in _PASS_METHODS:
            return self.layout(x)
        if target in _BINARY_METHODS:
            return self.binary(node)
        if target in _FACTORY_METHODS:
            return self.fresh_fixed(node, f"new tensor from .{target}()")
        if target == "flatten":
            return self.flatten(node, x, _arg(node, 1, "start_dim", 0))
        if target in ("view", "reshape"):
            shape = args[1:] if not (len(args) == 2 and isinstance(args[1], (tuple, list))) else args[1]
            in_shp, out_shp = _shape(x), _shape(node)
            if len(shape) == 2 and shape[1] == -1 and in_shp and out_shp and out_shp[0] == in_shp[0]:
                return self.flatten(node, x, 1)  # x.view(x.size(0), -1)
            return self.unsafe(node, f"{target} that may mix channels")
        if target in _REDUCE_METHODS:
            return self.reduce(node, x, _arg(node, 1, "dim", None))
        return self.unsafe(node, f"method .{target}()")

    # --- rules -----------------------------------------------------------------------------------
    def passthrough(self, node: fx.Node, what: str) -> Layout | None:
        """A registered channel-preserving call: the output takes its first tensor argument's layout."""
        x = _first_tensor(node)
        if x is None:
            return self.fresh_fixed(node, f"output of {what}")
        if _shape(node) != _shape(x):
            return self.unsafe(node, f"pass-through {what} that changed the shape")
        others = [a for a in _flatten_args((node.args, node.kwargs)) if a is not x]
        for lay in self.layouts_of(others):  # only the first argument is declared channel-preserving
            self.problems.append(f"{node.name} (further tensor argument of pass-through {what})")
            self.fix(lay, f"further tensor argument of {what} at {node.name}")
        return self.env.get(x)

    def unknown(self, node: fx.Node, what: str) -> Layout | None:
        """An opaque call. It may mix channels even when it keeps the shape, so it is never assumed to
        pass through; the warning then points at register_passthrough."""
        x = _first_tensor(node)
        has_state = node.op == "call_module" and any(True for _ in self.modules[_module_name(node)].state_dict())
        if x in self.env and not has_state and _shape(node) == _shape(x) and any(g not in self.fixed for g in self.env[x].groups):
            self.hints.append(_call_name(node, self.modules))  # registering a module with state would not help
        return self.unsafe(node, what)

    def getitem(self, node: fx.Node, src: fx.Node, index: Any) -> Layout | None:
        pieces = self.pieces[src]
        if isinstance(index, slice):  # x.chunk(4, 1)[1:] is a tuple again
            self.pieces[node] = pieces[index]
            return None
        if isinstance(index, int) and -len(pieces) <= index < len(pieces):
            return pieces[index]
        return self.unsafe(node, "indexing a tuple of tensors with a computed index")

    def split(self, node: fx.Node, kind: str) -> Layout | None:
        """chunk / split / tensor_split / unbind: one layout per piece (see the module docstring)."""
        x, shapes = node.args[0], _piece_shapes(node)
        in_shp = _shape(x)
        if shapes is None or in_shp is None or len(in_shp) < 2:
            return self.unsafe(node, f"{kind} of a tensor without channel layout")
        lin = self.layout(x)
        dim = _arg(node, 1 if kind == "unbind" else 2, "dim", 0)
        if not isinstance(dim, int):
            return self.unsafe(node, f"{kind} along a computed dimension")
        dim %= len(in_shp)
        if dim == 0 and kind == "unbind":
            return self.unsafe(node, "unbind of the batch dimension")  # the channels move to dim 0
        if dim != 1:  # batch or spatial split: every piece keeps all channels
            if any(s is None or len(s) < 2 or s[1] != in_shp[1] for s in shapes):
                return self.unsafe(node, f"{kind} that moves the channel dimension")
            self.pieces[node] = tuple(lin for _ in shapes)
            return None
        if lin is None:
            return self.fresh_fixed(node, f"pieces of {kind}")
        groups = self.channel_pieces(node, kind, lin, shapes)
        if groups is None:
            return self.unsafe(node, f"{kind} along channels that cannot follow the widths")
        for g in groups[1:]:  # equal pieces at every width: the runtime split keeps its boundaries
            self.tie(node, [Layout(groups[0], lin.unit), Layout(g, lin.unit)], f"{kind} into unequal pieces")
        self.pieces[node] = tuple(Layout(g, lin.unit) for g in groups)
        return None

    def channel_pieces(self, node: fx.Node, kind: str, lin: Layout, shapes: list[tuple[int, ...] | None]) -> list[tuple[str, ...]] | None:
        """The groups of each piece of a split along channels, or None if pruning would move its boundaries.

        Only a split whose pieces are computed at run time from the channel count (``chunk(n)``,
        ``tensor_split(n)``), with n equal pieces that each hold the same sequence of whole groups,
        stays correct: tied, those groups keep the pieces equal at every width. Constant sizes
        (``split([16, 16])``, ``split(8)``) no longer match once the input is pruned.
        """
        n = _arg(node, 1, "chunks" if kind == "chunk" else "sections", None)
        if kind not in ("chunk", "tensor_split") or not isinstance(n, int) or len(shapes) != n:
            return None
        known = [s for s in shapes if s is not None]
        if len(known) != len(shapes):
            return None
        bounds: dict[int, int] = {0: 0}  # feature offset -> number of groups before it
        offset = 0
        for i, g in enumerate(lin.groups):
            offset += self.size[g] * lin.unit
            bounds[offset] = i + 1
        out, start = [], 0
        for s in known:
            end = start + s[1]
            if start not in bounds or end not in bounds:
                return None  # a group is cut in two
            out.append(lin.groups[bounds[start] : bounds[end]])
            start = end
        sizes = [[self.size[g] for g in grp] for grp in out]
        return out if all(s == sizes[0] for s in sizes) else None

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

    def flatten(self, node: fx.Node, x: fx.node.Argument, start_dim: int) -> Layout | None:
        shp, layout = _shape(x), self.layout(x)
        if layout is None or shp is None:
            return None
        if start_dim != 1:
            return self.unsafe(node, "flatten that mixes the batch or keeps channels apart")
        return Layout(layout.groups, layout.unit * math.prod(shp[2:]))

    def reduce(self, node: fx.Node, x: fx.node.Argument, dim: Any) -> Layout | None:
        in_shp, out_shp = _shape(x), _shape(node)
        dims = dim if isinstance(dim, (tuple, list)) else (dim,)
        if dim is None or in_shp is None or any((d % len(in_shp)) in (0, 1) for d in dims if isinstance(d, int)) or not all(isinstance(d, int) for d in dims):
            return self.unsafe(node, "reduction over channels")
        if out_shp is None or len(out_shp) < 2 or out_shp[1] != in_shp[1]:
            return self.unsafe(node, "reduction that moves the channel dimension")
        return self.layout(x)

    def cat(self, node: fx.Node, tensors: fx.node.Argument, dim: int) -> Layout | None:
        shp = _shape(node)
        if isinstance(tensors, fx.Node):  # torch.cat(x.chunk(2, 1), 1)
            found = list(self.pieces.get(tensors, (None,)))
        else:  # torch.cat takes a sequence of tensors
            found = [self.layout(t) for t in cast(Sequence[fx.node.Argument], tensors)]
        layouts = [lay for lay in found if lay is not None]
        if shp is None or len(layouts) != len(found) or any(lay.unit != 1 for lay in layouts):
            return self.unsafe(node, "concatenation of tensors without channel layout")
        if dim % len(shp) == 1:
            return Layout(tuple(g for lay in layouts for g in lay.groups))
        if dim % len(shp) == 0:
            return self.unsafe(node, "concatenation along the batch dimension")
        return self.merge(node, layouts)  # concat along space: channels must agree

    def producer(self, node: fx.Node, mod: nn.Conv2d | nn.Linear, lin: Layout | None) -> Layout | None:
        name = _module_name(node)
        if lin is None:
            return self.unsafe(node, f"{type(mod).__name__} on a tensor without channel layout")
        if isinstance(mod, nn.Linear):
            out = self.out_group(name, mod.out_features)
            self.record(node, LayerInfo(name, "linear", lin, out))
            return out
        g, cin, cout = mod.groups, mod.in_channels, mod.out_channels
        if g == 1:
            out = self.out_group(name, cout)
            self.record(node, LayerInfo(name, "conv", lin, out))
            return out
        if g == cin == cout:  # depthwise: channel c in -> channel c out
            self.record(node, LayerInfo(name, "conv", lin, lin, conv_groups=g, depthwise=True))
            return lin
        out = self.out_group(name, cout)
        self.record(node, LayerInfo(name, "conv", lin, out, conv_groups=g))
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

    # --- result ----------------------------------------------------------------------------------
    def visit_graph(self, gm: fx.GraphModule) -> None:
        for node in gm.graph.nodes:
            lay = self.visit(node)
            if lay is not None:
                self.env[node] = lay

    def result(self) -> GraphAnalysis:
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
        return GraphAnalysis(roots, layers, self.messages(roots))

    def messages(self, roots: dict[str, ChannelGroup]) -> list[str]:
        if not self.problems:
            return []
        fixed = sorted({g.name for g in roots.values() if not g.prunable and g.reason not in ("model input", "model output")})
        msg = (
            "channel pruning left these channel groups at full width because of patterns it cannot prune safely: "
            + "; ".join(dict.fromkeys(self.problems))
            + f" -> fixed groups: {', '.join(fixed) or 'none'}"
        )
        if self.hints:
            msg += (
                f". If {', '.join(dict.fromkeys(self.hints))} only drop or scale whole samples or channels "
                "(e.g. drop path) and hold no per-channel parameters, declare them with "
                "metaedge.compress.graph.register_passthrough(...)"
            )
        return [msg]


class _Tracer(fx.Tracer):
    """Registered pass-through module types are leaves: their forward (e.g. random masks) is not traced."""

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        return _is_passthrough_module(m) or super().is_leaf_module(m, module_qualified_name)


@contextlib.contextmanager
def _mode(model: nn.Module, training: bool) -> Iterator[None]:
    """Every submodule in one mode; restores each submodule's own flag (frozen BN stays frozen)."""
    saved = [(m, m.training) for m in model.modules()]
    model.train(training)
    try:
        yield
    finally:
        for m, was in saved:
            m.training = was


def _trace(model: nn.Module, training: bool) -> fx.GraphModule:
    """``self.training`` is a constant while tracing, so each mode has its own graph."""
    mode = "training" if training else "eval"
    try:
        with _mode(model, training):
            tracer = _Tracer()
            graph = tracer.trace(model)
    except Exception as exc:  # data-dependent control flow, unsupported Python in forward
        raise MetaedgeError(
            f"torch.fx cannot trace {type(model).__name__} in {mode} mode for channel pruning ({type(exc).__name__}: {str(exc).splitlines()[0][:120]})",
            "remove data-dependent control flow from forward() or prune with --prune none",
        ) from exc
    return fx.GraphModule(tracer.root, graph, type(model).__name__)


def _propagate(model: nn.Module, gm: fx.GraphModule, example: torch.Tensor) -> None:
    # modules in eval mode even for the training-mode graph: same shapes, no BN statistics updated
    with _mode(model, False), torch.no_grad():
        ShapeProp(gm).propagate(example[:1])


def analyze_channels(model: nn.Module, example_input: torch.Tensor, warn: bool = True) -> GraphAnalysis:
    """Trace ``model`` (eval and training mode) and return its channel groups; unsafe patterns are
    listed in one warning."""
    graphs = [_trace(model, False)]
    train_gm = _trace(model, True)
    if train_gm.code != graphs[0].code:  # e.g. an auxiliary head that runs only while training
        graphs.append(train_gm)
    analyzer = _Analyzer(model)
    for gm in graphs:  # eval first: its nodes name the groups
        _propagate(model, gm, example_input)
        analyzer.visit_graph(gm)
    result = analyzer.result()
    if warn:
        for msg in result.warnings:
            warnings.warn(msg, stacklevel=2)
    return result
