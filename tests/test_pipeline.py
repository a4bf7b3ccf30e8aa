"""run_pipeline on a tiny setting (ResNet-20 at width 0.5, 8x8 digits, 256 training images, 1 epoch):
the latency-budget, PTQ and STE paths; the cache keys; the typed manifest against the README."""

import json
import re
from pathlib import Path

import pytest

from metaedge import manifest as mf
from metaedge.config import PipelineConfig, merge_overrides
from metaedge.pipeline import prune_cache_key, quant_cache_key, run_pipeline

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("cache")  # one baseline for every run of this module


def _tiny(tmp_path: Path, cache: Path, **overrides) -> PipelineConfig:
    base = {
        "model": "resnet20",
        "width_mult": 0.5,
        "out": str(tmp_path / "out"),
        "cache_dir": str(cache),
        "targets": (),
        "prune_macs": "off",
        "quant": "off",
        "data": {"input_size": 8, "train_subset": 256},
        "train": {"epochs": 1},
        "timing": {"repeats": 3, "warmup": 1},
    }
    return merge_overrides(PipelineConfig(), {**base, **overrides})


def _manifest(cfg: PipelineConfig) -> dict:
    return json.loads((Path(cfg.out) / "manifest.json").read_text())


def _fake_latency_table(monkeypatch):
    """A latency table priced from MACs and a baseline 'measured' at 0.5 ms, instead of TVM builds of every layer."""
    from metaedge.deploy import compile as compile_mod
    from metaedge.deploy import latency_table as lt

    def make_latency_fn(target, device=None, *, specs, width_multipliers=(1.0,), **_):
        table = lt.LatencyTable(target.name, "tvm", device, overhead_ms=0.01)
        for s in specs:
            table.add(s, 1e-3 + 1e-6 * s.macs)
        fn = lambda specs: table.predict(specs)  # noqa: E731
        fn.table = table
        return fn

    monkeypatch.setattr(lt, "make_latency_fn", make_latency_fn)
    monkeypatch.setattr(compile_mod, "compile_for_target", lambda *a, **k: {"tvm": {"latency": {"p50_ms": 0.5}}})


def test_latency_budget_path(tmp_path, cache, monkeypatch):
    _fake_latency_table(monkeypatch)
    cfg = _tiny(tmp_path, cache, prune_latency="0.6", pruner="uniform", targets=("x86",))
    monkeypatch.setattr("metaedge.pipeline._stage_compile", lambda run, onnx_path: None)  # the compile stage is deploy's, tested there
    result = run_pipeline(cfg, log=lambda m: None, quiet=True)
    pr = result.manifest.stages.prune
    assert pr.budget_kind == "latency" and pr.budget == pytest.approx(0.6 * 0.5)  # a fraction of the measured baseline
    lat = pr.latency_budget
    assert lat.target == "x86" and lat.baseline_measured_ms == 0.5 and lat.table_scale > 0
    assert lat.predicted_ms <= pr.budget and pr.budget_use == pytest.approx(lat.predicted_ms / pr.budget)
    assert pr.macs < result.manifest.stages.baseline.macs
    m = _manifest(cfg)
    assert m["stages"]["prune"]["latency_budget"]["budget_ms"] == pytest.approx(0.3) and "quant" not in m["stages"]


