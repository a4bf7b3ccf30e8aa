"""Weight and activation quantizers: levels and ranges per k, exact scale*int, ONNX rounding, each
quantizer's backward pinned to the standard straight-through estimator, LSQ, the per-layer bit policy."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from metaedge.compress.metaquant import QuantConfig, parse_quant_spec
from metaedge.qdq.policy import BitPolicy, LayerRole, parse_bit_policy
from metaedge.compress.metaquant.quantizers import ActFakeQuant, LSQQuantizer, make_weight_quantizer
from metaedge.errors import MetaedgeError


def _w(shape=(6, 4, 3, 3), seed=0):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(shape, generator=g)
    return w * torch.logspace(-2, 1, shape[0]).reshape(-1, *([1] * (len(shape) - 1)))  # channels of very different scale


@pytest.mark.parametrize("bits", [2, 4, 8])
def test_symmetric_levels_and_range(bits):
    wq = make_weight_quantizer("symmetric", bits)
    w = _w()
    q, scale = wq(w)
    qmax = 2 ** (bits - 1) - 1
    assert torch.equal(q, q.round()) and q.abs().max() <= qmax
    assert scale.shape == (6, 1, 1, 1)
    # every channel reaches its extreme level, so the grid uses the full range per channel
    assert torch.equal(q.reshape(6, -1).abs().amax(1), torch.full((6,), float(qmax)))
    assert len(torch.unique(q)) <= 2 * qmax + 1 == wq.levels()
    assert torch.equal(wq.fake(w), q * scale)
    amax = w.reshape(6, -1).abs().amax(1).reshape(-1, 1, 1, 1)
    if bits == 8:  # absmax scale: nothing clipped, error at most half a step
        assert torch.allclose(scale, amax / qmax)
        assert (wq.fake(w) - w).abs().le(scale / 2 + 1e-6).all()
    else:  # MSE-best clip: never worse than the absmax grid
        assert (scale <= amax / qmax + 1e-9).all()
        absmax_fake = torch.clamp(torch.round(w / (amax / qmax)), -qmax, qmax) * (amax / qmax)
        err = ((wq.fake(w) - w) ** 2).reshape(6, -1).sum(1)
        assert (err <= ((absmax_fake - w) ** 2).reshape(6, -1).sum(1) + 1e-6).all()


@pytest.mark.parametrize("bits", [1, 2, 4])
def test_dorefa_levels_are_odd_ints_in_int8(bits):
    wq = make_weight_quantizer("dorefa", bits)
    w = _w(seed=1)
    q, scale = wq(w)
    top = 2**bits - 1
    assert torch.equal(q, q.round())
    assert q.abs().max() <= top <= 127
    assert torch.all(q.remainder(2) == 1)  # (2n - (2^k-1)): odd integers
    assert len(torch.unique(q)) <= 2**bits == wq.levels()
    # [-1, 1] DoReFa mapping times the channel's max |W|
    fake = wq.fake(w)
    assert torch.allclose(fake.reshape(6, -1).abs().amax(1), w.reshape(6, -1).abs().amax(1), rtol=1e-5)
    assert torch.equal(fake, q * scale)
    c = wq.calib(w)
    assert c.shape == w.shape and (c > 0).all()


def test_dorefa_8bit_refused():
    with pytest.raises(MetaedgeError, match="symmetric"):
        make_weight_quantizer("dorefa", 8)


def test_bwn_is_mean_abs_times_sign():
    wq = make_weight_quantizer("bwn", 1)
    w = _w(seed=2)
    w[0, 0, 0, 0] = 0.0
    q, scale = wq(w)
    assert set(torch.unique(q).tolist()) <= {-1.0, 1.0}
    assert torch.allclose(scale.reshape(-1), w.abs().reshape(6, -1).mean(1))
    assert torch.equal(wq.fake(w), q * scale)
    assert torch.allclose(wq.fake(w), w.abs().reshape(6, -1).mean(1).reshape(-1, 1, 1, 1) * torch.where(w >= 0, 1.0, -1.0))
    with pytest.raises(MetaedgeError):
        make_weight_quantizer("bwn", 2)
    with pytest.raises(MetaedgeError):
        make_weight_quantizer("symmetric", 1)


def _grad(wq, w, g):
    w = w.clone().requires_grad_(True)
    (wq.fake(w) * g).sum().backward()
    return w.grad


def test_bwn_backward_is_the_identity():
    """The standard BWN STE: dL/dW = dL/dW_hat. (It used to be alpha_c * g -- the scale detached
    inside the sign -- a per-channel learning-rate cut of 10-30x after BN folding.)"""
    wq = make_weight_quantizer("bwn", 1)
    w, g = _w(seed=3), torch.randn(6, 4, 3, 3)
    grad = _grad(wq, w, g)
    assert torch.allclose(grad, g, rtol=1e-6, atol=0)  # g / alpha * alpha: equal up to float rounding
    alpha = w.abs().reshape(6, -1).mean(1).reshape(-1, 1, 1, 1)
    assert not torch.allclose(grad, alpha * g)


def test_dorefa_backward_is_the_tanh_chain_rule_with_identity_rounding():
    """Identity through the rounding, chain rule through tanh(W/a)/(2 max|tanh|) + 1/2 and the map
    back to [-a, a]: (1 - tanh^2) / max|tanh|, the paper's calibration term."""
    for bits in (1, 2, 4):
        wq = make_weight_quantizer("dorefa", bits)
        w, g = _w(seed=4), torch.randn(6, 4, 3, 3)
        alpha = w.abs().reshape(6, -1).amax(1).reshape(-1, 1, 1, 1)
        t = torch.tanh(w / alpha)
        tmax = t.abs().reshape(6, -1).amax(1).reshape(-1, 1, 1, 1)
        expected = g * (1 - t * t) / tmax
        assert torch.allclose(_grad(wq, w, g), expected, rtol=1e-5, atol=1e-6), bits


