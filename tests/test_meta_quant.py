"""QAT training: the meta network learns through the quantized forward pass, STE and LSQ, SGD and
Adam (MetaQuant's W_meta is the optimiser's next weight), BN live, distillation, checkpoint + resume."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn as nn
from torch.utils.data import TensorDataset

from metaedge.compress.metaquant import QuantConfig, quantize_model
from metaedge.compress.metaquant.meta import MetaNet
from metaedge.compress.metaquant.qat import QATConfig, _update_of, calibrate, prepare_qat, quant_layers, train_qat
from metaedge.compress.metaquant.quantizers import make_weight_quantizer
from metaedge.compress.train import TrainConfig
from metaedge.data import DataSplits, make_loader
from metaedge.errors import MetaedgeError


class Tiny(nn.Module):
    def __init__(self, classes: int = 4) -> None:
        super().__init__()
        self.c1 = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU())
        self.c2 = nn.Conv2d(8, 8, 3, padding=1, bias=False)
        self.b2 = nn.BatchNorm2d(8)
        self.fc = nn.Linear(8 * 8 * 8, classes)

    def forward(self, x):
        x = self.c1(x)
        x = torch.relu(x + self.b2(self.c2(x)))
        return self.fc(torch.flatten(x, 1))


def toy_data(n=192, classes=4, seed=0):
    protos = torch.randn(classes, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    g = torch.Generator().manual_seed(seed + 1)
    y = torch.arange(n) % classes
    x = protos[y] + 0.8 * torch.randn(n, 1, 8, 8, generator=g)
    return x, y


def splits():
    x, y = toy_data()
    xt, yt = toy_data(64, seed=1)
    return DataSplits("toy", TensorDataset(x, y), TensorDataset(xt, yt), TensorDataset(xt, yt), 4, 1, 8, [0.0], [1.0])


def prepared(bits=2, kind="symmetric"):
    torch.manual_seed(0)
    m = prepare_qat(Tiny().eval(), kind, bits, policy="uniform")
    x, _ = toy_data()
    calibrate(m, [x[:64]], 1)
    return m


def qat(method: str, epochs: int, lr: float, optimizer: str = "sgd", meta_variant: str = "fc", meta_lr: float = 1e-3, kd_alpha: float = 0.0) -> QATConfig:
    """QAT settings as these tests train them: labels without smoothing, weight decay 5e-5."""
    train = TrainConfig(epochs=epochs, lr=lr, weight_decay=5e-5, label_smoothing=0.0, distill_alpha=kd_alpha)
    return QATConfig(method, train, meta_variant, meta_lr, optimizer=optimizer)


def loaders():
    d = splits()
    return make_loader(d.train, 32, True, seed=0, drop_last=True), make_loader(d.val, 64, False)


def test_meta_network_learns_and_loss_falls():
    m = prepared()
    tl, vl = loaders()
    losses = []
    meta = MetaNet("fc")
    before = [p.detach().clone() for p in meta.parameters()]
    out = train_qat(m, tl, vl, qat("metaquant", 4, 0.05), quiet=True, on_step=lambda s: losses.append(s["loss"]), meta=meta)
    # Adam moved phi: the task loss reached the meta network through W_meta -> Q -> forward
    assert any((p - q).abs().max() > 1e-6 for p, q in zip(meta.parameters(), before))
    first, last = sum(losses[:6]) / 6, sum(losses[-6:]) / 6
    assert last < 0.7 * first, (first, last)
    assert out.val_accuracy > 0.5


@pytest.mark.parametrize("variant", ["fc", "multifc", "lstmfc"])
def test_meta_gradient_reaches_phi_through_the_look_ahead(variant):
    """phi's only path to the loss is W_meta = W - update(calib * M(g)) -> Q -> forward: every
    step after the first must leave a finite, non-zero gradient on phi (None if M were detached)."""
    m = prepared(bits=1, kind="bwn")
    tl, vl = loaders()
    meta = MetaNet(variant)
    before = [p.detach().clone() for p in meta.parameters()]
    seen = []

    def grads(step):  # runs after the optimisers stepped; phi's .grad is from this step's backward
        seen.append([None if p.grad is None else p.grad.detach().clone() for p in meta.parameters()])

    train_qat(m, tl, vl, qat("metaquant", 1, 0.05, meta_variant=variant, meta_lr=1e-2), quiet=True, meta=meta, on_step=grads)
    assert len(seen) == len(tl) >= 3
    assert all(g is None for g in seen[0])  # first step: no previous gradient, plain STE
    for step in seen[1:]:
        assert any(g is not None and g.abs().sum() > 0 for g in step), "no gradient reached phi"
        assert all(g is None or torch.isfinite(g).all() for g in step)
    assert any((p - q).abs().max() > 0 for p, q in zip(meta.parameters(), before))
    if variant == "lstmfc":
        assert meta._state and all(not h.requires_grad for h, _ in meta._state.values())  # detached per-layer state


def _grad_weight(shape=(8, 4, 3, 3), seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=g) * 1e-3, torch.randn(shape, generator=g) * 0.1


def _perturbed(variant):
    torch.manual_seed(1)
    meta = MetaNet(variant)
    with torch.no_grad():
        for p in meta.parameters():
            p.add_(0.3 * torch.randn_like(p))
    return meta


@pytest.mark.parametrize("variant", ["multifc", "lstmfc"])
@pytest.mark.parametrize("kind,bits", [("bwn", 1), ("symmetric", 2), ("dorefa", 1)])
def test_nonlinear_meta_starts_at_ste_and_keeps_the_gradient_size(variant, kind, bits):
    wq = make_weight_quantizer(kind, bits)
    g, w = _grad_weight()
    meta = MetaNet(variant)
    out = meta(g, w, "l", wq)
    assert out.shape == g.shape
    assert torch.allclose(out, g, rtol=1e-5, atol=1e-12)  # zero last layer: exactly the STE gradient
    moved = _perturbed(variant)(g, w, "l", wq)
    assert not torch.allclose(moved / moved.norm(), g / g.norm(), atol=1e-3)  # it can change the direction...
    assert torch.allclose(moved.square().mean().sqrt(), g.square().mean().sqrt(), rtol=1e-5)  # ...not the per-layer size


@pytest.mark.parametrize("variant", ["multifc", "lstmfc"])
def test_meta_output_is_invariant_to_the_gradient_scale(variant):
    wq = make_weight_quantizer("symmetric", 2)
    g, w = _grad_weight(seed=3)
    meta = _perturbed(variant)
    a = meta(g, w, "a", wq)
    b = meta(10 * g, w, "b", wq)  # a fresh LSTM state per key: the same input history
    assert torch.allclose(b, 10 * a, rtol=1e-4, atol=1e-5 * float(b.detach().abs().max()))


def test_fc_grad_collapses_to_a_learned_gain():
    meta = _perturbed("fc")
    g, w = _grad_weight()
    assert torch.allclose(meta(g, w), meta.net.gain() * g, rtol=1e-5)


def test_multifc_chunks_large_layers_with_the_same_values_and_gradients(monkeypatch):
    import metaedge.compress.metaquant.meta as meta_mod

    wq = make_weight_quantizer("bwn", 1)
    g, w = _grad_weight((16, 8, 3, 3))
    meta = _perturbed("multifc")
    ref = meta(g, w, "", wq)
    ref_grads = torch.autograd.grad(ref.sin().sum(), list(meta.parameters()))
    monkeypatch.setattr(meta_mod, "CHUNK", 100)
    out = meta(g, w, "", wq)
    out_grads = torch.autograd.grad(out.sin().sum(), list(meta.parameters()))
    assert torch.allclose(ref, out, atol=1e-12, rtol=1e-6)
    for a, b in zip(ref_grads, out_grads):
        assert torch.allclose(a, b, atol=1e-9, rtol=1e-4)


@pytest.mark.parametrize("kind,bits", [("bwn", 1), ("symmetric", 2), ("symmetric", 4), ("lsq", 2), ("dorefa", 2)])
def test_grid_position_is_the_distance_to_the_level_flip(kind, bits):
    """delta is the signed distance (grid steps) from the nearest threshold: W moved by a bit more
    than delta * step against delta's sign changes its quantized level, a bit less does not."""
    _, w = _grad_weight((4, 16))
    wq = make_weight_quantizer(kind, bits, w)
    wn, delta = wq.grid_position(w)
    q, scale = wq(w)
    assert wn.shape == delta.shape == w.shape and torch.allclose(wn, w / scale)
    if kind == "dorefa":  # its thresholds sit in the tanh domain, where delta is measured
        assert delta.abs().max() <= 0.5 * (2**bits - 1)
        return
    inside = delta.abs() < 0.45 if bits > 1 else torch.ones_like(delta, dtype=torch.bool)  # not the clipped tails
    assert inside.float().mean() > 0.5
    lo = getattr(wq, "qmin", -wq.qmax)

    def level(x):  # on the grid of w (symmetric and BWN rescale with the weights; the flip is about the grid)
        u = x / scale
        return torch.where(u >= 0, 1.0, -1.0) if bits == 1 else torch.clamp(torch.round(u), lo, wq.qmax)

    for frac, flips in ((1.05, True), (0.95, False)):
        changed = level(w - frac * delta * scale) != q
        assert bool((changed[inside] == flips).all()), (frac, flips)


