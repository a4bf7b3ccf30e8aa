"""Turn a float model into the fake-quant model that QAT trains and the QDQ exporter writes.

Works on any fx-traceable model (zoo models, pruned ones): every Conv2d/Linear becomes a
:class:`~metaedge.compress.metaquant.layers.QuantLayer` that owns the BatchNorm directly following
it (kept live during QAT, folded at eval/export), with its weight bits from the
:class:`~metaedge.qdq.policy.BitPolicy`.

Quantization points (one :class:`ActFakeQuant` per tensor, shared by all its consumers): the input
of every layer and its output -- after BN and a directly following ReLU/ReLU6/Hardtanh, as ONNX
Runtime and TensorRT fuse that activation into the quantized conv -- including the logits (ORT
only fuses a Gemm whose output is quantized). Since the output quantizer sits after BN, folding
BN into the weights at export moves no quantizer: the folded graph is the trained one.
"""

from __future__ import annotations

import copy
import math
from itertools import islice
from typing import Callable, Iterable

import torch
import torch.fx as fx
import torch.nn as nn
import torch.nn.functional as F
from torch.fx.experimental.optimization import fuse as fx_fuse
from torch.nn.modules.batchnorm import _BatchNorm

from metaedge.compress.bn import recalibrate_bn as bn_recalibrate
from metaedge.compress.metaquant.layers import QConv2d, QLinear, QuantLayer
from metaedge.qdq.policy import BitPolicy, LayerRole, parse_bit_policy
from metaedge.compress.metaquant.quantizers import ActFakeQuant, make_weight_quantizer
from metaedge.errors import MetaedgeError
from metaedge.qdq.profiles import get_profile

__all__ = [
    "act_quantizers",
    "calibrate",
    "fold_bn",
    "layer_table",
    "prepare_qat",
    "quant_layers",
    "set_export_mode",
    "set_observe",
]

_ACT_MODULES = (nn.ReLU, nn.ReLU6, nn.Hardtanh)
_ACT_FUNCTIONS = {F.relu, F.relu6, F.hardtanh, torch.relu, torch.clamp}
_BN_FOR = {nn.Conv2d: nn.BatchNorm2d, nn.Linear: nn.BatchNorm1d}


def _trace(model: nn.Module) -> fx.GraphModule:
    model = copy.deepcopy(model).eval()
    try:
        return fx.symbolic_trace(model)
    except Exception as exc:  # fx raises many types on data-dependent control flow
        raise MetaedgeError(
            f"cannot trace {type(model).__name__} with torch.fx for quantization ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})",
            "quantize a model whose forward has no data-dependent Python control flow",
        ) from exc


