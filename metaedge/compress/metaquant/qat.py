"""Quantization-aware training: BN folding, fake-quant insertion, and the MetaQuant / STE loop.

Why fold BN *before* QAT (not at export): the deployed graph has Conv(+bias) and no BN, and its
activation quantizers sit on the conv *outputs* after BN (ONNX Runtime fuses DQ -> Conv -> Q into
QLinearConv only when the output is quantized). Folding first means the QAT model is the deployed
graph: the same weights on the same k-bit grid, the same activation scales at the same tensors, so
QDQ export reproduces it up to float rounding. Folding at export would re-scale the weight grid
per channel (exact) but move the output quantizers across BN (not exact). The price is that QAT
sees no batch statistics, which is fine for fine-tuning a trained model at a small learning rate.

Quantization points (one :class:`ActFakeQuant` per tensor, shared by all its consumers): the input
of every Conv2d/Linear and its output -- after a directly following ReLU/ReLU6/Hardtanh, as ORT
fuses that activation into the quantized conv -- including the logits (ORT only fuses a Gemm whose
output is quantized). Works on any fx-traceable model (zoo models, pruned ones).

MetaQuant step (paper, section 3): for each layer with previous quantized-weight gradient g,
``mg = calib(W) * M_phi(g)``; the forward pass uses
``W_meta = W - lr * (mg + (grad - mg).detach())`` (value W - lr*grad, gradient into phi through mg),
quantized; the task loss then trains phi (Adam) and ``grad = mg.detach() + wd*W`` is applied to W
by SGD afterwards (late weight update). With ``method="ste"`` the weights are quantized with the
straight-through estimator and updated with their own gradient.
"""
from __future__ import annotations

import copy
import math
import time
from pathlib import Path
from typing import Any, Callable, Iterable

import torch
import torch.fx as fx
import torch.nn as nn
import torch.nn.functional as F
from torch.fx.experimental.optimization import fuse as fx_fuse

from metaedge.artifacts import atomic_path
from metaedge.compress.metaquant.meta import MetaNet, make_meta_net
from metaedge.compress.metaquant.quantizers import _decomposed_ops, ActFakeQuant, WeightQuantizer, make_weight_quantizer, round_ste
from metaedge.compress.train import evaluate, load_checkpoint, progress
from metaedge.errors import MetaedgeError

__all__ = [
    "QConv2d",
    "QLinear",
    "QuantLayer",
    "act_quantizers",
    "calibrate",
    "fold_bn",
    "prepare_qat",
    "quant_layers",
    "set_export_mode",
    "set_observe",
    "train_qat",
]

_ACT_MODULES = (nn.ReLU, nn.ReLU6, nn.Hardtanh)
_ACT_FUNCTIONS = {F.relu, F.relu6, F.hardtanh, torch.relu, torch.clamp}