def test_fc_grad_is_bias_free_and_starts_at_ste():
    meta = MetaNet("fc")
    assert meta.hidden == 100 and all(p.dim() == 2 for p in meta.parameters())  # the paper's width, no biases
    g = torch.randn(100)
    assert torch.allclose(meta(g, torch.randn(100)), g, atol=1e-5)
    assert torch.equal(meta(torch.zeros(5), torch.randn(5)), torch.zeros(5))


def test_collapsed_fc_equals_explicit_two_layer_fc():
    meta = _perturbed("fc")
    g = torch.randn(50)
    explicit = meta.net.fc2(meta.net.fc1(g.unsqueeze(1))).squeeze(1)
    collapsed = meta.net(g)
    assert torch.allclose(explicit, collapsed, atol=1e-6)
    ge = torch.autograd.grad(explicit.square().sum(), list(meta.parameters()))
    gc = torch.autograd.grad(collapsed.square().sum(), list(meta.parameters()))
    for a, b in zip(ge, gc):
        assert torch.allclose(a, b, atol=1e-5)


def test_ste_switch_has_no_meta_network_and_trains():
    m = prepared()
    before = {n: layer.weight.detach().clone() for n, layer in quant_layers(m)}
    tl, vl = loaders()
    meta = MetaNet("fc")
    before_meta = [p.detach().clone() for p in meta.parameters()]
    train_qat(m, tl, vl, qat("ste", 2, 0.05), quiet=True, meta=meta)
    assert all(torch.equal(p, q) for p, q in zip(meta.parameters(), before_meta))  # STE leaves a meta network alone
    assert any(not torch.equal(before[n], layer.weight) for n, layer in quant_layers(m))
    with pytest.raises(MetaedgeError, match="unknown QAT method"):
        qat("sgd", 1, 0.05)


