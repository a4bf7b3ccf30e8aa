"""MetaQuant quantization-aware training (Chen, Wang, Pan, NeurIPS 2019) with deployable int8 output.

Entry point for the pipeline: :func:`quantize_model` turns a trained fp32 model into a fake-quant
model (BN live during QAT and folded at export, k-bit per-channel weights with first, last and
depthwise layers at 8 bits by default, 8-bit activations) trained with MetaQuant, STE or LSQ, with
optional distillation from the fp32 model; :func:`metaedge.compress.metaquant.export.export_qdq` writes it as QDQ
ONNX in the ``ort`` or ``tensorrt`` profile it was prepared for. ``parse_quant_spec("w4a8")`` reads
the CLI's spec; :data:`PRESETS` holds the demo and full settings.
"""

from __future__ import annotations

import copy
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn as nn

from metaedge.compress.engine import TrainConfig
from metaedge.compress.metaquant.meta import META_VARIANTS, MetaNet, make_meta_net
from metaedge.qdq.policy import BitPolicy, parse_bit_policy
from metaedge.qdq.spec import parse_quant_spec
from metaedge.compress.metaquant.qat import METHODS, OPTIMIZERS, QATConfig
from metaedge.compress.metaquant.quantizers import WEIGHT_QUANTIZERS, ActFakeQuant, make_weight_quantizer
from metaedge.errors import MetaedgeError
from metaedge.qdq.profiles import PROFILES, QdqProfile, get_profile

__all__ = [
    "ActFakeQuant",
    "BitPolicy",
    "META_VARIANTS",
    "METHODS",
    "MetaNet",
    "OPTIMIZERS",
    "PRESETS",
    "PROFILES",
    "QATConfig",
    "QdqProfile",
    "QuantConfig",
    "QuantResult",
    "WEIGHT_QUANTIZERS",
    "default_weight_quantizer",
    "get_profile",
    "make_meta_net",
    "make_weight_quantizer",
    "parse_bit_policy",
    "parse_quant_spec",
    "quantize_model",
]


@dataclass(frozen=True)
class QuantConfig:
    weight_bits: int = 8
    act_bits: int = 8
    weight_quantizer: str = "symmetric"  # "symmetric" | "dorefa" | "bwn" (method "lsq" always uses "lsq")
    method: str = "metaquant"  # "metaquant" | "ste" | "lsq"
    # "fc" | "multifc" | "lstmfc". multifc: FC-Grad is a learned lr multiplier whose gain ran away to
    # 5-12x in every run measured (1-bit DoReFa at sgd 0.02: 61% against STE's 84%); multifc keeps the
    # optimiser's step size by design (bench/results/quant_meta_default_fmnist.md)
    meta_variant: str = "multifc"
    meta_hidden: int | None = None  # None: the variant's default (meta.DEFAULT_HIDDEN: fc 100, multifc 32, lstmfc 16)
    epochs: int = 3
    optimizer: str = "sgd"  # for the weights: "sgd" (momentum 0.9, cosine) | "adam"
    lr: float = 0.005  # BN stays live during QAT, so steps are absorbed as in normal fine-tuning
    meta_lr: float = 1e-3  # Adam, as in the paper
    weight_decay: float = 5e-5
    batch_size: int = 64
    calib_batches: int = 8
    profile: str = "ort"  # QDQ export profile: "ort" (uint8 activations, int32 biases) | "tensorrt"
    layer_bits: str = "default"  # per-layer bit policy (metaedge.compress.metaquant.policy): first, last, depthwise at 8
    kd_alpha: float = 0.5  # weight of distillation from the fp32 model (0: labels only)
    kd_temperature: float = 4.0
    learn_act_scale: bool | None = None  # None: learned (LSQ) for method "lsq", observed (EMA min/max) otherwise
    seed: int = 0

    def __post_init__(self) -> None:
        if self.act_bits != 8:
            raise MetaedgeError(f"activations at {self.act_bits} bits are not supported", "use a8 (int8/uint8 activations), e.g. w4a8")
        if self.method not in METHODS:
            raise MetaedgeError(f"unknown quantization method {self.method!r}", f"use one of {', '.join(METHODS)}")
        if self.meta_variant not in META_VARIANTS:
            raise MetaedgeError(f"unknown meta network variant {self.meta_variant!r}", f"use one of {', '.join(META_VARIANTS)}")
        if self.optimizer not in OPTIMIZERS:
            raise MetaedgeError(f"unknown QAT optimizer {self.optimizer!r}", f"use one of {', '.join(OPTIMIZERS)}")
        make_weight_quantizer(self.effective_weight_quantizer, self.weight_bits)  # validates the bits/quantizer pair
        get_profile(self.profile)
        parse_bit_policy(self.layer_bits)
        if self.epochs < 0 or self.lr <= 0 or self.meta_lr <= 0 or self.calib_batches < 1 or self.batch_size < 1:
            raise MetaedgeError(
                f"bad quantization settings (epochs={self.epochs}, lr={self.lr}, meta_lr={self.meta_lr}, calib_batches={self.calib_batches})",
                "use epochs >= 0, lr > 0, meta_lr > 0, calib_batches >= 1",
            )
        if not 0.0 <= self.kd_alpha <= 1.0 or self.kd_temperature <= 0:
            raise MetaedgeError(
                f"bad distillation settings (kd_alpha={self.kd_alpha}, kd_temperature={self.kd_temperature})", "use 0 <= kd_alpha <= 1 and kd_temperature > 0"
            )

    def qat_config(self) -> QATConfig:
        """The QAT loop's settings: the weights' optimizer at momentum 0.9, labels without smoothing, KD from the fp32 model."""
        train = TrainConfig(
            epochs=self.epochs,
            batch_size=self.batch_size,
            lr=self.lr,
            momentum=0.9,
            weight_decay=self.weight_decay,
            label_smoothing=0.0,
            distill_alpha=self.kd_alpha,
            distill_temperature=self.kd_temperature,
            seed=self.seed,
        )
        return QATConfig(self.method, train, self.meta_variant, self.meta_lr, self.meta_hidden, self.optimizer)

    @property
    def effective_weight_quantizer(self) -> str:
        return "lsq" if self.method == "lsq" else self.weight_quantizer

    @property
    def act_symmetric(self) -> bool:
        return get_profile(self.profile).act_symmetric

    @property
    def learns_act_scale(self) -> bool:
        return self.method == "lsq" if self.learn_act_scale is None else bool(self.learn_act_scale)