class QuantLayer:
    """Mixin for conv/linear layers with a quantized weight (and an int32-grid bias)."""

    wq: WeightQuantizer
    w_meta: torch.Tensor | None
    w_hat: torch.Tensor | None
    capture: bool
    export_mode: bool
    _in_quant: list[ActFakeQuant]

    def _init_quant(self, wq: WeightQuantizer) -> None:
        self.wq = wq
        self.w_meta = None  # set by the MetaQuant step for one forward pass
        self.w_hat = None
        self.capture = False
        self.export_mode = False
        self._in_quant = []  # a list keeps the shared module out of this layer's state dict

    def int_weight(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The integer weight (int8 container) and its per-output-channel scale."""
        with torch.no_grad():
            q, scale = self.wq(self.weight)
        return q.to(torch.int8), scale.reshape(-1).float()

    def quant_weight(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(fake-quant weight, its per-channel scale) from W, or from W_meta during a MetaQuant step."""
        q, scale = self.wq(self.w_meta if self.w_meta is not None else self.weight)
        w_hat = q * scale
        if self.capture and w_hat.requires_grad:
            w_hat.retain_grad()
            self.w_hat = w_hat
        return w_hat, scale.detach()

    def bias_scale(self, w_scale: torch.Tensor) -> torch.Tensor | None:
        if not self._in_quant:
            return None
        s_x, _ = self._in_quant[0].qparams()
        return torch.tensor(s_x, dtype=torch.float32) * w_scale.reshape(-1).float()

    def quant_bias(self, w_scale: torch.Tensor) -> torch.Tensor | None:
        """Bias on the int32 grid s_x * s_w (what QLinearConv adds), so the export matches."""
        if self.bias is None:
            return None
        s_b = self.bias_scale(w_scale)
        if s_b is None:
            return self.bias
        return round_ste(self.bias / s_b.detach()) * s_b.detach()

    def freeze_export(self) -> None:
        """Compute the deployed weight/bias once, as constants, so torch.export sees no data-dependent ops."""
        with torch.no_grad():
            q, scale = self.int_weight()
            bias = self.quant_bias(scale).detach().clone() if self.bias is not None else None
        self._frozen = (q.clone(), scale.clone(), torch.zeros_like(scale, dtype=torch.int64), bias)

    def _export_weight(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        if getattr(self, "_frozen", None) is None:
            self.freeze_export()
        q, scale, zp, bias = self._frozen
        # int8 constant -> DequantizeLinear(axis 0): the initializer in the ONNX file is int8
        w = _decomposed_ops().dequantize_per_channel(q, scale, zp, 0, -128, 127, torch.int8)
        return w, bias

    def _weight_and_bias(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        if self.export_mode:
            return self._export_weight()
        w_hat, scale = self.quant_weight()
        return w_hat, self.quant_bias(scale)


class QConv2d(nn.Conv2d, QuantLayer):
    @classmethod
    def from_float(cls, m: nn.Conv2d, wq: WeightQuantizer) -> "QConv2d":
        q = cls(m.in_channels, m.out_channels, m.kernel_size, m.stride, m.padding, m.dilation, m.groups, m.bias is not None, m.padding_mode)
        q.load_state_dict(m.state_dict())
        q._init_quant(wq)
        return q

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w, b = self._weight_and_bias()
        return self._conv_forward(x, w, b)


class QLinear(nn.Linear, QuantLayer):
    @classmethod
    def from_float(cls, m: nn.Linear, wq: WeightQuantizer) -> "QLinear":
        q = cls(m.in_features, m.out_features, m.bias is not None)
        q.load_state_dict(m.state_dict())
        q._init_quant(wq)
        return q

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w, b = self._weight_and_bias()
        return F.linear(x, w, b)


def fold_bn(model: nn.Module) -> fx.GraphModule:
    """Trace with torch.fx and fold every Conv->BN (and Linear->BN1d) pair; returns a GraphModule."""
    model = copy.deepcopy(model).eval()
    try:
        gm = fx.symbolic_trace(model)
    except Exception as exc:  # fx raises many types on data-dependent control flow
        raise MetaedgeError(
            f"cannot trace {type(model).__name__} with torch.fx for quantization ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})",
            "quantize a model whose forward has no data-dependent Python control flow",
        ) from exc
    gm = fx_fuse(gm, inplace=True, no_trace=True)
    leftover = [n for n, m in gm.named_modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if leftover:
        raise MetaedgeError(f"BatchNorm layers {leftover[:3]} do not directly follow a conv, so they cannot be folded", "quantize a model where every BN follows a Conv2d whose output only feeds that BN")
    return gm


def _is_activation(node: fx.Node, modules: dict[str, nn.Module]) -> bool:
    if node.op == "call_module":
        return isinstance(modules.get(str(node.target)), _ACT_MODULES)
    if node.op == "call_function":
        return node.target in _ACT_FUNCTIONS
    if node.op == "call_method":
        return node.target in ("relu", "relu_", "clamp", "clamp_")
    return False


def prepare_qat(
    model: nn.Module,
    weight_quantizer: str,
    weight_bits: int,
    act_symmetric: bool = False,
    learn_act_scale: bool = False,
    first_last_bits: int | None = 8,
    quantize_output: bool = True,
) -> fx.GraphModule:
    """Fold BN, swap Conv2d/Linear for QConv2d/QLinear and insert activation fake-quant modules.

    ``first_last_bits``: the first conv and the last linear keep symmetric 8-bit weights (common
    practice, as in the DoReFa/MetaQuant papers which keep them full precision; None quantizes
    them like the rest). ``quantize_output``: also quantize the logits, so the last Gemm fuses to
    QGemm in ORT (ORT keeps a Gemm whose output has no Q in float).
    """
    gm = fold_bn(model)
    modules = dict(gm.named_modules())
    graph = gm.graph
    layer_nodes = [n for n in graph.nodes if n.op == "call_module" and type(modules[str(n.target)]) in (nn.Conv2d, nn.Linear)]
    if not layer_nodes:
        raise MetaedgeError(f"{type(model).__name__} has no Conv2d or Linear layer to quantize", "pass a CNN built from torch.nn Conv2d/Linear layers")
    output_args = set()
    for n in graph.nodes:
        if n.op == "output":
            output_args |= set(n.all_input_nodes)
    for i, node in enumerate(layer_nodes):
        m = modules[str(node.target)]
        edge = i == 0 or i == len(layer_nodes) - 1
        if edge and first_last_bits:
            wq = make_weight_quantizer("symmetric", first_last_bits)
        else:
            wq = make_weight_quantizer(weight_quantizer, weight_bits)
        q = (QConv2d if isinstance(m, nn.Conv2d) else QLinear).from_float(m, wq)
        parent, _, leaf = str(node.target).rpartition(".")
        setattr(gm.get_submodule(parent) if parent else gm, leaf, q)
    modules = dict(gm.named_modules())
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
        gm.add_submodule(name, ActFakeQuant(8, act_symmetric, learn_act_scale))
        with graph.inserting_after(t):
            fq = graph.call_module(name, (t,))
        t.replace_all_uses_with(fq, delete_user_cb=lambda u, fq=fq: u is not fq)
    graph.lint()
    gm.recompile()
    modules = dict(gm.named_modules())
    for node in graph.nodes:
        if node.op == "call_module" and isinstance(modules[str(node.target)], QuantLayer):
            src = node.args[0]
            if isinstance(src, fx.Node) and src.op == "call_module" and isinstance(modules.get(str(src.target)), ActFakeQuant):
                modules[str(node.target)]._in_quant = [modules[str(src.target)]]
    return gm


def quant_layers(model: nn.Module) -> list[tuple[str, QuantLayer]]:
    return [(n, m) for n, m in model.named_modules() if isinstance(m, QuantLayer)]


def act_quantizers(model: nn.Module) -> list[ActFakeQuant]:
    return [m for m in model.modules() if isinstance(m, ActFakeQuant)]


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
def calibrate(model: nn.Module, batches: Iterable[torch.Tensor], max_batches: int) -> int:
    """Run up to ``max_batches`` batches in eval mode with the observers on; returns batches seen."""
    was = model.training
    model.eval()
    set_observe(model, True)
    seen = 0
    for x in batches:
        if seen >= max_batches:
            break
        model(x)
        seen += 1
    set_observe(model, False)
    for m in act_quantizers(model):
        if not bool(m.initialized):
            raise MetaedgeError("an activation quantizer saw no data during calibration", "pass at least one calibration batch")
    model.train(was)
    return seen


def _lr_at(step: int, total: int, lr: float) -> float:
    return 0.5 * lr * (1 + math.cos(math.pi * min(1.0, step / max(1, total))))


def train_qat(
    model: fx.GraphModule,
    train_loader,
    val_loader,
    *,
    method: str,
    meta_variant: str,
    epochs: int,
    lr: float,
    meta_lr: float,
    weight_decay: float = 5e-5,
    momentum: float = 0.9,
    meta_hidden: int = 100,
    label_smoothing: float = 0.0,
    seed: int = 0,
    checkpoint: Path | None = None,
    config: dict[str, Any] | None = None,
    quiet: bool = False,
    observe_epochs: int = 1,
    on_step: Callable[[dict], None] | None = None,
    meta: MetaNet | None = None,
) -> dict[str, Any]:
    """Train ``model`` (from :func:`prepare_qat`, already calibrated) in place.

    ``meta``: an existing meta network to train (default: a fresh one of ``meta_variant``).
    Returns {"history", "val_accuracy", "seconds", "meta": MetaNet | None}. A checkpoint is written
    atomically after every epoch (model, meta net, both optimisers, the per-layer meta inputs);
    with a matching ``config`` a rerun resumes from it.
    """
    if method not in ("metaquant", "ste"):
        raise MetaedgeError(f"unknown QAT method {method!r}", "use 'metaquant' or 'ste'")
    torch.manual_seed(seed)
    layers = [m for _, m in quant_layers(model)]
    names = [n for n, _ in quant_layers(model)]
    layer_weights = {id(m.weight) for m in layers}
    other = [p for p in model.parameters() if p.requires_grad and id(p) not in layer_weights]
    opt = torch.optim.SGD(
        [{"params": [m.weight for m in layers], "weight_decay": 0.0 if method == "metaquant" else weight_decay}, {"params": other, "weight_decay": 0.0}],
        lr=lr, momentum=momentum,
    )
    meta_opt = None
    if method != "metaquant":
        meta = None
    else:
        if meta_variant == "lstmfc":
            n = sum(m.weight.numel() for m in layers)
            if n > 600_000:
                raise MetaedgeError(f"LSTMFC keeps a {meta_hidden}-wide LSTM state for each of the model's {n} weights (~{n * meta_hidden * 8 * 4 / 2**30:.1f} GiB)", "use meta variant 'fc' or 'multifc' for this model")
        meta = meta if meta is not None else make_meta_net(meta_variant, meta_hidden)
        meta_opt = torch.optim.Adam(meta.parameters(), lr=meta_lr)
    prev_grad: dict[str, torch.Tensor] = {}
    steps_per_epoch = len(train_loader)
    total = epochs * steps_per_epoch
    start_epoch, history = 0, []
    if checkpoint is not None and checkpoint.exists():
        state = load_checkpoint(checkpoint)
        if state.get("config") != config:
            raise MetaedgeError(f"QAT checkpoint {checkpoint} was written with other settings", f"delete {checkpoint} or rerun with the settings it was made with")
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        if meta is not None:
            meta.load_state_dict(state["meta"])
            meta_opt.load_state_dict(state["meta_optimizer"])  # type: ignore[union-attr]
        prev_grad = dict(state.get("prev_grad", {}))
        start_epoch, history = int(state["epoch"]), list(state["history"])
    criterion = nn.CrossEntropyLoss(label_smoothing=label_smoothing)
    t0 = time.perf_counter()
    val_acc = history[-1]["val_accuracy"] if history else float("nan")
    with progress(quiet) as bar:
        task = bar.add_task(f"qat-{method}", total=total, completed=start_epoch * steps_per_epoch, info="")
        for epoch in range(start_epoch, epochs):
            model.train()
            set_observe(model, epoch < observe_epochs)
            if getattr(train_loader, "generator", None) is not None:
                train_loader.generator.manual_seed(seed * 1000 + epoch)
            loss_sum = correct = seen = 0.0
            for i, (x, y) in enumerate(train_loader):
                step_lr = _lr_at(epoch * steps_per_epoch + i, total, lr)
                for g in opt.param_groups:
                    g["lr"] = step_lr
                grads: dict[str, torch.Tensor] = {}
                if meta is not None:
                    for name, m in zip(names, layers):
                        m.capture = True
                        g_prev = prev_grad.get(name)
                        if g_prev is None:
                            m.w_meta = None  # first step: no meta input yet, plain STE forward
                            continue
                        w = m.weight.detach()
                        mg = m.wq.calib(w) * meta(g_prev, w, name)
                        grad = mg.detach() + weight_decay * w
                        m.w_meta = w - step_lr * (mg + (grad - mg).detach())
                        grads[name] = grad
                out = model(x)
                loss = criterion(out, y)
                if not torch.isfinite(loss):
                    raise MetaedgeError(
                        f"QAT diverged at epoch {epoch + 1} step {i + 1} (loss {loss.item()})",
                        "lower the QAT lr or meta_lr, or use method 'ste'",
                    )
                opt.zero_grad(set_to_none=True)
                if meta_opt is not None:
                    meta_opt.zero_grad(set_to_none=True)
                loss.backward()
                if meta is not None:
                    for name, m in zip(names, layers):
                        if m.w_hat is not None and m.w_hat.grad is not None:
                            prev_grad[name] = m.w_hat.grad.detach().clone()
                        if name in grads:
                            m.weight.grad = grads[name]  # late update with the meta gradient
                        elif m.w_hat is not None and m.w_hat.grad is not None and m.weight.grad is None:
                            m.weight.grad = m.w_hat.grad.detach().clone()
                        m.w_hat = None
                        m.w_meta = None
                    meta_opt.step()  # type: ignore[union-attr]
                opt.step()
                loss_sum += loss.item() * len(y)
                correct += (out.argmax(1) == y).sum().item()
                seen += len(y)
                if on_step is not None:
                    on_step({"epoch": epoch, "step": i, "loss": loss.item()})
                bar.update(task, advance=1, info=f"ep {epoch + 1}/{epochs} loss {loss_sum / seen:.3f}")
            for m in layers:
                m.capture = False
            set_observe(model, False)
            val_acc = evaluate(model, val_loader)
            history.append({"epoch": epoch + 1, "loss": loss_sum / max(seen, 1), "train_accuracy": correct / max(seen, 1), "val_accuracy": val_acc})
            if checkpoint is not None:
                state = {"model": model.state_dict(), "optimizer": opt.state_dict(), "epoch": epoch + 1, "history": history, "config": config, "prev_grad": prev_grad}
                if meta is not None:
                    state["meta"] = meta.state_dict()
                    state["meta_optimizer"] = meta_opt.state_dict()  # type: ignore[union-attr]
                with atomic_path(checkpoint) as tmp:
                    torch.save(state, tmp)
    for m in layers:
        m.capture = False
    set_observe(model, False)
    model.eval()
    return {"history": history, "val_accuracy": val_acc, "seconds": time.perf_counter() - t0, "meta": meta}

