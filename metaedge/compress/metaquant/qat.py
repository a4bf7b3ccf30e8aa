"""Quantization-aware training loop: STE, LSQ and MetaQuant on a model from :func:`prepare_qat`.

The model keeps BN live (batch statistics) while training; see :mod:`.layers` for how BN is
folded exactly at eval/export and :mod:`.prepare` for where the quantizers sit.

* ``ste``: weights quantized with the straight-through estimator (see :mod:`.quantizers` for
  each quantizer's backward) and updated with their own gradient.
* ``lsq``: the same, with learned per-channel weight steps (the layers were prepared with the
  ``lsq`` quantizer) and learned activation steps when ``learn_act_scale`` was set.
* ``metaquant`` (paper, section 3): for each layer with previous quantized-weight gradient g,
  ``mg = calib(W) * M_phi(g, W, Q)`` (the meta network reads g, W and where W sits on Q's grid, see
  :mod:`.meta`); the forward pass uses ``W_meta = W - step(mg)``, where ``step`` is
  the optimiser's update as a differentiable function of mg (SGD: ``lr * (mg + wd W)``; Adam: the
  bias-corrected moment ratio computed from the optimiser's own state, so ``W_meta`` *is* the next
  W), quantized; the task loss then trains phi (Adam) and ``mg.detach() + wd*W`` is applied to W
  by the optimiser afterwards (late weight update).

Optimiser for the weights: ``sgd`` (momentum, cosine schedule) or ``adam`` (the MetaQuant reference
code's choice); the learning rate is per method (the bench chooses it on validation). Optional
knowledge distillation from a teacher (the fp32 model): ``(1 - a) CE + a T^2 KL``.
"""
from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any, Callable

import torch
import torch.fx as fx
import torch.nn as nn

from metaedge.artifacts import atomic_path
from metaedge.compress.metaquant.layers import QConv2d, QLinear, QuantLayer
from metaedge.compress.metaquant.meta import DEFAULT_HIDDEN, MetaNet, make_meta_net
from metaedge.compress.metaquant.prepare import (
    act_quantizers,
    calibrate,
    fold_bn,
    layer_table,
    prepare_qat,
    quant_layers,
    set_export_mode,
    set_observe,
)
from metaedge.compress.train import evaluate, kd_loss, load_checkpoint, progress
from metaedge.errors import MetaedgeError

__all__ = [
    "METHODS",
    "OPTIMIZERS",
    "QConv2d",
    "QLinear",
    "QuantLayer",
    "act_quantizers",
    "calibrate",
    "fold_bn",
    "layer_table",
    "prepare_qat",
    "quant_layers",
    "set_export_mode",
    "set_observe",
    "train_qat",
]

METHODS = ("metaquant", "ste", "lsq")
OPTIMIZERS = ("sgd", "adam")


def _lr_at(step: int, total: int, lr: float) -> float:
    return 0.5 * lr * (1 + math.cos(math.pi * min(1.0, step / max(1, total))))


def _make_optimizer(name: str, weights: list[nn.Parameter], other: list[nn.Parameter], lr: float, momentum: float, weight_decay: float) -> torch.optim.Optimizer:
    groups = [{"params": weights, "weight_decay": weight_decay}, {"params": other, "weight_decay": 0.0}]
    if name == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=momentum)
    if name == "adam":
        return torch.optim.Adam(groups, lr=lr)
    raise MetaedgeError(f"unknown QAT optimizer {name!r}", f"use one of {', '.join(OPTIMIZERS)}")


def _update_of(opt: torch.optim.Optimizer, p: nn.Parameter, grad: torch.Tensor, lr: float) -> torch.Tensor:
    """The step ``opt`` will take on ``p`` for ``grad``, differentiable in ``grad`` (MetaQuant's W_meta)."""
    if isinstance(opt, torch.optim.Adam):
        group = opt.param_groups[0]
        b1, b2 = group["betas"]
        st = opt.state.get(p, {})
        t = float(st["step"]) + 1 if "step" in st else 1.0
        m = st.get("exp_avg")
        v = st.get("exp_avg_sq")
        m1 = (1 - b1) * grad + (b1 * m if m is not None else 0.0)
        v1 = (1 - b2) * grad.detach() ** 2 + (b2 * v if v is not None else 0.0)  # the second moment only scales
        return lr * (m1 / (1 - b1**t)) / ((v1 / (1 - b2**t)).sqrt() + group["eps"])
    return lr * grad


