"""QDQ ONNX export in both profiles: structure, k-bit grids, BN folded exactly, ORT parity in
quantization steps, int8 fusion in ORT, TensorRT placement rules, and the profile choice."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
import torch.nn as nn
from onnx import numpy_helper

from metaedge.compress.metaquant.export import check_qdq_parity, export_qdq
from metaedge.compress.metaquant.qat import act_quantizers, calibrate, prepare_qat, quant_layers
from metaedge.deploy.qdq import check_qdq_fusion, choose_qdq_profile
from metaedge.errors import MetaedgeError
from metaedge.parity import QUANTIZED, ParityError
from metaedge.qdq.tensorrt_rules import check_tensorrt_qdq


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


def _quantized(kind, bits, profile="ort"):
    q = prepare_qat(_model(), kind, bits, profile=profile, policy="uniform")
    calibrate(q, [torch.randn(64, 1, 12, 12) for _ in range(2)], 2)
    return q


KEYS = [("symmetric", 4), ("dorefa", 2), ("bwn", 1), ("symmetric", 8)]


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    out = {}
    for profile in ("ort", "tensorrt"):
        for kind, bits in KEYS:
            q = _quantized(kind, bits, profile)
            path = tmp_path_factory.mktemp("qdq") / f"{profile}-{kind}{bits}.onnx"
            info = export_qdq(q, torch.randn(1, 1, 12, 12), path)
            out[(profile, kind, bits)] = (q, path, info)
    return out


def _graph(path):
    model = onnx.load(str(path))
    onnx.checker.check_model(model)
    g = model.graph
    return g, {i.name: i for i in g.initializer}, {o: n for n in g.node for o in n.output}


@pytest.mark.parametrize("key", KEYS)
def test_ort_structure_and_k_bit_grids(exported, key):
    q, path, info = exported[("ort", *key)]
    kind, bits = key
    g, inits, producer = _graph(path)
    assert [i.name for i in g.input] == ["input"] and [o.name for o in g.output] == ["logits"]
    assert g.input[0].type.tensor_type.shape.dim[0].dim_param  # dynamic batch
    ops = [n.op_type for n in g.node]
    assert ops.count("Conv") == 3 and ops.count("Gemm") == 1
    assert "BatchNormalization" not in ops  # BN, live during QAT, is folded into the weights
    # one Q per activation quantizer (per tensor), each with a matching DQ
    assert ops.count("QuantizeLinear") == len(act_quantizers(q)) == info["nodes"]["QuantizeLinear"]
    # ort: 8-bit layers on a 7-bit grid, where ORT's x86 u8s8 kernels cannot saturate
    levels = {("symmetric", 4): 7, ("dorefa", 2): 3, ("bwn", 1): 1, ("symmetric", 8): 63}[key]
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
    assert set(info["weight_bits"].values()) == {min(bits, 7)} and info["profile"] == "ort"
    assert info["rewrite"]["saturation_risk_weights"] == []


def test_initializers_reproduce_folded_fake_quant_weights(exported):
    q, path, _ = exported[("ort", "dorefa", 2)]
    g, inits, producer = _graph(path)
    folded = sorted(
        ((lambda qs: (qs[0].float() * qs[1].reshape(-1, *([1] * (qs[0].dim() - 1)))).numpy())(layer.int_weight()) for _, layer in quant_layers(q)),
        key=lambda a: a.size,
    )
    deq = []
    for node in (n for n in g.node if n.op_type in ("Conv", "Gemm")):
        dq = producer[node.input[1]]
        w, s = numpy_helper.to_array(inits[dq.input[0]]), numpy_helper.to_array(inits[dq.input[1]])
        deq.append(w.astype(np.float32) * s.reshape(-1, *([1] * (w.ndim - 1))))
    for a, b in zip(folded, sorted(deq, key=lambda a: a.size)):
        np.testing.assert_array_equal(a, b)  # bit-exact: DequantizeLinear computes int * scale


@pytest.mark.parametrize("kind,bits", [("symmetric", 4), ("bwn", 1), ("dorefa", 2)])
def test_bn_live_in_training_folded_exactly_in_eval(kind, bits):
    """Train mode runs BN on batch statistics; eval mode's folded integer weights and bias compute
    what quantized conv -> eval BN computes, so the deployed graph is the trained one."""
    q = prepare_qat(_model(), kind, bits, policy="uniform")
    layer = dict(quant_layers(q))["dw.0"]
    owned = {id(lq.bn) for _, lq in quant_layers(q)}
    assert layer.bn is not None and not any(isinstance(m, nn.BatchNorm2d) and id(m) not in owned for m in q.modules())
    x = torch.randn(8, 16, 12, 12)
    layer.eval()
    in_quant, layer._in_quant = layer._in_quant, []  # without an input scale the bias stays float
    with torch.no_grad():
        w_hat = layer.wq.fake(layer.weight)
        ref = layer.bn(layer._conv_forward(x, w_hat, None))
        qf, sf = layer.int_weight()
        assert torch.equal(qf.float(), qf.float().round()) and (sf > 0).all()
        assert torch.equal(qf.abs(), layer.wq(layer.weight)[0].abs().to(torch.int8))  # same integers, signs flipped where gamma < 0
        out = layer(x)
    assert torch.allclose(out, ref, atol=1e-4, rtol=1e-4)
    layer._in_quant = in_quant
    with torch.no_grad():  # with it, the folded bias sits on the int32 grid s_x * s_f
        _, s_f, b = layer.folded()
        grid = in_quant[0].qparams()[0] * s_f.reshape(-1)
        _, bias = layer._eval_weight_and_bias()
    assert torch.allclose(bias / grid, (bias / grid).round(), atol=1e-3) and torch.allclose(bias, b, atol=float(grid.max()))
    layer.train()
    before = layer.bn.running_mean.clone()
    layer(x)
    assert not torch.equal(before, layer.bn.running_mean)  # batch statistics were used and tracked


@pytest.mark.parametrize("key", [("symmetric", 4), ("bwn", 1), ("symmetric", 8)])
def test_ort_parity_in_steps_and_int8_fusion(exported, key, tmp_path):
    q, path, _ = exported[("ort", *key)]
    x = torch.randn(96, 1, 12, 12)
    report = check_qdq_parity(q, path, x)
    assert report["passed"] and report["top1_agreement"] >= 0.99
    assert report["step"] == pytest.approx(act_quantizers(q)[-1].qparams()[0]) and report["step_from"] == "output quantizer scale"
    assert report["atol"] == pytest.approx(QUANTIZED.max_steps * report["step"]) and report["max_err_steps"] <= QUANTIZED.max_steps
    fusion = check_qdq_fusion(path, tmp_path / "opt.onnx")
    assert fusion["fused"], fusion
    assert fusion["int8_kernels"].get("QLinearConv") == 3
    assert "Conv" not in fusion["nodes"] and "FusedConv" not in fusion["nodes"]


@pytest.mark.parametrize("key", KEYS)
def test_tensorrt_profile_structure_rules_and_parity(exported, key):
    q, path, info = exported[("tensorrt", *key)]
    assert info["profile"] == "tensorrt" and info["tensorrt_rules"]["passed"]
    report = check_tensorrt_qdq(path)  # the checker runs on every tensorrt export
    assert report.passed, [str(v) for v in report.violations]
    assert report.int8_layers == 4 and report.float_layers == 0
    g, inits, producer = _graph(path)
    for n in (n for n in g.node if n.op_type in ("QuantizeLinear", "DequantizeLinear")):
        zp = inits[n.input[2]]
        assert zp.data_type == onnx.TensorProto.INT8 and not numpy_helper.to_array(zp).any()
    levels = {("symmetric", 4): 7, ("dorefa", 2): 3, ("bwn", 1): 1, ("symmetric", 8): 127}[key]
    for node in (n for n in g.node if n.op_type in ("Conv", "Gemm")):
        w_dq = producer[node.input[1]]
        w_q = producer[w_dq.input[0]]
        assert w_q.op_type == "QuantizeLinear" and inits[w_q.input[0]].data_type == onnx.TensorProto.FLOAT
        assert {a.name: a.i for a in w_q.attribute}.get("axis") == 0
        w = numpy_helper.to_array(inits[w_q.input[0]])
        s = numpy_helper.to_array(inits[w_q.input[1]]).reshape(-1, *([1] * (w.ndim - 1)))
        n = w / s
        assert np.allclose(n, np.round(n), atol=1e-3) and np.abs(np.round(n)).max() <= levels  # float, on the k-bit grid
        assert inits[node.input[2]].data_type == onnx.TensorProto.FLOAT  # float bias, no DQ
    # the stem output feeds the depthwise conv and the residual add: two dedicated pairs
    assert info["rewrite"]["dedicated_pairs_added"] >= 1
    rep = check_qdq_parity(q, path, torch.randn(96, 1, 12, 12), min_top1_agreement=0.97)
    assert rep["passed"] and rep["profile"] == "tensorrt"


def test_tensorrt_export_refuses_a_model_prepared_for_ort(exported, tmp_path):
    q, _, _ = exported[("ort", "symmetric", 8)]
    with pytest.raises(MetaedgeError, match="tensorrt"):
        export_qdq(q, torch.randn(1, 1, 12, 12), tmp_path / "x.onnx", profile="tensorrt")
    report = check_tensorrt_qdq(exported[("ort", "symmetric", 8)][1])
    rules = {v.rule for v in report.violations}
    assert not report.passed and {"TRT003", "TRT006", "TRT009"} <= rules  # uint8 zero points, stored int weights, int32 biases


def test_parity_gate_fails_loudly_on_a_wrong_model(exported):
    q, path, _ = exported[("ort", "symmetric", 8)]
    other = _quantized("bwn", 1)
    with pytest.raises(ParityError, match="steps"):
        check_qdq_parity(other, path, torch.randn(32, 1, 12, 12))


def test_export_refuses_uncalibrated_and_plain_models(tmp_path):
    with pytest.raises(MetaedgeError):
        export_qdq(_model(), torch.randn(1, 1, 12, 12), tmp_path / "x.onnx")
    q = prepare_qat(_model(), "symmetric", 8)
    with pytest.raises(MetaedgeError, match="calibrated"):
        export_qdq(q, torch.randn(1, 1, 12, 12), tmp_path / "x.onnx")
    info = export_qdq(q, torch.randn(1, 1, 12, 12), tmp_path / "x.onnx", calib=[torch.randn(16, 1, 12, 12)])
    assert (tmp_path / "x.onnx").exists() and not list(tmp_path.glob(".*.tmp"))
    w = sum(layer.weight.numel() for _, layer in quant_layers(q))
    assert info["packed"]["weights"] == sum(-(-7 * layer.weight.numel() // 8) for _, layer in quant_layers(q))  # ort: 7-bit grid
    assert w > info["packed"]["weights"]


def test_packed_bytes_count_k_bits_and_list_each_layer(exported):
    _, _, info4 = exported[("ort", "symmetric", 4)]
    _, _, info8 = exported[("tensorrt", "symmetric", 8)]
    assert info4["packed"]["weights"] * 2 == pytest.approx(info8["packed"]["weights"], abs=4)
    _, _, info1 = exported[("ort", "bwn", 1)]
    assert info1["packed"]["weights"] * 8 == pytest.approx(info8["packed"]["weights"], abs=32)
    rows = info4["layers"]
    assert [r["name"] for r in rows] == ["stem.0", "dw.0", "pw.0", "head"] and {r["bits"] for r in rows} == {4}
    assert sum(r["packed_bytes"] for r in rows) == info4["packed_bytes"]
    assert [r["type"] for r in rows] == ["conv", "depthwise", "conv", "linear"]


def test_default_policy_keeps_first_last_and_depthwise_at_8_bits(tmp_path):
    q = prepare_qat(_model(), "symmetric", 2, profile="tensorrt")
    calibrate(q, [torch.randn(32, 1, 12, 12)], 1)
    info = export_qdq(q, torch.randn(1, 1, 12, 12), tmp_path / "w2.onnx")
    by = {r["name"]: (r["bits"], r["why"]) for r in info["layers"]}
    assert by == {"stem.0": (8, "first"), "dw.0": (8, "depthwise"), "pw.0": (2, "body"), "head": (8, "last")}
    assert info["weight_bits"] == {k: v[0] for k, v in by.items()}
    # the ort profile gives those layers a 7-bit grid and says why
    rows = {r["name"]: r for r in prepare_and_table("ort")}
    assert rows["stem.0"]["bits"] == 7 and rows["stem.0"]["why"] == "first; ort profile: 8 -> 7 bits" and rows["pw.0"]["bits"] == 2


def prepare_and_table(profile):
    from metaedge.compress.metaquant.qat import layer_table

    return layer_table(prepare_qat(_model(), "symmetric", 2, profile=profile))


def test_choose_qdq_profile():
    assert choose_qdq_profile("auto", ["onnxruntime", "tvm"])[0] == "ort"
    assert choose_qdq_profile("auto", ["tensorrt", "tvm"]) == ("tensorrt", "backend tensorrt needs it")
    assert choose_qdq_profile("ort", ["tensorrt"])[0] == "ort"  # asked for explicitly
    assert choose_qdq_profile("auto", [])[0] == "ort"
    with pytest.raises(MetaedgeError):
        choose_qdq_profile("trt", [])


@pytest.mark.parametrize("name,kw", [("mobilenetv2_100", {"width_mult": 0.5}), ("resnet20", {})])
def test_zoo_models_prepare_with_live_bn_without_architecture_assumptions(name, kw):
    """Every conv/linear gets quantized with its BN, for zoo nets and narrower (pruned-like) ones."""
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
    n_bn = sum(isinstance(mod, nn.BatchNorm2d) for mod in m.modules())
    layers = quant_layers(q)
    assert len(layers) == n_layers and sum(layer.bn is not None for _, layer in layers) == n_bn
    calibrate(q, [x], 1)
    assert (q(x).argmax(1) == m(x).argmax(1)).float().mean() >= 0.75
    roles = {layer.role for _, layer in layers}
    assert {"first", "last"} <= roles and (("depthwise" in roles) == (name == "mobilenetv2_100"))
