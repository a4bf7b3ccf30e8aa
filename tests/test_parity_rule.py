"""The one parity rule (metaedge.parity): fp32 judged by an absolute bound, quantized artifacts in
steps of the output quantizer, one compare function, and the ONNX output step it reads."""

from __future__ import annotations

import numpy as np
import pytest

from metaedge.errors import MetaedgeError
from metaedge.onnx_graph import is_qdq, onnx_input_spec, output_step
from metaedge.parity import FP32, QUANTIZED, ParityError, Tolerance, compare

REF = np.array([[4.0, 1.0, 0.0], [0.0, 3.0, 1.0], [1.0, 0.0, 2.0], [2.0, 5.0, 0.0]])


def test_fp32_is_an_absolute_bound_on_the_max_error():
    assert compare(REF, REF + 9e-4).passed
    rep = compare(REF, REF + 2e-3)
    assert not rep.passed and rep.max_abs_err == pytest.approx(2e-3) and rep.atol == FP32.atol
    assert rep.kind == "fp32" and rep.step is None and rep.mean_atol is None
    flipped = REF.copy()
    flipped[0] = [0.0, 1.0, 4.0]
    assert compare(REF, flipped, Tolerance("fp32", atol=10.0)).top1_agreement == 0.75  # decisions count too
    assert not compare(REF, flipped, Tolerance("fp32", atol=10.0)).passed


def test_quantized_counts_steps_of_the_output():
    step = 0.1
    near = REF + np.where(np.arange(REF.size).reshape(REF.shape) == 0, 20 * step, 0.0)  # one value 20 steps off
    rep = compare(REF, near, QUANTIZED, step=step, step_from="test")
    assert rep.passed and rep.atol == pytest.approx(QUANTIZED.max_steps * step)
    assert rep.to_dict()["max_err_steps"] == pytest.approx(20.0) and rep.step_from == "test"
    far = compare(REF, REF + 3 * step, QUANTIZED, step=step)  # every value 3 steps off: the mean bound fails
    assert not far.passed and far.mean_abs_err > far.mean_atol
    with pytest.raises(ParityError, match=r"parity gate failed for x: .*steps"):
        far.require("x", "fix it")
    # no output quantizer: an 8-bit step of the reference's range
    rep = compare(REF, REF, QUANTIZED)
    assert rep.step == pytest.approx(5.0 / 127) and rep.step_from == "max|logit| / 127"
    # an absolute atol replaces the max-steps bound
    assert compare(REF, REF, Tolerance("quantized", atol=0.5, mean_steps=2.0), step=step).atol == 0.5


def test_one_sample_shapes_and_mismatch():
    assert compare(REF[0], REF[0]).samples == 1
    with pytest.raises(ParityError, match="output shapes differ"):
        compare(REF, REF[:, :2])


def test_tolerances_are_checked_when_built():
    assert FP32.kind == "fp32" and QUANTIZED.kind == "quantized"
    for bad in (
        dict(kind="int4"),
        dict(kind="fp32"),
        dict(kind="fp32", atol=-1.0),
        dict(kind="quantized", max_steps=2.0),
        dict(kind="fp32", atol=1e-3, min_top1_agreement=1.5),
    ):
        with pytest.raises(MetaedgeError):
            Tolerance(**bad)


def _graph(path, quantized_output: bool, scale_as_constant: bool = False):
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    nodes, inits = [helper.make_node("Relu", ["input"], ["y"])], []
    if quantized_output:
        scale = np.array(0.05, np.float32)
        if scale_as_constant:
            nodes.append(helper.make_node("Constant", [], ["s"], value=numpy_helper.from_array(scale)))
        else:
            inits.append(numpy_helper.from_array(scale, "s"))
        inits.append(numpy_helper.from_array(np.array(0, np.uint8), "z"))
        nodes += [helper.make_node("QuantizeLinear", ["y", "s", "z"], ["q"]), helper.make_node("DequantizeLinear", ["q", "s", "z"], ["logits"])]
    else:
        nodes.append(helper.make_node("Identity", ["y"], ["logits"]))
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 4])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 4])],
        inits,
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


def test_onnx_graph_facts(tmp_path):
    fp32 = _graph(tmp_path / "fp32.onnx", False)
    assert onnx_input_spec(fp32) == ("input", (1, 4), "logits")  # the symbolic batch becomes 1
    assert not is_qdq(fp32) and output_step(fp32) is None
    for as_constant in (False, True):
        q = _graph(tmp_path / f"q{as_constant}.onnx", True, as_constant)
        assert is_qdq(q) and output_step(q) == pytest.approx(0.05)
