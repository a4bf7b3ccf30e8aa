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

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

import torch
import torch.fx as fx
import torch.nn as nn

from metaedge.compress.engine import Step, StepLoss, TrainConfig, TrainResult, train_loop
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
from metaedge.compress.train import SupervisedHooks
from metaedge.errors import MetaedgeError

__all__ = [
    "METHODS",
    "OPTIMIZERS",
    "QATConfig",
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


@dataclass(frozen=True)
class QATConfig:
    """QAT settings: the shared ``train`` (epochs, lr, momentum, weight decay, label smoothing, KD
    weight and temperature, seed) and MetaQuant's own."""

    method: str  # "metaquant" | "ste" | "lsq"
    train: TrainConfig
    meta_variant: str = "fc"
    meta_lr: float = 1e-3  # the meta network's Adam (constant rate)
    meta_hidden: int | None = None  # None: the variant's default
    optimizer: str = "sgd"  # for the weights: "sgd" | "adam"
    observe_epochs: int = 1  # epochs with activation observers on

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise MetaedgeError(f"unknown QAT method {self.method!r}", f"use one of {', '.join(METHODS)}")
        if self.optimizer not in OPTIMIZERS:
            raise MetaedgeError(f"unknown QAT optimizer {self.optimizer!r}", f"use one of {', '.join(OPTIMIZERS)}")


def _make_optimizer(
    name: str, weights: list[torch.Tensor], other: list[nn.Parameter], lr: float, momentum: float, weight_decay: float
) -> torch.optim.Optimizer:
    groups = [{"params": weights, "weight_decay": weight_decay}, {"params": other, "weight_decay": 0.0}]
    if name == "adam":
        return torch.optim.Adam(groups, lr=lr)
    return torch.optim.SGD(groups, lr=lr, momentum=momentum)  # QATConfig admits only OPTIMIZERS


def _update_of(opt: torch.optim.Optimizer, p: torch.Tensor, grad: torch.Tensor, lr: float) -> torch.Tensor:
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


class _QATHooks(SupervisedHooks):
    """Observers on for the first epochs; MetaQuant's look-ahead forward (``W_meta``) and late update."""

    def __init__(
        self,
        model: fx.GraphModule,
        cfg: QATConfig,
        val_loader,
        teacher: nn.Module | None,
        opt: torch.optim.Optimizer,
        meta: MetaNet | None,
        on_step: Callable[[dict], None] | None,
        on_epoch: Callable[[int, nn.Module], dict] | None,
    ) -> None:
        super().__init__(model, cfg.train, val_loader, teacher)
        self.qat, self.opt, self.meta, self.on_step, self.on_epoch = cfg, opt, meta, on_step, on_epoch
        self.layers = dict(quant_layers(model))
        self.meta_opt = torch.optim.Adam(meta.parameters(), lr=cfg.meta_lr) if meta is not None else None
        self.prev_grad: dict[str, torch.Tensor] = {}
        self.grads: dict[str, torch.Tensor] = {}
        # how far the meta gradient departs from STE's, per epoch: the mean cosine between M(g) and g
        # over layers and steps (1.0: STE's direction) -- FC-Grad's gain is logged beside it
        self._cos_sum, self._cos_n = 0.0, 0

    def before_epoch(self, epoch: int) -> None:
        set_observe(self.model, epoch < self.qat.observe_epochs)

    def before_step(self, step: Step) -> None:
        self.grads = {}
        if self.meta is None:
            return
        self.meta_opt.zero_grad(set_to_none=True)  # type: ignore[union-attr]
        lr = self.opt.param_groups[0]["lr"]
        for name, m in self.layers.items():
            m.capture = True
            g_prev = self.prev_grad.get(name)
            if g_prev is None:
                m.w_meta = None  # first step: no meta input yet, plain STE forward
                continue
            w = m.weight.detach()
            out = self.meta(g_prev, w, name, m.wq)
            with torch.no_grad():
                self._cos_sum += float(torch.nn.functional.cosine_similarity(out.reshape(1, -1), g_prev.reshape(1, -1)))
                self._cos_n += 1
            mg = m.wq.calib(w) * out
            grad = mg + self.cfg.weight_decay * w
            m.w_meta = w - _update_of(self.opt, m.weight, grad, lr)
            self.grads[name] = grad.detach()

    def loss(self, x: torch.Tensor, y: torch.Tensor, step: Step) -> StepLoss:
        out = super().loss(x, y, step)
        if not torch.isfinite(out.objective):  # type: ignore[arg-type]
            raise MetaedgeError(
                f"QAT diverged at epoch {step.epoch + 1} step {step.index + 1} (loss {out.objective.item()})",  # type: ignore[union-attr]
                "lower the QAT lr or meta_lr, or use method 'ste'",
            )
        return out

    def after_backward(self, step: Step) -> None:
        if self.meta is None:
            return
        for name, m in self.layers.items():
            if m.w_hat is not None and m.w_hat.grad is not None:
                self.prev_grad[name] = m.w_hat.grad.detach().clone()
            if name in self.grads:
                m.weight.grad = self.grads[name]  # late update with the meta gradient
            elif m.w_hat is not None and m.w_hat.grad is not None and m.weight.grad is None:
                m.weight.grad = m.w_hat.grad.detach().clone()
            m.w_hat = None
            m.w_meta = None
        self.meta_opt.step()  # type: ignore[union-attr]

    def after_step(self, step: Step, loss: StepLoss) -> None:
        if self.on_step is not None:
            self.on_step({"epoch": step.epoch, "step": step.index, "loss": loss.logs["loss"].item()})

    def end_of_epoch(self, epoch: int) -> dict[str, Any]:
        self.stop_capture()
        row = super().end_of_epoch(epoch)
        if self.meta is not None:
            row.update(self.meta_stats())
        if self.on_epoch is not None:
            self.model.eval()
            with torch.no_grad():
                row.update(self.on_epoch(epoch, self.model) or {})
        return row

    def meta_stats(self) -> dict[str, float]:
        """This epoch's ``meta_cos`` (mean cosine of M(g) with g) and, for FC-Grad, ``meta_gain``; resets the mean."""
        stats: dict[str, float] = {}
        if self._cos_n:
            stats["meta_cos"] = self._cos_sum / self._cos_n
        if self.meta is not None and self.meta.variant == "fc":
            stats["meta_gain"] = float(self.meta.net.gain().detach())  # type: ignore[operator]
        self._cos_sum, self._cos_n = 0.0, 0
        return stats

    def stop_capture(self) -> None:
        for m in self.layers.values():
            m.capture = False
        set_observe(self.model, False)

    def state_dict(self) -> dict[str, Any]:
        state: dict[str, Any] = {"prev_grad": self.prev_grad}
        if self.meta is not None:
            state.update(meta=self.meta.state_dict(), meta_optimizer=self.meta_opt.state_dict())  # type: ignore[union-attr]
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.prev_grad = dict(state["prev_grad"])
        if self.meta is not None:
            self.meta.load_state_dict(state["meta"])
            self.meta_opt.load_state_dict(state["meta_optimizer"])  # type: ignore[union-attr]


def train_qat(
    model: fx.GraphModule,
    train_loader,
    val_loader,
    cfg: QATConfig,
    *,
    teacher: nn.Module | None = None,
    meta: MetaNet | None = None,
    checkpoint: Path | None = None,
    signature: Any = None,
    quiet: bool = False,
    on_step: Callable[[dict], None] | None = None,
    on_epoch: Callable[[int, nn.Module], dict] | None = None,
) -> TrainResult:
    """Train ``model`` (from :func:`prepare_qat`, already calibrated) in place, in eval mode after.

    ``meta``: an existing meta network to train (default: a fresh one of ``cfg.meta_variant``; only
    for method ``metaquant``). ``on_step({"epoch", "step", "loss"})`` runs after every step;
    ``on_epoch(epoch, model)`` after each epoch's validation, in eval mode: the dict it returns is
    merged into that epoch's history row (the bench records test accuracy per epoch this way). A
    checkpoint is written atomically after every epoch (model, meta net, both optimisers, the
    per-layer meta inputs); a rerun with the same ``cfg`` and ``signature`` resumes from it.
    """
    train = cfg.train
    torch.manual_seed(train.seed)
    layers = [m for _, m in quant_layers(model)]
    layer_weights = {id(m.weight) for m in layers}
    other = [p for p in model.parameters() if p.requires_grad and id(p) not in layer_weights]
    opt = _make_optimizer(cfg.optimizer, [m.weight for m in layers], other, train.lr, train.momentum, 0.0 if cfg.method == "metaquant" else train.weight_decay)
    if cfg.method != "metaquant":
        meta = None
    else:
        if cfg.meta_variant == "lstmfc":
            n = sum(m.weight.numel() for m in layers)
            if n > 600_000:
                h = meta.hidden if meta is not None else int(cfg.meta_hidden or DEFAULT_HIDDEN["lstmfc"])
                raise MetaedgeError(
                    f"LSTMFC keeps a {h}-wide LSTM state for each of the model's {n} weights (~{n * h * 8 * 4 / 2**30:.1f} GiB with its gates)",
                    "use meta variant 'multifc' (chunked) for this model",
                )
        meta = meta if meta is not None else make_meta_net(cfg.meta_variant, cfg.meta_hidden)
    hooks = _QATHooks(model, cfg, val_loader, teacher, opt, meta, on_step, on_epoch)
    qat_signature = {k: v for k, v in asdict(cfg).items() if k != "train"}
    result = train_loop(
        model,
        train_loader,
        [opt],
        train,
        hooks,
        signature={"qat": qat_signature, "caller": signature},
        checkpoint=checkpoint,
        what="QAT",
        desc=f"qat-{cfg.method}",
        quiet=quiet,
    )
    hooks.stop_capture()
    model.eval()
    return result