def test_checkpoint_and_resume_match_uninterrupted_run(tmp_path):
    tl, vl = loaders()
    cfg = qat("metaquant", 2, 0.05)
    ref = prepared()
    train_qat(ref, tl, vl, cfg, checkpoint=tmp_path / "a.ckpt", signature={"k": 1}, quiet=True)
    # "killed" at the start of epoch 2, then resumed from the checkpoint with a fresh model

    class Killed(Exception):
        pass

    def kill(step):
        if step["epoch"] == 1:
            raise Killed

    part = prepared()
    with pytest.raises(Killed):
        train_qat(part, tl, vl, cfg, checkpoint=tmp_path / "b.ckpt", signature={"k": 1}, on_step=kill, quiet=True)
    state = torch.load(tmp_path / "b.ckpt", weights_only=True)
    assert state["epoch"] == 1 and "meta" in state["extra"] and state["extra"]["prev_grad"]
    resumed = prepared()
    ckpt = tmp_path / "b.ckpt"
    out = train_qat(resumed, tl, vl, cfg, checkpoint=ckpt, signature={"k": 1}, quiet=True)
    assert [h["epoch"] for h in out.history] == [1, 2] and out.epochs_run == 1
    for (n, a), (_, b) in zip(ref.state_dict().items(), resumed.state_dict().items()):
        assert torch.allclose(a.float(), b.float(), atol=1e-5), n
    with pytest.raises(MetaedgeError, match="other QAT settings"):
        train_qat(prepared(), tl, vl, cfg, checkpoint=ckpt, signature={"k": 2}, quiet=True)
    with pytest.raises(MetaedgeError, match="other QAT settings"):
        train_qat(prepared(), tl, vl, qat("metaquant", 2, 0.05, meta_lr=1e-2), checkpoint=ckpt, signature={"k": 1}, quiet=True)
    assert not list(tmp_path.glob(".*.tmp"))  # atomic writes leave no temporaries


