"""QDQ ONNX export: structure, k-bit grids in int8 initializers, ORT parity, int8 fusion in ORT."""
from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
import torch.nn as nn
from onnx import numpy_helper

from metaedge.compress.metaquant.qat import act_quantizers, calibrate, prepare_qat, quant_layers
from metaedge.deploy.export import ParityError
from metaedge.deploy.qdq import check_qdq_fusion, check_qdq_parity, export_qdq
from metaedge.errors import MetaedgeError


class Block(nn.Module):
    """A MobileNetV2-ish block plus a plain head: conv-bn-relu6, depthwise, projection + residual, linear."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU6())
        self.dw = nn.Sequential(nn.Conv2d(16, 16, 3, padding=1, groups=16, bias=False), nn.BatchNorm2d(16), nn.ReLU6())
        self.pw = nn.Sequential(nn.Conv2d(16, 16, 1, bias=False), nn.BatchNorm2d(16))
        self.head = nn.Linear(16, 5)

    def forward(self, x):
        x = self.stem(x)
        x = x + self.pw(self.dw(x))
        return self.head(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))


def _model(seed=0) -> nn.Module:
    torch.manual_seed(seed)
    m = Block()
    m.train()
    with torch.no_grad():  # non-trivial BN statistics, so folding produces real biases
        for _ in range(3):
            m(torch.randn(32, 1, 12, 12))
    for bn in (mm for mm in m.modules() if isinstance(mm, nn.BatchNorm2d)):
        bn.weight.data.uniform_(-1.5, 1.5)  # negative gammas too: folding flips channel signs
        bn.bias.data.normal_()
    return m.eval()


def _quantized(kind, bits, act_symmetric=False):
    q = prepare_qat(_model(), kind, bits, act_symmetric=act_symmetric, first_last_bits=None)
    calibrate(q, [torch.randn(64, 1, 12, 12) for _ in range(2)], 2)
    return q


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    out = {}
    for kind, bits in (("symmetric", 4), ("dorefa", 2), ("bwn", 1), ("symmetric", 8)):
        q = _quantized(kind, bits)
        path = tmp_path_factory.mktemp("qdq") / f"{kind}{bits}.onnx"
        info = export_qdq(q, torch.randn(1, 1, 12, 12), path)
        out[(kind, bits)] = (q, path, info)
    return out


@pytest.mark.parametrize("key", [("symmetric", 4), ("dorefa", 2), ("bwn", 1), ("symmetric", 8)])
def test_structure_and_k_bit_grids(exported, key):
    q, path, info = exported[key]
    kind, bits = key
    model = onnx.load(str(path))
    onnx.checker.check_model(model)
    g = model.graph
    assert [i.name for i in g.input] == ["input"] and [o.name for o in g.output] == ["logits"]
    assert g.input[0].type.tensor_type.shape.dim[0].dim_param  # dynamic batch
    inits = {i.name: i for i in g.initializer}
    producer = {o: n for n in g.node for o in n.output}
    ops = [n.op_type for n in g.node]
    assert ops.count("Conv") == 3 and ops.count("Gemm") == 1
    assert "BatchNormalization" not in ops
    # one Q per activation quantizer (per tensor), each with a matching DQ
    assert ops.count("QuantizeLinear") == len(act_quantizers(q)) == info["nodes"]["QuantizeLinear"]
    levels = {("symmetric", 4): 7, ("dorefa", 2): 3, ("bwn", 1): 1, ("symmetric", 8): 127}[key]
    for node in (n for n in g.node if n.op_type in ("Conv", "Gemm")):
        x_dq, w_dq, b_dq = (producer[i] for i in node.input[:3])
        assert x_dq.op_type == "DequantizeLinear" and producer[x_dq.input[0]].op_type == "QuantizeLinear"
        assert w_dq.op_type == "DequantizeLinear" and {a.name: a.i for a in w_dq.attribute}.get("axis") == 0
        w_int = inits[w_dq.input[0]]
        assert w_int.data_type == onnx.TensorProto.INT8
        w = numpy_helper.to_array(w_int)
        scale = numpy_helper.to_array(inits[w_dq.input[1]])
        assert scale.shape == (w.shape[0],) and (scale > 0).all()
        assert np.abs(w).max() <= levels
        if kind == "bwn":
            assert set(np.unique(w)) <= {-1, 1}
        if kind == "dorefa":
            assert (np.abs(w) % 2 == 1).all()  # odd levels of the 2-bit DoReFa grid
        assert numpy_helper.to_array(inits[b_dq.input[0]]).dtype == np.int32
    assert info["int8_weight_initializers"] == 4 and info["int32_biases"] == 4
    assert set(info["weight_bits"].values()) == {bits}


def test_initializers_reproduce_fake_quant_weights(exported):
    q, path, _ = exported[("dorefa", 2)]
    model = onnx.load(str(path))
    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    producer = {o: n for n in model.graph.node for o in n.output}
    fake = sorted((layer.wq.fake(layer.weight).detach().numpy() for _, layer in quant_layers(q)), key=lambda a: a.size)
    deq = []
    for node in (n for n in model.graph.node if n.op_type in ("Conv", "Gemm")):
        dq = producer[node.input[1]]
        w, s = inits[dq.input[0]], inits[dq.input[1]]
        deq.append(w.astype(np.float32) * s.reshape(-1, *([1] * (w.ndim - 1))))
    for a, b in zip(fake, sorted(deq, key=lambda a: a.size)):
        np.testing.assert_array_equal(a, b)  # bit-exact: DequantizeLinear computes int * scale


@pytest.mark.parametrize("key", [("symmetric", 4), ("bwn", 1), ("symmetric", 8)])
def test_ort_parity_and_int8_fusion(exported, key, tmp_path):
    q, path, _ = exported[key]
    x = torch.randn(96, 1, 12, 12)
    report = check_qdq_parity(q, path, x)
    assert report["passed"] and report["top1_agreement"] >= 0.99
    fusion = check_qdq_fusion(path, tmp_path / "opt.onnx")
    assert fusion["fused"], fusion
    assert fusion["int8_kernels"].get("QLinearConv") == 3
    assert "Conv" not in fusion["nodes"] and "FusedConv" not in fusion["nodes"]


def test_parity_gate_fails_loudly_on_a_wrong_model(exported):
    q, path, _ = exported[("symmetric", 8)]
    other = _quantized("bwn", 1)
    with pytest.raises(ParityError, match="parity gate failed"):
        check_qdq_parity(other, path, torch.randn(32, 1, 12, 12))


def test_symmetric_activations_for_tensorrt(tmp_path):
    q = _quantized("symmetric", 8, act_symmetric=True)
    path = tmp_path / "sym.onnx"
    export_qdq(q, torch.randn(1, 1, 12, 12), path)
    g = onnx.load(str(path)).graph
    consts = {i.name: numpy_helper.to_array(i) for i in g.initializer}
    for n in (n for n in g.node if n.op_type == "QuantizeLinear"):
        zp = consts[n.input[2]]
        assert zp.dtype == np.int8 and int(zp) == 0
    assert check_qdq_parity(q, path, torch.randn(64, 1, 12, 12))["passed"]


def test_export_refuses_uncalibrated_and_plain_models(tmp_path):
    with pytest.raises(MetaedgeError):
        export_qdq(_model(), torch.randn(1, 1, 12, 12), tmp_path / "x.onnx")
    q = prepare_qat(_model(), "symmetric", 8)
    with pytest.raises(MetaedgeError, match="calibrated"):
        export_qdq(q, torch.randn(1, 1, 12, 12), tmp_path / "x.onnx")
    info = export_qdq(q, torch.randn(1, 1, 12, 12), tmp_path / "x.onnx", calib=[torch.randn(16, 1, 12, 12)])
    assert (tmp_path / "x.onnx").exists() and not list(tmp_path.glob(".*.tmp"))
    w = sum(layer.weight.numel() for _, layer in quant_layers(q))
    assert info["packed"]["weights"] == w  # 8 bits per weight


def test_packed_bytes_count_k_bits(exported):
    _, _, info4 = exported[("symmetric", 4)]
    _, _, info8 = exported[("symmetric", 8)]
    assert info4["packed"]["weights"] * 2 == pytest.approx(info8["packed"]["weights"], abs=4)
    _, _, info1 = exported[("bwn", 1)]
    assert info1["packed"]["weights"] * 8 == pytest.approx(info8["packed"]["weights"], abs=32)


@pytest.mark.parametrize("name,kw", [("mobilenetv2_100", {"width_mult": 0.5}), ("resnet20", {})])
def test_zoo_models_fold_and_prepare_without_architecture_assumptions(name, kw):
    """BN folding is exact and every conv/linear gets quantized, for zoo nets and narrower (pruned-like) ones."""
    from metaedge.compress.metaquant.qat import fold_bn
    from metaedge.zoo import create_model

    torch.manual_seed(0)
    m = create_model(name, num_classes=10, in_chans=1, input_size=16, **kw)
    m.train()
    with torch.no_grad():
        m(torch.randn(16, 1, 16, 16))
    m.eval()
    x = torch.randn(8, 1, 16, 16)
    folded = fold_bn(m)
    assert not any(isinstance(mod, nn.BatchNorm2d) for mod in folded.modules())
    assert torch.allclose(folded(x), m(x), atol=1e-4, rtol=1e-3)
    q = prepare_qat(m, "symmetric", 8)
    n_layers = sum(isinstance(mod, (nn.Conv2d, nn.Linear)) for mod in m.modules())
    assert len(quant_layers(q)) == n_layers
    calibrate(q, [x], 1)
    assert (q(x).argmax(1) == m(x).argmax(1)).float().mean() >= 0.75
