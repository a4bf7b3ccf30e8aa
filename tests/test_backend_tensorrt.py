"""TensorRT backend as far as it runs here: availability reason, the generated on-target build
script and trtexec line (FP16, INT8 for QDQ), and the compile_for_target record. Building and
running an engine needs TensorRT's builder libraries and an NVIDIA GPU; those tests skip with the
backend's own reason when it is unavailable."""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys

import pytest

from metaedge.deploy.backends.base import get_backend
from metaedge.errors import MetaedgeError

from test_backend_tvm import export_tiny_cnn, quantize  # noqa: E402  (the same tiny CNN fixture)


@pytest.fixture(scope="module")
def tiny_onnx(tmp_path_factory):
    return export_tiny_cnn(tmp_path_factory.mktemp("trt") / "model.onnx")


def test_unavailable_reason_is_one_clear_line():
    reason = get_backend("tensorrt").unavailable_reason()
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        assert reason is not None and "\n" not in reason
        assert "TensorRT" in reason and "build_engine.py" in reason


def test_compile_writes_build_script_and_trtexec(tiny_onnx, tmp_path):
    be = get_backend("tensorrt")
    c = be.compile(tiny_onnx, "jetson-orin-nano", tmp_path)
    assert (tmp_path / "model.onnx").is_file()
    script = (tmp_path / "build_engine.py").read_text()
    ast.parse(script)  # valid Python
    for api in (
        "trt.Builder(",
        "create_network(",
        "trt.OnnxParser(",
        "create_builder_config(",
        "BuilderFlag.FP16",
        "create_timing_cache(",
        "build_serialized_network(",
    ):
        assert api in script, api
    assert "'input', (1, 3, 32, 32)" in script and "int8=False" in script
    line = c.extra["trtexec"]
    assert line == ("trtexec --onnx=model.onnx --saveEngine=model.engine --fp16 --timingCacheFile=timing.cache --shapes=input:1x3x32x32")
    sh = (tmp_path / "trtexec.sh").read_text()
    assert line in sh and os.access(tmp_path / "trtexec.sh", os.X_OK)
    meta = json.loads((tmp_path / "model.json").read_text())
    assert meta["fp16"] is True and meta["int8"] is False
    if be.unavailable_reason() is not None:
        assert c.extra["built"] is False and c.path.name == "build_engine.py"
        with pytest.raises(MetaedgeError, match="build_engine.py"):
            be.load(c)


def test_qdq_model_gets_int8(tiny_onnx, tmp_path):
    qdq = quantize(tiny_onnx, tmp_path / "qdq.onnx", "QDQ")
    c = get_backend("tensorrt").compile(qdq, "cuda", tmp_path / "out")
    assert c.extra["int8"] is True and "--fp16 --int8" in c.extra["trtexec"]
    assert "int8=True" in (tmp_path / "out" / "build_engine.py").read_text()


def test_generated_script_fails_cleanly_without_tensorrt(tiny_onnx, tmp_path):
    try:
        import tensorrt  # noqa: F401

        pytest.skip("tensorrt is importable here; the script would really build")
    except ImportError:
        pass
    get_backend("tensorrt").compile(tiny_onnx, "jetson-nano", tmp_path)
    r = subprocess.run([sys.executable, str(tmp_path / "build_engine.py")], capture_output=True, text=True, timeout=60)
    assert r.returncode != 0 and "No module named 'tensorrt'" in r.stderr


def test_compile_for_target_records_deferred_engine(tiny_onnx, tmp_path):
    from metaedge.deploy.compile import compile_for_target
    from metaedge.latency import TimingConfig

    entry = compile_for_target(tiny_onnx, "jetson-orin-nano", tmp_path, backends="tensorrt", timing=TimingConfig(1, 3))
    rec = entry["tensorrt"]
    if get_backend("tensorrt").unavailable_reason() is not None:
        assert rec["status"] == "deferred" and rec["path"] == "compiled/jetson-orin-nano/tensorrt/build_engine.py"
        assert rec["trtexec"].startswith("trtexec --onnx=model.onnx")
        assert entry["chosen"] == "tensorrt" and "nothing could be measured" in entry["chosen_by"]


def test_engine_build_and_run(tiny_onnx, tmp_path):
    be = get_backend("tensorrt")
    reason = be.unavailable_reason()
    if reason is not None:
        pytest.skip(f"TensorRT engine build not possible here: {reason}")
    import numpy as np

    from metaedge.deploy.backends.onnxruntime import OrtRunner

    c = be.compile(tiny_onnx, "cuda", tmp_path)
    assert c.path.suffix == ".engine" and (tmp_path / "timing.cache").is_file()
    x = np.random.default_rng(0).standard_normal((1, 3, 32, 32), dtype=np.float32)
    np.testing.assert_allclose(be.load(c).run(x), OrtRunner(tiny_onnx).run(x), atol=5e-2)  # fp16