@pytest.mark.parametrize("bits", [2, 4, 8])
def test_symmetric_backward_is_the_identity_clipped_where_the_grid_clips(bits):
    wq = make_weight_quantizer("symmetric", bits)
    w, g = _w(seed=5), torch.randn(6, 4, 3, 3)
    q, scale = wq(w)
    inside = (torch.round(w / scale).abs() <= wq.qmax).float()
    grad = _grad(wq, w, g)
    assert torch.allclose(grad, g * inside, rtol=1e-6, atol=0)
    if bits == 8:
        assert inside.all()  # absmax grid: nothing clipped, the channel extremes keep their gradient
    else:
        assert (inside == 0).any()  # the MSE clip cuts the tails, and their gradient


@pytest.mark.parametrize("kind,bits", [("symmetric", 2), ("symmetric", 8), ("dorefa", 1), ("dorefa", 4), ("bwn", 1)])
def test_calib_term_is_the_ste_jacobian(kind, bits):
    """MetaQuant multiplies its meta gradient by calib(W); with an identity meta net it is STE."""
    wq = make_weight_quantizer(kind, bits)
    w, g = _w(seed=6), torch.randn(6, 4, 3, 3)
    assert torch.allclose(_grad(wq, w, g), wq.calib(w) * g, rtol=1e-5, atol=1e-6)


def test_activation_backward_is_the_clipped_identity():
    fq = ActFakeQuant(8, symmetric=True)
    fq.observe = True
    fq(torch.linspace(-1, 1, 100))
    fq.observe = False
    x = torch.linspace(-2, 2, 101, requires_grad=True)
    fq(x).sum().backward()
    scale, _ = fq.qparams()
    inside = (torch.round(x.detach() / scale) >= -128) & (torch.round(x.detach() / scale) <= 127)
    assert torch.equal(x.grad, inside.float()) and (~inside).any()


def test_lsq_weights_learned_step_and_its_gradient():
    w = _w(seed=7)
    lsq = LSQQuantizer(4, w)
    sym = make_weight_quantizer("symmetric", 4)
    assert torch.allclose(lsq.step.detach(), sym(w)[1])  # initialised at the MSE-best step
    assert (lsq.qmin, lsq.qmax, lsq.levels()) == (-8, 7, 16)
    wg = w.clone().requires_grad_(True)
    g = torch.randn_like(w)
    (lsq.fake(wg) * g).sum().backward()
    s = lsq.step.detach()
    n = torch.round(w / s)
    inside = (n >= -8) & (n <= 7)
    assert torch.allclose(wg.grad, g * inside.float(), rtol=1e-6, atol=0)  # identity inside the grid, 0 outside
    # dL/ds = gscale * sum(g * (round(v) - v)) inside, g * Qp / -Qn outside (Esser et al., eq. 3)
    v = w / s
    ds = torch.where(inside, n - v, torch.where(n > 7, torch.full_like(v, 7.0), torch.full_like(v, -8.0)))
    expected = (g * ds).reshape(6, -1).sum(1).reshape(s.shape) / (w[0].numel() * 7) ** 0.5
    assert torch.allclose(lsq.step.grad, expected, rtol=1e-4, atol=1e-6)
    one = LSQQuantizer(1, w)
    assert torch.allclose(one.step.detach(), w.abs().reshape(6, -1).mean(1).reshape(-1, 1, 1, 1))
    q, _ = one(w)
    assert set(torch.unique(q).tolist()) <= {-1.0, 1.0}
    with pytest.raises(MetaedgeError):
        LSQQuantizer(9, w)