@pytest.mark.parametrize("name", ["sgd", "adam"])
def test_meta_weight_is_the_optimisers_next_weight(name):
    """W_meta = W - update(mg): with Adam the update is the bias-corrected moment ratio from the
    optimiser's own state, so W_meta equals W after opt.step() -- and it is differentiable in mg."""
    torch.manual_seed(0)
    p = nn.Parameter(torch.randn(5, 3))
    opt = torch.optim.Adam([p], lr=0.01) if name == "adam" else torch.optim.SGD([p], lr=0.01)
    for _ in range(3):  # populate the moments
        p.grad = torch.randn(5, 3)
        opt.step()
    mg = torch.randn(5, 3, requires_grad=True)
    delta = _update_of(opt, p, mg, 0.01)
    delta.sum().backward()
    assert mg.grad is not None and mg.grad.abs().sum() > 0
    before = p.detach().clone()
    p.grad = mg.detach().clone()
    opt.step()
    assert torch.allclose(p.detach(), before - delta.detach(), atol=1e-6)


def test_ste_with_adam_and_live_bn_trains():
    m = prepared()
    bn = next(layer.bn for _, layer in quant_layers(m) if layer.bn is not None)
    stats = bn.running_mean.clone()
    tl, vl = loaders()
    out = train_qat(m, tl, vl, qat("ste", 2, 1e-3, optimizer="adam"), quiet=True)
    assert out.val_accuracy > 0.5
    assert not torch.equal(stats, bn.running_mean)  # BN ran on batch statistics and kept tracking
    with pytest.raises(MetaedgeError, match="unknown QAT optimizer"):
        qat("ste", 1, 1e-3, optimizer="rmsprop")


def test_lsq_learns_its_steps():
    m = prepare_qat(Tiny().eval(), "lsq", 2, policy="uniform", learn_act_scale=True)
    x, _ = toy_data()
    calibrate(m, [x[:64]], 1)
    steps = {n: layer.wq.step.detach().clone() for n, layer in quant_layers(m)}
    act = m.act_quant_1.scale.detach().clone()
    assert all(f"{n}.wq.step" in m.state_dict() for n in steps)  # saved with the model
    tl, vl = loaders()
    out = train_qat(m, tl, vl, qat("lsq", 3, 0.02), quiet=True)
    assert out.val_accuracy > 0.5
    assert all(not torch.equal(steps[n], layer.wq.step) for n, layer in quant_layers(m))
    assert not torch.equal(act, m.act_quant_1.scale.detach())  # learned after the observing epoch


def test_distillation_from_a_teacher_enters_the_loss():
    tl, vl = loaders()
    teacher = Tiny().eval()
    losses = {}
    for alpha in (0.0, 1.0):
        seen = []
        train_qat(prepared(), tl, vl, qat("ste", 1, 0.05, kd_alpha=alpha), teacher=teacher, quiet=True, on_step=lambda s, seen=seen: seen.append(s["loss"]))
        losses[alpha] = seen[0]
    assert losses[0.0] != pytest.approx(losses[1.0])


def test_on_epoch_adds_metrics_to_the_history():
    tl, vl = loaders()
    out = train_qat(prepared(), tl, vl, qat("ste", 2, 0.05), quiet=True, on_epoch=lambda e, m: {"test_accuracy": 0.5 + e, "training": m.training})
    assert [h["test_accuracy"] for h in out.history] == [0.5, 1.5] and not any(h["training"] for h in out.history)