def fold_bn(model: nn.Module) -> fx.GraphModule:
    """Trace with torch.fx and fold every Conv->BN pair into the conv (eval statistics)."""
    gm = fx_fuse(_trace(model), inplace=True, no_trace=True)
    assert isinstance(gm, fx.GraphModule)  # fuse returns the traced module it was given, typed nn.Module
    leftover = [n for n, m in gm.named_modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if leftover:
        raise MetaedgeError(
            f"BatchNorm layers {leftover[:3]} do not directly follow a conv, so they cannot be folded",
            "quantize a model where every BN follows a Conv2d whose output only feeds that BN",
        )
    return gm


def _is_activation(node: fx.Node, modules: dict[str, nn.Module]) -> bool:
    if node.op == "call_module":
        return isinstance(modules.get(str(node.target)), _ACT_MODULES)
    if node.op == "call_function":
        return node.target in _ACT_FUNCTIONS
    if node.op == "call_method":
        return node.target in ("relu", "relu_", "clamp", "clamp_")
    return False


def _following_bn(node: fx.Node, modules: dict[str, nn.Module], calls: dict[str, int]) -> fx.Node | None:
    """The BN node that is the only user of ``node`` (and only called there), if any."""
    users = list(node.users)
    if len(users) != 1 or users[0].op != "call_module":
        return None
    bn = modules.get(str(users[0].target))
    want = _BN_FOR[type(modules[str(node.target)])]
    if type(bn) is not want or calls[str(users[0].target)] != 1 or not bn.track_running_stats:
        return None
    return users[0]


def _roles(graph: fx.Graph, layer_nodes: list[fx.Node], modules: dict[str, nn.Module]) -> dict[fx.Node, LayerRole]:
    """first: no quantized layer upstream; last: none downstream; depthwise: groups == in_channels > 1."""
    layers = set(layer_nodes)
    nodes = list(graph.nodes)
    above: dict[fx.Node, bool] = {}
    for n in nodes:
        above[n] = any(i in layers or above.get(i, False) for i in n.all_input_nodes)
    below: dict[fx.Node, bool] = {}
    for n in reversed(nodes):
        below[n] = any(u in layers or below.get(u, False) for u in n.users)
    roles = {}
    for n in layer_nodes:
        m = modules[str(n.target)]
        dw = isinstance(m, nn.Conv2d) and m.groups > 1 and m.groups == m.in_channels
        roles[n] = LayerRole(str(n.target), first=not above[n], last=not below[n], depthwise=dw)
    return roles


def _is_not(node: fx.Node) -> Callable[[fx.Node], bool]:
    return lambda user: user is not node


def _quantizer(kind: str, body_bits: int, bits: int, weight: torch.Tensor):
    if bits != body_bits:  # a policy layer: symmetric (or BWN at 1 bit), LSQ stays LSQ
        kind = "lsq" if kind == "lsq" else ("bwn" if bits == 1 else "symmetric")
    return make_weight_quantizer(kind, bits, weight.detach())


def prepare_qat(
    model: nn.Module,
    weight_quantizer: str = "symmetric",
    weight_bits: int = 8,
    *,
    policy: BitPolicy | str | None = None,
    profile: str = "ort",
    learn_act_scale: bool = False,
    quantize_output: bool = True,
) -> fx.GraphModule:
    """Swap Conv2d/Linear (+ their BN) for quantized layers and insert activation fake-quant modules.

    ``policy``: per-layer bits (default: first, last and depthwise layers at 8, see
    :mod:`~metaedge.qdq.policy`). ``profile``: ``ort`` or ``tensorrt`` (activation
    zero points; ``ort`` gives 8-bit layers a 7-bit grid; see :mod:`~metaedge.qdq.profiles`). ``quantize_output``: also quantize the logits, so the
    last Gemm fuses to QGemm in ORT. The model is not modified.
    """
    prof = get_profile(profile)
    policy = parse_bit_policy(policy)
    symmetric = prof.act_symmetric
    gm = _trace(model)
    modules = dict(gm.named_modules())
    graph = gm.graph
    layer_nodes = [n for n in graph.nodes if n.op == "call_module" and type(modules[str(n.target)]) in (nn.Conv2d, nn.Linear)]
    if not layer_nodes:
        raise MetaedgeError(f"{type(model).__name__} has no Conv2d or Linear layer to quantize", "pass a CNN built from torch.nn Conv2d/Linear layers")
    calls: dict[str, int] = {}
    for n in graph.nodes:
        if n.op == "call_module":
            calls[str(n.target)] = calls.get(str(n.target), 0) + 1
    roles = _roles(graph, layer_nodes, modules)
    for node in layer_nodes:
        m = modules[str(node.target)]
        assert isinstance(m, (nn.Conv2d, nn.Linear))  # what layer_nodes holds
        role = roles[node]
        bits, why = policy.bits_for(role, weight_bits)
        asked = bits
        bits = min(bits, prof.max_weight_bits)  # ort: a 7-bit grid for 8-bit layers (see profiles.py)
        wq = _quantizer(weight_quantizer, min(weight_bits, prof.max_weight_bits), bits, m.weight)
        bn_node = _following_bn(node, modules, calls)
        bn = None
        if bn_node is not None:
            bn = modules[str(bn_node.target)]
            assert isinstance(bn, _BatchNorm)  # _following_bn checked its type
            bn_node.replace_all_uses_with(node)
            graph.erase_node(bn_node)
            gm.delete_submodule(str(bn_node.target))
        q: QuantLayer = QConv2d.from_float(m, wq, bn, why) if isinstance(m, nn.Conv2d) else QLinear.from_float(m, wq, bn, why)
        q.bits_note = f"{prof.name} profile: {asked} -> {bits} bits" if bits != asked else ""
        parent, _, leaf = str(node.target).rpartition(".")
        setattr(gm.get_submodule(parent) if parent else gm, leaf, q)
    leftover = [
        n for n, m in gm.named_modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and not any(m is getattr(lq, "bn", None) for lq in gm.modules())
    ]
    if leftover:
        raise MetaedgeError(
            f"BatchNorm layers {leftover[:3]} do not directly follow a conv, so they cannot be folded into it",
            "quantize a model where every BN follows a Conv2d/Linear whose output only feeds that BN",
        )
    modules = dict(gm.named_modules())
    output_args = set()
    for n in graph.nodes:
        if n.op == "output":
            output_args |= set(n.all_input_nodes)
    points: list[fx.Node] = []
    for node in layer_nodes:
        inp = node.args[0]
        assert isinstance(inp, fx.Node)
        out = node
        users = list(node.users)
        if len(users) == 1 and _is_activation(users[0], modules):
            out = users[0]
        for t in (inp, out):
            if t not in points and (quantize_output or t not in output_args):
                points.append(t)
    order = {n: i for i, n in enumerate(graph.nodes)}
    for k, t in enumerate(sorted(points, key=order.__getitem__)):
        name = f"act_quant_{k}"
        gm.add_submodule(name, ActFakeQuant(8, symmetric, learn_act_scale))
        with graph.inserting_after(t):
            fq = graph.call_module(name, (t,))
        t.replace_all_uses_with(fq, delete_user_cb=_is_not(fq))
    graph.lint()
    gm.recompile()
    modules = dict(gm.named_modules())
    for node in graph.nodes:
        layer = modules[str(node.target)] if node.op == "call_module" else None
        if isinstance(layer, QuantLayer):
            src = node.args[0]
            act = modules.get(str(src.target)) if isinstance(src, fx.Node) and src.op == "call_module" else None
            if isinstance(act, ActFakeQuant):
                layer._in_quant = [act]
    # what the exporter must write (checked there). Module's stub only admits Tensor | Module
    # attributes, though Module.__setattr__ stores any other value as a plain attribute.
    gm.qdq_profile = prof.name  # type: ignore[assignment]
    return gm


def quant_layers(model: nn.Module) -> list[tuple[str, QuantLayer]]:
    return [(n, m) for n, m in model.named_modules() if isinstance(m, QuantLayer)]


def act_quantizers(model: nn.Module) -> list[ActFakeQuant]:
    return [m for m in model.modules() if isinstance(m, ActFakeQuant)]


def layer_table(model: nn.Module) -> list[dict]:
    """One row per quantized layer: its bits, quantizer, why (policy role), weights and packed bytes
    (weights bit-packed at k bits, plus fp32 per-channel scales and int32 biases)."""
    rows = []
    for name, layer in quant_layers(model):
        w = layer.weight
        kind = "linear" if not isinstance(layer, nn.Conv2d) else ("depthwise" if layer.groups > 1 and layer.groups == layer.in_channels else "conv")
        weights = math.ceil(layer.wq.bits * w.numel() / 8)
        extra = 4 * w.shape[0] * (2 if layer.has_bias() else 1)
        why = f"{layer.role}; {layer.bits_note}" if layer.bits_note else layer.role
        rows.append(
            {
                "name": name,
                "type": kind,
                "bits": layer.wq.bits,
                "quantizer": layer.wq.kind,
                "why": why,
                "bn_folded": layer.bn is not None,
                "params": w.numel(),
                "packed_bytes": weights + extra,
            }
        )
    return rows


def set_export_mode(model: nn.Module, on: bool) -> None:
    """Switch every quantizer to (or from) its export form: constants and torch fake-quant ops
    that the ONNX exporter turns into QuantizeLinear/DequantizeLinear."""
    for m in act_quantizers(model):
        m.export_mode = on
        m._frozen = m.qparams() if on else None
    for _, layer in quant_layers(model):
        layer.export_mode = on
        layer._frozen = None
        if on:
            layer.freeze_export()


def set_observe(model: nn.Module, on: bool) -> None:
    for m in act_quantizers(model):
        m.observe = on


@torch.no_grad()
def calibrate(model: nn.Module, batches: Iterable[torch.Tensor], max_batches: int, recalibrate_bn: bool = True) -> int:
    """Observe the activation ranges on up to ``max_batches`` batches in eval mode; returns batches seen.

    With ``recalibrate_bn`` (default) the live BNs' running statistics are first re-estimated on the
    same batches under the fake-quant weights. The quantized weights change each layer's output
    scale, and eval-mode BN with the float model's statistics compounds that error layer by layer:
    ResNet-20 with 1-bit DoReFa weights (``+-max|W_c|``) grew its activation ranges 10^7-fold, the
    observers calibrated to them, every activation rounded to its zero point and QAT never left
    chance. Observers run during that pass (unobserved quantizers would round to a unit step) and
    start afresh for the calibration proper.
    """
    xs = list(islice(batches, max_batches))
    was = model.training
    if recalibrate_bn and any(layer.bn is not None for _, layer in quant_layers(model)):
        set_observe(model, True)
        bn_recalibrate(model, xs)
        for m in act_quantizers(model):
            m.reset_observer()
    model.eval()
    set_observe(model, True)
    for x in xs:
        model(x)
    set_observe(model, False)
    for m in act_quantizers(model):
        if not bool(m.initialized):
            raise MetaedgeError("an activation quantizer saw no data during calibration", "pass at least one calibration batch")
    model.train(was)
    return len(xs)
