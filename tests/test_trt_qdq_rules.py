"""TensorRT Q/DQ placement checker: a correct graph passes, each rule catches its violation, and
the tensorrt-profile QAT export of a zoo model passes it (the ort one does not)."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from metaedge.errors import MetaedgeError
from metaedge.qdq.tensorrt_rules import RULES, check_tensorrt_qdq, require_tensorrt_qdq


def _graph(
    *,
    zp_type=TensorProto.INT8,
    zp_value=0,
    act_scale=0.05,
    weight_dq_from_int8=False,
    share_dq=False,
    weight_axis=0,
    per_channel_act=False,
    bias_dq=False,
    float_conv=False,
    drop_zp=False,
    opset=18,
    mismatched_pair=False,
):
    """input -> Q -> DQ -> Conv(W: float -> Q -> DQ axis 0, float bias) -> Relu -> Q -> DQ -> out
    (share_dq: the input DQ also feeds an Add with the conv output)."""
    rng = np.random.default_rng(0)
    w = rng.standard_normal((4, 2, 3, 3)).astype(np.float32)
    w_scale = (np.abs(w).reshape(4, -1).max(1) / 127).astype(np.float32)
    inits = [
        numpy_helper.from_array(np.array(act_scale, np.float32), "s_x"),
        numpy_helper.from_array(np.array(0.1, np.float32), "s_y"),
        numpy_helper.from_array(np.array(zp_value, np.uint8 if zp_type == TensorProto.UINT8 else np.int8), "zp"),
        numpy_helper.from_array(np.array(0.07, np.float32), "s_other"),
        numpy_helper.from_array(w_scale if weight_axis == 0 else np.full(2, 0.01, np.float32), "s_w"),
        numpy_helper.from_array(np.zeros(w_scale.shape if weight_axis == 0 else (2,), np.int8), "zp_w"),
        numpy_helper.from_array(rng.standard_normal(4).astype(np.float32), "bias"),
    ]
    zp = [] if drop_zp else ["zp"]
    nodes = []
    if per_channel_act:
        inits.append(numpy_helper.from_array(np.full(2, 0.05, np.float32), "s_xc"))
        inits.append(numpy_helper.from_array(np.zeros(2, np.int8), "zp_xc"))
        nodes += [
            helper.make_node("QuantizeLinear", ["input", "s_xc", "zp_xc"], ["xq"], name="q_in", axis=1),
            helper.make_node("DequantizeLinear", ["xq", "s_xc", "zp_xc"], ["xd"], name="dq_in", axis=1),
        ]
    else:
        nodes += [
            helper.make_node("QuantizeLinear", ["input", "s_x", *zp], ["xq"], name="q_in"),
            helper.make_node("DequantizeLinear", ["xq", "s_other" if mismatched_pair else "s_x", *zp], ["xd"], name="dq_in"),
        ]
    if weight_dq_from_int8:
        q = np.round(w / w_scale.reshape(-1, 1, 1, 1)).astype(np.int8)
        inits.append(numpy_helper.from_array(q, "w_int8"))
        nodes.append(helper.make_node("DequantizeLinear", ["w_int8", "s_w", "zp_w"], ["wd"], name="dq_w", axis=0))
    else:
        inits.append(numpy_helper.from_array(w, "w"))
        nodes += [
            helper.make_node("QuantizeLinear", ["w", "s_w", "zp_w"], ["wq"], name="q_w", axis=weight_axis),
            helper.make_node("DequantizeLinear", ["wq", "s_w", "zp_w"], ["wd"], name="dq_w", axis=weight_axis),
        ]
    bias = "bias"
    if bias_dq:
        inits += [numpy_helper.from_array(np.zeros(4, np.int32), "b_int"), numpy_helper.from_array(np.full(4, 1e-3, np.float32), "s_b")]
        nodes.append(helper.make_node("DequantizeLinear", ["b_int", "s_b"], ["bd"], name="dq_b", axis=0))
        bias = "bd"
    conv_in = "input" if float_conv else "xd"
    nodes.append(helper.make_node("Conv", [conv_in, "w" if float_conv else "wd", bias], ["c"], name="conv", pads=[1, 1, 1, 1]))
    last = "c"
    if share_dq:
        inits.append(numpy_helper.from_array(np.zeros((1, 2, 1, 1), np.float32), "pad"))
        nodes += [helper.make_node("ReduceMean", ["c"], ["cm"], name="mean", axes=[1], keepdims=1), helper.make_node("Add", ["cm", "xd"], ["a"], name="add")]
        last = "a"
    nodes += [
        helper.make_node("Relu", [last], ["r"], name="relu"),
        helper.make_node("QuantizeLinear", ["r", "s_y", *zp], ["yq"], name="q_out"),
        helper.make_node("DequantizeLinear", ["yq", "s_y", *zp], ["out"], name="dq_out"),
    ]
    if float_conv:
        nodes = [n for n in nodes if n.name not in ("q_w", "dq_w")]
    shape_out = [1, 2 if share_dq else 4, 6, 6]
    g = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 2, 6, 6])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, shape_out)],
        inits,
    )
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])


def _rules(model) -> set[str]:
    return {v.rule for v in check_tensorrt_qdq(model).violations}


def test_a_correct_graph_passes_and_runs_in_ort():
    import onnxruntime as ort

    model = _graph()
    onnx.checker.check_model(model)
    report = check_tensorrt_qdq(model)
    assert report.passed, [str(v) for v in report.violations]
    assert report.int8_layers == 1 and report.quantize_nodes == 3 and report.dequantize_nodes == 3
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    assert sess.run(None, {"input": np.ones((1, 2, 6, 6), np.float32)})[0].shape == (1, 4, 6, 6)


@pytest.mark.parametrize(
    "kw,rule",
    [
        ({"opset": 12}, "TRT001"),
        ({"act_scale": 0.0}, "TRT002"),
        ({"zp_type": TensorProto.UINT8, "zp_value": 128}, "TRT003"),
        ({"zp_value": 3}, "TRT003"),
        ({"drop_zp": True}, "TRT003"),
        ({"per_channel_act": True}, "TRT004"),
        ({"weight_axis": 1}, "TRT005"),
        ({"weight_dq_from_int8": True}, "TRT006"),
        ({"mismatched_pair": True}, "TRT007"),
        ({"float_conv": True}, "TRT008"),
        ({"bias_dq": True}, "TRT009"),
        ({"share_dq": True}, "TRT010"),
    ],
)
def test_each_rule_catches_its_violation(kw, rule):
    assert rule in _rules(_graph(**kw)), RULES[rule]


def test_require_raises_one_line_with_the_rule():
    with pytest.raises(MetaedgeError, match="TRT006") as exc:
        require_tensorrt_qdq(_graph(weight_dq_from_int8=True), "g.onnx")
    assert "\n" not in str(exc.value) and "--quant-profile tensorrt" in str(exc.value)


def test_q_feeding_two_dqs_is_one_pair_too_many():
    model = _graph()
    g = model.graph
    g.node.append(helper.make_node("DequantizeLinear", ["xq", "s_x", "zp"], ["xd2"], name="dq_in2"))
    g.output.append(helper.make_tensor_value_info("xd2", TensorProto.FLOAT, [1, 2, 6, 6]))
    assert "TRT010" in _rules(model)


def test_tensorrt_profile_export_of_a_zoo_model_passes(tmp_path):
    """ResNet-20 (residual adds: a quantized tensor with two consumers) through the real exporter.
    (The ort profile failing these rules is checked in test_qdq_export.py.)"""
    from metaedge.compress.metaquant.export import check_qdq_parity, export_qdq
    from metaedge.compress.metaquant.qat import calibrate, prepare_qat
    from metaedge.zoo import create_model

    torch.manual_seed(0)
    m = create_model("resnet20", num_classes=10, in_chans=1, input_size=16, width_mult=0.25).train()
    with torch.no_grad():
        m(torch.randn(32, 1, 16, 16))
    m.eval()
    x = torch.randn(64, 1, 16, 16)
    q = prepare_qat(m, "symmetric", 4, profile="tensorrt")
    calibrate(q, [x], 1)
    info = export_qdq(q, x[:1], tmp_path / "trt.onnx")
    assert check_qdq_parity(q, tmp_path / "trt.onnx", x, min_top1_agreement=0.95)["passed"]
    report = check_tensorrt_qdq(tmp_path / "trt.onnx")
    assert report.passed, [str(v) for v in report.violations[:5]]
    assert report.float_layers == 0 and report.int8_layers == len(info["layers"])
    assert info["rewrite"]["dedicated_pairs_added"] >= 9  # one extra pair per residual add at least
