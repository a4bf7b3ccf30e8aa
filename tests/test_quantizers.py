"""Weight and activation quantizers: levels and ranges per k, exact scale*int, ONNX rounding."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from metaedge.compress.metaquant import QuantConfig, parse_quant_spec
from metaedge.compress.metaquant.quantizers import ActFakeQuant, make_weight_quantizer
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


@pytest.mark.parametrize("kind,bits", [("symmetric", 4), ("dorefa", 2), ("bwn", 1)])
def test_straight_through_gradient(kind, bits):
    wq = make_weight_quantizer(kind, bits)
    w = _w(seed=3).requires_grad_(True)
    wq.fake(w).sum().backward()
    assert w.grad is not None and w.grad.abs().sum() > 0


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
        "qdq", [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(x.shape))], [helper.make_tensor_value_info("y", TensorProto.FLOAT, list(x.shape))],
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
    with pytest.raises(MetaedgeError):
        QuantConfig(weight_bits=8, weight_quantizer="dorefa")
    with pytest.raises(MetaedgeError):
        QuantConfig(method="adam")
    with pytest.raises(MetaedgeError):
        QuantConfig(meta_variant="rnn")
    with pytest.raises(MetaedgeError):
        QuantConfig(act_bits=4)