def default_weight_quantizer(weight_bits: int) -> str:
    """symmetric for 2..8 bits (exports exactly to int8 QDQ), bwn for 1 bit."""
    return "bwn" if weight_bits == 1 else "symmetric"


PRESETS: dict[str, QuantConfig] = {
    # measured: ~80 s for mobilenetv2_100 on digits 16x16, one thread on a busy 2-core box
    "demo": QuantConfig(epochs=2, calib_batches=8),
    "full": QuantConfig(epochs=15, calib_batches=16),
}


@dataclass
class QuantResult:
    model: nn.Module  # the fake-quant GraphModule; pass it to metaedge.compress.metaquant.export.export_qdq
    val_accuracy: float
    test_accuracy: float
    seconds: float
    config: QuantConfig
    history: list[dict] | None = None
    calib_val_accuracy: float | None = None  # after calibration, before any training (PTQ in torch)
    layers: list[dict] | None = None  # per-layer bits, quantizer, why, packed bytes

    @property
    def packed_bytes(self) -> int:
        return sum(r["packed_bytes"] for r in self.layers or [])

    def to_dict(self) -> dict:
        return {
            "val_accuracy": self.val_accuracy,
            "test_accuracy": self.test_accuracy,
            "seconds": self.seconds,
            "calib_val_accuracy": self.calib_val_accuracy,
            "config": asdict(self.config),
            "history": self.history,
            "layers": self.layers,
            "packed_bytes": self.packed_bytes,
        }


def quantize_model(model: nn.Module, data, cfg: QuantConfig, workdir: Path, quiet: bool = False, on_epoch=None) -> QuantResult:
    """Insert fake quantizers (BN kept live), calibrate on ``cfg.calib_batches`` training batches and
    train ``cfg.epochs`` epochs with MetaQuant, STE or LSQ, distilling from ``model`` when
    ``cfg.kd_alpha > 0``. ``model`` is not modified. The QAT stage checkpoints to
    ``workdir/qat.ckpt`` after every epoch and resumes from it when rerun with the same config.
    ``on_epoch(epoch, qmodel) -> dict`` adds per-epoch metrics to the history (see train_qat)."""
    from metaedge.compress.metaquant.qat import calibrate, layer_table, prepare_qat, train_qat
    from metaedge.compress.train import evaluate
    from metaedge.data import make_loader

    t0 = time.perf_counter()
    torch.manual_seed(cfg.seed)
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    was = model.training
    qmodel = prepare_qat(
        model, cfg.effective_weight_quantizer, cfg.weight_bits, policy=cfg.layer_bits, profile=cfg.profile, learn_act_scale=cfg.learns_act_scale
    )
    teacher = copy.deepcopy(model).eval() if cfg.kd_alpha > 0 and cfg.epochs > 0 else None
    model.train(was)
    train_loader = make_loader(data.train, cfg.batch_size, shuffle=True, seed=cfg.seed, drop_last=len(data.train) > cfg.batch_size)
    val_loader = make_loader(data.val, 256, shuffle=False)
    test_loader = make_loader(data.test, 256, shuffle=False)
    calib_loader = make_loader(data.train, cfg.batch_size, shuffle=True, seed=cfg.seed + 1)
    calibrate(qmodel, (x for x, _ in calib_loader), cfg.calib_batches)
    calib_acc = evaluate(qmodel, val_loader)
    history = None
    if cfg.epochs > 0:
        history = train_qat(
            qmodel,
            train_loader,
            val_loader,
            cfg.qat_config(),
            teacher=teacher,
            checkpoint=workdir / "qat.ckpt",
            signature=asdict(cfg),
            quiet=quiet,
            on_epoch=on_epoch,
        ).history
    qmodel.eval()
    return QuantResult(
        qmodel, evaluate(qmodel, val_loader), evaluate(qmodel, test_loader), time.perf_counter() - t0, cfg, history, calib_acc, layer_table(qmodel)
    )