def train_qat(
    model: fx.GraphModule,
    train_loader,
    val_loader,
    *,
    method: str,
    meta_variant: str = "fc",
    epochs: int,
    lr: float,
    meta_lr: float = 1e-3,
    optimizer: str = "sgd",
    weight_decay: float = 5e-5,
    momentum: float = 0.9,
    meta_hidden: int | None = None,
    label_smoothing: float = 0.0,
    teacher: nn.Module | None = None,
    kd_alpha: float = 0.0,
    kd_temperature: float = 4.0,
    seed: int = 0,
    checkpoint: Path | None = None,
    config: dict[str, Any] | None = None,
    quiet: bool = False,
    observe_epochs: int = 1,
    on_step: Callable[[dict], None] | None = None,
    on_epoch: Callable[[int, nn.Module], dict] | None = None,
    meta: MetaNet | None = None,
) -> dict[str, Any]:
    """Train ``model`` (from :func:`prepare_qat`, already calibrated) in place.

    ``meta``: an existing meta network to train (default: a fresh one of ``meta_variant``).
    ``on_epoch(epoch, model)`` runs after each epoch's validation, in eval mode; the dict it returns
    is merged into that epoch's history row (the bench records test accuracy per epoch this way).
    Returns {"history", "val_accuracy", "seconds", "meta": MetaNet | None}. A checkpoint is written
    atomically after every epoch (model, meta net, both optimisers, the per-layer meta inputs);
    with a matching ``config`` a rerun resumes from it.
    """
    if method not in METHODS:
        raise MetaedgeError(f"unknown QAT method {method!r}", f"use one of {', '.join(METHODS)}")
    if optimizer not in OPTIMIZERS:
        raise MetaedgeError(f"unknown QAT optimizer {optimizer!r}", f"use one of {', '.join(OPTIMIZERS)}")
    torch.manual_seed(seed)
    layers = [m for _, m in quant_layers(model)]
    names = [n for n, _ in quant_layers(model)]
    layer_weights = {id(m.weight) for m in layers}
    other = [p for p in model.parameters() if p.requires_grad and id(p) not in layer_weights]
    opt = _make_optimizer(optimizer, [m.weight for m in layers], other, lr, momentum, 0.0 if method == "metaquant" else weight_decay)
    meta_opt = None
    if method != "metaquant":
        meta = None
    else:
        if meta_variant == "lstmfc":
            n = sum(m.weight.numel() for m in layers)
            if n > 600_000:
                h = meta.hidden if meta is not None else int(meta_hidden or DEFAULT_HIDDEN["lstmfc"])
                raise MetaedgeError(f"LSTMFC keeps a {h}-wide LSTM state for each of the model's {n} weights (~{n * h * 8 * 4 / 2**30:.1f} GiB with its gates)", "use meta variant 'multifc' (chunked) for this model")
        meta = meta if meta is not None else make_meta_net(meta_variant, meta_hidden)
        meta_opt = torch.optim.Adam(meta.parameters(), lr=meta_lr)
    if teacher is not None:
        teacher.eval()
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
                        mg = m.wq.calib(w) * meta(g_prev, w, name, m.wq)
                        grad = mg + weight_decay * w
                        m.w_meta = w - _update_of(opt, m.weight, grad, step_lr)
                        grads[name] = grad.detach()
                out = model(x)
                loss = criterion(out, y)
                if teacher is not None and kd_alpha > 0:
                    with torch.no_grad():
                        t_out = teacher(x)
                    loss = (1 - kd_alpha) * loss + kd_alpha * kd_loss(out, t_out, kd_temperature)
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
            row = {"epoch": epoch + 1, "loss": loss_sum / max(seen, 1), "train_accuracy": correct / max(seen, 1), "val_accuracy": val_acc}
            if on_epoch is not None:
                model.eval()
                with torch.no_grad():
                    row.update(on_epoch(epoch, model) or {})
            history.append(row)
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