@pytest.mark.parametrize("variant", ["fc", "multifc"])
def test_history_records_how_far_the_meta_gradient_departs_from_ste(variant):
    tl, vl = loaders()
    meta = MetaNet(variant)
    out = train_qat(prepared(), tl, vl, qat("metaquant", 2, 0.05, meta_variant=variant), quiet=True, meta=meta)
    cos = [h["meta_cos"] for h in out.history]
    assert all(-1.0 <= c <= 1.0 + 1e-6 for c in cos), cos
    if variant == "fc":  # a * g with a > 0 keeps g's direction; the gain is the one thing it learns
        assert cos == pytest.approx([1.0, 1.0], abs=1e-5)
        assert out.history[-1]["meta_gain"] == pytest.approx(float(meta.net.gain()))
    else:  # the zero-initialised last layer moves off STE once trained
        assert "meta_gain" not in out.history[-1] and cos[-1] < 1.0
    assert "meta_cos" not in train_qat(prepared(), tl, vl, qat("ste", 1, 0.05), quiet=True).history[0]


def test_quantize_model_entry_point(tmp_path):
    d = splits()
    torch.manual_seed(0)
    model = Tiny()
    snapshot = copy.deepcopy(model.state_dict())
    cfg = QuantConfig(weight_bits=4, epochs=1, lr=0.05, batch_size=32, calib_batches=2)
    res = quantize_model(model, d, cfg, tmp_path, quiet=True)
    from metaedge.compress.train import evaluate
    from metaedge.data import make_loader

    # the reported accuracies are the returned model's, on the whole val / test splits
    assert res.val_accuracy == pytest.approx(evaluate(res.model, make_loader(d.val, 256, False)))
    assert res.test_accuracy == pytest.approx(evaluate(res.model, make_loader(d.test, 256, False)))
    assert res.seconds > 0 and res.config is cfg
    assert (tmp_path / "qat.ckpt").exists()
    for k, v in model.state_dict().items():  # the caller's model is untouched
        assert torch.equal(v, snapshot[k])
    assert len(quant_layers(res.model)) == 3
    # default policy: the first conv and the last linear keep 8 bits (a 7-bit grid in the default
    # ort profile); BN-folded layers have a bias
    assert [(r["name"], r["bits"], r["why"], r["bn_folded"]) for r in res.layers] == [
        ("c1.0", 7, "first; ort profile: 8 -> 7 bits", True),
        ("c2", 4, "body", True),
        ("fc", 7, "last; ort profile: 8 -> 7 bits", False),
    ]
    assert res.packed_bytes == sum(r["packed_bytes"] for r in res.layers) == res.to_dict()["packed_bytes"]


def test_calibration_reestimates_bn_under_the_quantized_weights():
    """1-bit DoReFa weights are +-max|W_c| (3-4x the float RMS): eval-mode BN with the float model's
    statistics compounds that layer by layer until the observers calibrate to a useless range.
    calibrate() re-estimates the live BNs first, so the ranges stay those of BWN (mean|W_c|)."""
    from metaedge.compress.bn import recalibrate_bn
    from metaedge.compress.metaquant.prepare import act_quantizers

    torch.manual_seed(0)
    layers: list[nn.Module] = [nn.Conv2d(1, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU()]
    for _ in range(7):
        layers += [nn.Conv2d(16, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU()]
    model = nn.Sequential(*layers, nn.Flatten(), nn.Linear(16 * 8 * 8, 10))
    xs = [torch.randn(32, 1, 8, 8) for _ in range(4)]
    recalibrate_bn(model, xs).eval()  # the float model's own, correct statistics

    def last_scale(kind: str, recal: bool) -> float:
        q = prepare_qat(model, kind, 1)
        calibrate(q, iter(xs), len(xs), recalibrate_bn=recal)
        return act_quantizers(q)[-2].qparams()[0]  # the input range of the last layer

    bwn, dorefa = last_scale("bwn", True), last_scale("dorefa", True)
    assert dorefa < 3 * bwn, (dorefa, bwn)
    assert last_scale("dorefa", False) > 30 * bwn  # the stale statistics this guards against
    assert all(isinstance(m, nn.BatchNorm2d) and m.momentum == 0.1 for m in model.modules() if isinstance(m, nn.BatchNorm2d))