def test_bit_policy_specs():
    assert parse_bit_policy("default") == BitPolicy() == parse_bit_policy(None)
    uni = parse_bit_policy("uniform")
    assert (uni.first, uni.last, uni.depthwise) == (None, None, None)
    p = parse_bit_policy("first=8,depthwise=same,layer3.*=4, head=w2")
    assert (p.first, p.last, p.depthwise, p.layers) == (8, 8, None, (("layer3.*", 4), ("head", 2)))
    assert parse_bit_policy(p.to_spec()) == p
    body = LayerRole("layer2.0.conv1", False, False, False)
    assert BitPolicy().bits_for(body, 2) == (2, "body")
    assert BitPolicy().bits_for(LayerRole("features.1.conv.0", False, False, True), 2) == (8, "depthwise")
    assert BitPolicy().bits_for(LayerRole("conv1", True, False, False), 1) == (8, "first")
    assert p.bits_for(LayerRole("layer3.1.conv2", False, False, False), 2) == (4, "pattern layer3.*")
    for bad in ("first", "first=3", "=8", "last=x"):
        with pytest.raises(MetaedgeError):
            parse_bit_policy(bad)


@pytest.mark.parametrize("symmetric", [False, True])
def test_activation_fake_quant_matches_onnx_quantize_dequantize(symmetric):
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper

    fq = ActFakeQuant(8, symmetric=symmetric)
    fq.observe = True
    x = torch.randn(4, 3, 8, 8) * 3 + 0.5
    fq(x)
    fq.observe = False
    scale, zp = fq.qparams()
    if symmetric:
        assert zp == 0
    else:
        assert 0 <= zp <= 255 and fq.min_val <= 0 <= fq.max_val
    y = fq(x)
    # values sit on the grid and zero is exact
    steps = (y / scale).detach()
    assert torch.allclose(steps, steps.round(), atol=1e-3)
    assert fq(torch.zeros(1)).item() == 0.0
    zp_type = TensorProto.INT8 if symmetric else TensorProto.UINT8
    graph = helper.make_graph(
        [helper.make_node("QuantizeLinear", ["x", "s", "z"], ["q"]), helper.make_node("DequantizeLinear", ["q", "s", "z"], ["y"])],
        "qdq",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(x.shape))],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, list(x.shape))],
        [helper.make_tensor("s", TensorProto.FLOAT, [], [scale]), helper.make_tensor("z", zp_type, [], [zp])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    ref = sess.run(None, {"x": x.numpy()})[0]
    np.testing.assert_array_equal(ref, y.detach().numpy())  # bit-identical: same rounding, same division
    _ = onnx


def test_activation_only_8_bits():
    with pytest.raises(MetaedgeError):
        ActFakeQuant(4)


def test_parse_quant_spec():
    assert parse_quant_spec("w8a8") == (8, 8)
    assert parse_quant_spec("W4A8") == (4, 8)
    assert parse_quant_spec("w1a8") == (1, 8)
    for bad in ["", "8a8", "w3a8", "w8a4", "w8", "int8", "w8a8x"]:
        with pytest.raises(MetaedgeError):
            parse_quant_spec(bad)


def test_quant_config_validates():
    QuantConfig(weight_bits=1, weight_quantizer="bwn")
    assert QuantConfig(method="lsq", weight_bits=2).effective_weight_quantizer == "lsq"
    assert QuantConfig(profile="tensorrt").act_symmetric and not QuantConfig().act_symmetric
    for bad in ({"profile": "trt"}, {"optimizer": "rmsprop"}, {"layer_bits": "first=3"}, {"kd_alpha": 2.0}):
        with pytest.raises(MetaedgeError):
            QuantConfig(**bad)
    with pytest.raises(MetaedgeError):
        QuantConfig(weight_bits=8, weight_quantizer="dorefa")
    with pytest.raises(MetaedgeError):
        QuantConfig(method="adam")
    with pytest.raises(MetaedgeError):
        QuantConfig(meta_variant="rnn")
    with pytest.raises(MetaedgeError):
        QuantConfig(act_bits=4)
