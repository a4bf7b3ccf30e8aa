"""PTQ baseline: ORT quantize_static (QDQ, per-channel int8) with a CalibrationDataReader over train batches."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
import torch.nn as nn
from onnx import numpy_helper

from metaedge.compress.metaquant.export import ort_session
from metaedge.compress.metaquant.ptq import BatchReader, quantize_ptq
from metaedge.deploy.backends.onnxruntime import OrtRunner
from metaedge.deploy.export import export_onnx
from metaedge.deploy.qdq import check_qdq_fusion
from metaedge.errors import MetaedgeError
from metaedge.qdq.tensorrt_rules import check_tensorrt_qdq


def _model() -> nn.Module:
    torch.manual_seed(0)
    m = nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1, bias=False),
        nn.BatchNorm2d(16),
        nn.ReLU(),
        nn.Conv2d(16, 16, 3, padding=1, groups=16, bias=False),
        nn.BatchNorm2d(16),
        nn.ReLU6(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(16, 5),
    )
    m.train()
    with torch.no_grad():
        for _ in range(3):
            m(torch.randn(32, 1, 12, 12))
    return m.eval()


def test_batch_reader_yields_each_batch_then_none_and_rewinds():
    r = BatchReader([np.zeros((2, 1, 4, 4)), np.ones((2, 1, 4, 4))], "input")
    assert len(r) == 2
    a, b, c = r.get_next(), r.get_next(), r.get_next()
    assert a["input"].dtype == np.float32 and b["input"].max() == 1 and c is None
    r.rewind()
    assert np.array_equal(r.get_next()["input"], a["input"])  # from the first batch again


def test_quantize_static_per_channel_qdq_fuses_and_agrees(tmp_path):
    model = _model()
    fp32 = export_onnx(model, torch.randn(1, 1, 12, 12), tmp_path / "fp32.onnx")
    g = torch.Generator().manual_seed(1)
    calib = [torch.randn(32, 1, 12, 12, generator=g).numpy() for _ in range(4)]
    out = quantize_ptq(fp32, tmp_path / "ptq.onnx", calib)
    assert out.exists() and not list(tmp_path.glob(".*.tmp"))
    graph = onnx.load(str(out)).graph
    ops = [n.op_type for n in graph.node]
    assert "QuantizeLinear" in ops and "DequantizeLinear" in ops
    inits = {i.name: i for i in graph.initializer}
    w_dqs = [n for n in graph.node if n.op_type == "DequantizeLinear" and n.input[0] in inits and len(inits[n.input[0]].dims) == 4]
    assert len(w_dqs) == 2 and all(inits[n.input[1]].dims == [16] for n in w_dqs)  # per output channel
    # ort profile: int8 weights on a 7-bit grid (reduce_range): a full 8-bit grid can saturate ORT's x86 u8s8 kernels
    assert all(inits[n.input[0]].data_type == onnx.TensorProto.INT8 for n in w_dqs)
    assert all(np.abs(numpy_helper.to_array(inits[n.input[0]]).astype(np.int16)).max() <= 64 for n in w_dqs)
    fusion = check_qdq_fusion(out)
    assert fusion["fused"], fusion
    x = torch.randn(64, 1, 12, 12, generator=g).numpy()
    ref, q = OrtRunner(fp32).run(x), OrtRunner(out).run(x)
    assert np.abs(ref - q).max() < 0.1 * np.abs(ref).max() + 1e-3
    assert (ref.argmax(1) == q.argmax(1)).mean() >= 0.9


def test_ptq_errors(tmp_path):
    with pytest.raises(MetaedgeError, match="does not exist"):
        quantize_ptq(tmp_path / "missing.onnx", tmp_path / "o.onnx", [np.zeros((1, 1, 12, 12))])
    fp32 = export_onnx(_model(), torch.randn(1, 1, 12, 12), tmp_path / "fp32.onnx")
    with pytest.raises(MetaedgeError, match="no calibration"):
        quantize_ptq(fp32, tmp_path / "o.onnx", [])


def test_tensorrt_profile_ptq_passes_the_placement_rules_and_agrees(tmp_path):
    model = _model()
    fp32 = export_onnx(model, torch.randn(1, 1, 12, 12), tmp_path / "fp32.onnx")
    g = torch.Generator().manual_seed(1)
    calib = [torch.randn(32, 1, 12, 12, generator=g).numpy() for _ in range(4)]
    out = quantize_ptq(fp32, tmp_path / "trt.onnx", calib, profile="tensorrt")
    report = check_tensorrt_qdq(out)
    assert report.passed, [str(v) for v in report.violations]
    assert report.int8_layers == 3 and report.float_layers == 0
    graph = onnx.load(str(out)).graph
    inits = {i.name: i for i in graph.initializer}
    w_q = [n for n in graph.node if n.op_type == "QuantizeLinear" and n.input[0] in inits]
    assert len(w_q) == 3 and all(inits[n.input[0]].data_type == onnx.TensorProto.FLOAT for n in w_q)  # float weights behind Q/DQ
    x = torch.randn(64, 1, 12, 12, generator=g).numpy()
    sess = ort_session(out, "tensorrt")
    ref, q = OrtRunner(fp32).run(x), sess.run(None, {sess.get_inputs()[0].name: x})[0]
    assert np.abs(ref - q).max() < 0.1 * np.abs(ref).max() + 1e-3
    assert (ref.argmax(1) == q.argmax(1)).mean() >= 0.9
    # the ort profile is not TensorRT-ready: uint8 activations and weights
    ort_out = quantize_ptq(fp32, tmp_path / "ort.onnx", calib, profile="ort")
    assert {v.rule for v in check_tensorrt_qdq(ort_out).violations} >= {"TRT003"}
    with pytest.raises(MetaedgeError):
        quantize_ptq(fp32, tmp_path / "x.onnx", calib, profile="tensorrt", symmetric_activations=False)
