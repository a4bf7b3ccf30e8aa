"""`metaedge compress` end to end on a tiny setting: real data, training, export, parity, latency."""

import json

from conftest import TINY_MODEL, run_cli


def test_compress_foundation_chain(tmp_path):
    out, cache = tmp_path / "out", tmp_path / "cache"
    args = [
        "compress",
        "--model",
        "resnet20",
        "--width-mult",
        "0.25",
        "--input-size",
        "8",
        "--epochs",
        "2",
        "--prune-macs",
        "off",
        "--quant",
        "off",
        "--target",
        "none",
        "--repeats",
        "20",
        "--out",
        str(out),
        "--cache-dir",
        str(cache),
        "--quiet",
    ]
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


def test_compress_full_chain_prune_quant_compile(tmp_path):
    """Prune -> int8 QAT -> QDQ export + parity -> compile for the host: every stage in the manifest."""
    out, cache = tmp_path / "out", tmp_path / "cache"
    proc = run_cli(
        "compress",
        *TINY_MODEL,
        "--epochs",
        "2",
        "--prune-macs",
        "0.5",
        "--prune-rank-check",
        "3",
        "--quant",
        "w8a8",
        "--target",
        "x86",
        "--backend",
        "onnxruntime",
        "--repeats",
        "20",
        "--out",
        str(out),
        "--cache-dir",
        str(cache),
        "--quiet",
        timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    m = json.loads((out / "manifest.json").read_text())
    base, prune, quant = m["stages"]["baseline"], m["stages"]["prune"], m["stages"]["quant"]
    assert prune["macs"] <= 0.5 * base["macs"] and prune["params"] < base["params"]
    assert quant["weight_bits"] == 8 and quant["act_bits"] == 8
    import onnx

    ops = {n.op_type for n in onnx.load(str(out / "model.onnx")).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    assert m["stages"]["final"]["accuracy"]["test"] > 0.3
    assert m["compiled"]["x86"]["chosen"] == "onnxruntime"
    assert m["compiled"]["x86"]["onnxruntime"]["latency"]["p50_ms"] > 0
    assert (out / "pruning_search.png").stat().st_size > 1000
    # --prune-rank-check: the PruningNet's rank diagnostic in the manifest and the log
    check = prune["rank_check"]  # the stage's details are merged into its section
    assert check["n"] == 3 and len(check["points"]) == 3 and len(check["interval_90"]) == 2
    assert "PruningNet rank diagnostic: Spearman" in proc.stdout + proc.stderr
