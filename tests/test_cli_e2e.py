"""`metaedge compress` end to end on a tiny setting: real data, training, export, parity, latency."""
import json

from conftest import run_cli


def test_compress_foundation_chain(tmp_path):
    out, cache = tmp_path / "out", tmp_path / "cache"
    args = ["compress", "--model", "resnet20", "--width-mult", "0.25", "--input-size", "8", "--epochs", "2", "--prune-macs", "off", "--quant", "off", "--target", "none", "--repeats", "20", "--out", str(out), "--cache-dir", str(cache), "--quiet"]
    proc = run_cli(*args)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "metaedge summary" in proc.stdout and "eager / ONNX Runtime" in proc.stdout
    m = json.loads((out / "manifest.json").read_text())
    assert m["schema_version"] == 1
    assert m["model"]["input_shape"] == [1, 1, 8, 8]
    assert m["stages"]["baseline"]["accuracy"]["test"] > 0.3
    assert m["stages"]["final"]["accuracy"]["test"] == m["stages"]["baseline"]["accuracy"]["test"]
    assert m["export"]["parity"]["passed"]
    assert m["cost"]["macs"] > 0 and m["cost"]["params"] > 0
    for backend in ("torch_eager", "onnxruntime"):
        assert m["latency"][backend]["p50_ms"] > 0
    assert m["latency_ratios"]["eager_over_onnxruntime"] > 0
    assert m["files"]["model.onnx"]["bytes"] == (out / "model.onnx").stat().st_size
    assert {"torch", "onnxruntime", "python"} <= set(m["tools"])
    assert not [p for p in out.iterdir() if p.name.endswith(".tmp")]

    # Second run reuses the cached baseline instead of training again.
    proc = run_cli(*args)
    assert proc.returncode == 0, proc.stderr[-3000:]
    m2 = json.loads((out / "manifest.json").read_text())
    assert m2["stages"]["baseline"]["cached"] is True
    assert m2["stages"]["baseline"]["accuracy"] == m["stages"]["baseline"]["accuracy"]