def test_ptq_path(tmp_path, cache):
    cfg = _tiny(tmp_path, cache, quant="w8a8", quantizer="ptq")
    result = run_pipeline(cfg, log=lambda m: None, quiet=True)
    q = result.manifest.stages.quant
    assert (q.method, q.weight_bits, q.act_bits, q.profile) == ("ptq", 8, 8, "ort")
    assert q.accuracy.val is None and q.accuracy.test == result.manifest.stages.final.accuracy.test
    parity = result.manifest.export.parity
    assert parity["reference"].startswith("fp32 PyTorch") and parity["samples"] > 0
    import onnx

    ops = {n.op_type for n in onnx.load(str(Path(cfg.out) / "model.onnx")).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    assert result.manifest.latency_ratios.fp32_over_int8_onnxruntime > 0


def test_ste_path(tmp_path, cache):
    cfg = _tiny(tmp_path, cache, quant="w4a8", quantizer="ste", quant_layer_bits="uniform")
    result = run_pipeline(cfg, log=lambda m: None, quiet=True)
    q = result.manifest.stages.quant
    assert (q.method, q.weight_bits, q.act_bits) == ("ste", 4, 8)
    assert result.manifest.export.parity["passed"] is True
    assert q.packed_bytes > 0 and q.layers and {layer["bits"] for layer in q.layers} == {4}  # "uniform": every layer at --quant's bits
    m = _manifest(cfg)
    assert m["stages"]["quant"]["method"] == "ste" and m["stages"]["quant"]["packed_bytes"] == q.packed_bytes
    assert m["cost"]["macs"] == m["stages"]["baseline"]["macs"]  # not pruned: quantization keeps the MACs


def test_metaquant_meta_net_reaches_qat(tmp_path, cache):
    """--quant-meta-net picks the meta network QAT trains, and the manifest says which."""
    from metaedge.compress.metaquant.meta import META_VARIANTS
    from metaedge.config import META_NETS

    assert META_NETS == META_VARIANTS  # the torch-free copy the CLI validates against
    cfg = _tiny(tmp_path, cache, quant="w4a8", quantizer="metaquant", quant_meta_net="multifc", quant_layer_bits="uniform")
    result = run_pipeline(cfg, log=lambda m: None, quiet=True)
    q = result.manifest.stages.quant
    assert (q.method, q.meta_net) == ("metaquant", "multifc") and result.manifest.export.parity["passed"] is True
    quant = _manifest(cfg)["stages"]["quant"]
    assert quant["meta_net"] == "multifc"
    assert quant["history"] and all(-1.0 <= h["meta_cos"] <= 1.0 + 1e-6 for h in quant["history"])  # how far it moved off STE


def test_qat_cache_key_follows_the_pruned_model():
    """Two latency budgets with the same (default) --prune-macs: different prune keys, so QAT never
    resumes from a checkpoint written for another pruned model."""
    from dataclasses import replace

    from metaedge.compress import metapruning as mp
    from metaedge.compress import metaquant as mq

    a = PipelineConfig(prune_latency="2ms", targets=("x86",))
    b = PipelineConfig(prune_latency="3ms", targets=("x86",))
    assert a.prune_macs == b.prune_macs
    preset = mp.PRESETS["demo"]
    ka = prune_cache_key("base", a, replace(preset, budget_kind="latency", budget=a.prune_latency.resolve(1.0)))
    kb = prune_cache_key("base", b, replace(preset, budget_kind="latency", budget=b.prune_latency.resolve(1.0)))
    assert ka != kb
    qcfg = mq.PRESETS["demo"]
    assert quant_cache_key(ka, qcfg) != quant_cache_key(kb, qcfg)
    assert quant_cache_key(ka, qcfg) == quant_cache_key(ka, replace(qcfg))  # same inputs, same key
    assert quant_cache_key(ka, qcfg) != quant_cache_key(ka, replace(qcfg, epochs=qcfg.epochs + 1))
    assert quant_cache_key(ka, qcfg) != quant_cache_key(
        ka, replace(qcfg, meta_variant="fc" if qcfg.meta_variant != "fc" else "multifc")
    )  # another meta network, another checkpoint
    # the same latency budget priced on another target is another pruned model
    c = PipelineConfig(prune_latency="2ms", targets=("rpi4",))
    assert prune_cache_key("base", c, replace(preset, budget_kind="latency", budget=2.0)) != ka


def test_manifest_json_rules():
    acc = mf.Accuracy(test=0.5)
    stage = mf.PruneStage("uniform", "macs", 10.0, 9, 3, acc, {"g": 4}, details={"gate_history": [1, 2]})
    out = mf.to_json(stage)
    assert out["accuracy"] == {"test": 0.5} and "budget_use" not in out and "latency_budget" not in out
    assert out["gate_history"] == [1, 2] and "details" not in out  # details merged into the section
    assert mf.to_json(mf.Accuracy(test=None, val=None)) == {"test": None}  # a required field stays, as null


def _readme_rows() -> dict[str, str]:
    text = (REPO / "README.md").read_text()
    table = text.split("`manifest.json`:", 1)[1].split("\n## ", 1)[0]
    rows = {}
    for line in table.splitlines():
        m = re.match(r"\| `([a-z_.]+)` \| (.*) \|$", line)
        if m:
            rows[m.group(1)] = m.group(2)
    return rows


SECTIONS = {
    "model": mf.ModelSection,
    "data": mf.DataSection,
    "stages.baseline": mf.BaselineStage,
    "stages.prune": mf.PruneStage,
    "stages.quant": mf.QuantStage,
    "stages.final": mf.FinalStage,
    "cost": mf.CostSection,
    "export": mf.ExportSection,
    "latency_ratios": mf.LatencyRatios,
    "run": mf.RunSection,
}


def test_readme_schema_table_matches_the_manifest_classes():
    from dataclasses import fields

    rows = _readme_rows()
    top = {f.name for f in fields(mf.Manifest)} | {"schema_version", "files"}
    assert {k.split(".")[0] for k in rows} == top, "README rows vs Manifest fields"
    assert {k.split(".", 1)[1] for k in rows if k.startswith("stages.")} == {f.name for f in fields(mf.Stages)}
    for key, cls in SECTIONS.items():
        named = set(re.findall(r"`([a-z_0-9]+)`", rows[key]))
        missing = {f.name for f in fields(cls) if f.name != "details"} - named
        assert not missing, f"README row {key} does not name {sorted(missing)}"
