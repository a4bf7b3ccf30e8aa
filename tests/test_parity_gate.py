"""ONNX export and the parity gate, including an export broken on purpose that must be caught."""

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper

from metaedge.deploy.backends.onnxruntime import OrtRunner
from metaedge.deploy.export import ExportConfig, check_parity, export_onnx
from metaedge.parity import ParityError


def test_export_has_dynamic_batch_and_names(tiny_onnx):
    _, path = tiny_onnx
    proto = onnx.load(str(path))
    onnx.checker.check_model(proto)
    inp = proto.graph.input[0]
    assert inp.name == "input" and proto.graph.output[0].name == "logits"
    assert inp.type.tensor_type.shape.dim[0].dim_param  # symbolic batch
    assert not any(t.data_location == onnx.TensorProto.EXTERNAL for t in proto.graph.initializer)  # one file
    out = OrtRunner(path).run(np.zeros((5, 1, 8, 8), np.float32))
    assert out.shape == (5, 10)


def test_parity_passes_on_real_inputs(tiny_onnx, digits_small):
    model, path = tiny_onnx
    rep = check_parity(model, path, digits_small.val.tensors[0])
    assert rep.passed and rep.max_abs_err < 1e-4 and rep.top1_agreement == 1.0
    assert rep.samples == min(len(digits_small.val), ExportConfig().parity_samples)


def test_broken_export_is_caught(tiny_onnx, digits_small, tmp_path):
    model, path = tiny_onnx
    proto = onnx.load(str(path))
    # Break it the way a bad exporter pass would: flip the sign of the classifier weights.
    target = max(proto.graph.initializer, key=lambda t: int(np.prod(t.dims)) if len(t.dims) == 2 else 0)
    w = numpy_helper.to_array(target)
    target.CopyFrom(numpy_helper.from_array(-w, target.name))
    broken = tmp_path / "broken.onnx"
    onnx.save(proto, str(broken))
    with pytest.raises(ParityError, match="parity gate failed"):
        check_parity(model, broken, digits_small.val.tensors[0])
    rep = check_parity(model, broken, digits_small.val.tensors[0], raise_on_fail=False)
    assert not rep.passed and rep.max_abs_err > 1e-3


def test_tolerance_is_configurable(tiny_onnx, digits_small):
    model, path = tiny_onnx
    with pytest.raises(ParityError):
        check_parity(model, path, digits_small.val.tensors[0], ExportConfig(atol=1e-30))


def test_export_is_atomic_on_failure(tmp_path):
    class Bad(torch.nn.Module):
        def forward(self, x):
            if x.sum() > 0:  # data-dependent control flow cannot be exported
                return x
            return -x

    from metaedge.errors import MetaedgeError

    with pytest.raises(MetaedgeError, match="torch.onnx.export failed"):
        export_onnx(Bad(), torch.randn(1, 1, 4, 4), tmp_path / "bad.onnx")
    assert list(tmp_path.iterdir()) == []  # no half-written file left behind
