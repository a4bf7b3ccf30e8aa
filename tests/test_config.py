"""Typed configs from TOML / YAML files plus flag overrides, validated key by key."""

import re

import pytest

from metaedge.config import PipelineConfig, load_config_file, merge_overrides
from metaedge.errors import MetaedgeError


def test_toml_and_yaml_agree(tmp_path):
    (tmp_path / "a.toml").write_text('model = "resnet20"\nquant = "off"\ntargets = ["x86"]\n[train]\nepochs = 3\n[data]\ninput_size = 32\n')
    (tmp_path / "a.yaml").write_text("model: resnet20\nquant: 'off'\ntargets: [x86]\ntrain:\n  epochs: 3\ndata:\n  input_size: 32\n")
    a = merge_overrides(PipelineConfig(), load_config_file(tmp_path / "a.toml"))
    b = merge_overrides(PipelineConfig(), load_config_file(tmp_path / "a.yaml"))
    assert a == b
    assert a.model == "resnet20" and a.train.epochs == 3 and a.data.input_size == 32 and a.targets == ("x86",)
    assert not a.quant_enabled and a.prune_enabled
    assert a.train.lr == PipelineConfig().train.lr  # untouched keys keep their defaults


def test_flags_override_file(tmp_path):
    (tmp_path / "a.toml").write_text("[train]\nepochs = 3\n")
    cfg = merge_overrides(merge_overrides(PipelineConfig(), load_config_file(tmp_path / "a.toml")), {"train": {"epochs": 5}})
    assert cfg.train.epochs == 5


@pytest.mark.parametrize(
    "text,needle",
    [
        ("modle = 'x'\n", "unknown key(s) modle"),
        ("[train]\nepochs = -1\n", "bad training settings"),
        ("[data]\ninput_size = 2\n", "too small"),
        ("quantizer = 'magic'\n", "unknown quantizer"),
        ("model = \n", "not valid TOML"),
    ],
)
def test_bad_files_name_the_problem(tmp_path, text, needle):
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(MetaedgeError, match=needle.replace("(", r"\(").replace(")", r"\)")):
        merge_overrides(PipelineConfig(), load_config_file(path), where=str(path))


def test_unsupported_suffix(tmp_path):
    (tmp_path / "c.ini").write_text("x=1")
    with pytest.raises(MetaedgeError, match=r"\.toml, \.yaml"):
        load_config_file(tmp_path / "c.ini")


def test_budgets_and_quant_spec_are_typed_when_the_config_is_built():
    from metaedge.config import LatencyBudget, MacsBudget, QuantSpec

    cfg = merge_overrides(PipelineConfig(), {"prune_macs": "20M", "prune_latency": "500us", "quant": "W4A8", "targets": ["x86"]})
    assert cfg.prune_macs == MacsBudget(20e6, False, "20M") and cfg.prune_macs.resolve(1e9) == 20e6
    assert cfg.prune_latency.ms == pytest.approx(0.5) and cfg.prune_latency.resolve(99.0) == pytest.approx(0.5)
    assert cfg.quant == QuantSpec(4, 8) and str(cfg.quant) == "w4a8"
    frac = PipelineConfig(prune_macs=0.25, prune_latency="0.6", targets=("x86",))
    assert frac.prune_macs.fraction and frac.prune_macs.resolve(400) == 100 and frac.prune_latency.resolve(2.0) == pytest.approx(1.2)
    assert MacsBudget.parse("1500000").resolve(1e9) == 1.5e6  # above 1 without a suffix: an absolute count
    assert isinstance(LatencyBudget.parse("2ms"), LatencyBudget)
    # rebuilt configs (replace, merge) pass typed values through unchanged
    again = merge_overrides(cfg, {"seed": 1})
    assert again.prune_macs is cfg.prune_macs and again.quant == cfg.quant


def test_off_values_and_the_json_form():
    cfg = merge_overrides(PipelineConfig(), {"prune_macs": "off", "quant": "none", "backend": " tvm , onnxruntime "})
    assert not cfg.prune_enabled and not cfg.quant_enabled and cfg.backend == "tvm,onnxruntime"
    d = PipelineConfig().to_dict()
    assert d["prune_macs"] == "0.5" and d["quant"] == "w8a8" and d["targets"] == ["x86", "rpi4"] and d["timing"]["warmup"] == 10
    import json

    assert json.loads(json.dumps(d)) == d  # plain JSON data


@pytest.mark.parametrize(
    "overrides,needle",
    [
        ({"prune_macs": "0"}, "--prune-macs 0 leaves no MACs"),
        ({"prune_macs": 1}, "keeps the whole baseline"),
        ({"quant": "w3a8"}, "3-bit weights"),
        ({"targets": ["rpi5"]}, "unknown target 'rpi5'"),
        ({"backend": "magic"}, "unknown backend magic"),
        ({"device": "host"}, "bad device"),
        ({"timing": {"warmup": -1}}, "warmup >= 0"),
        ({"timing": {"repeats": 0}}, "repeats >= 1"),
        ({"tune_trials": "many"}, "not a trial count"),
        ({"seed": 1.5}, "not a whole number"),
    ],
)
def test_bad_settings_raise_one_line_errors(overrides, needle):
    with pytest.raises(MetaedgeError, match=re.escape(needle)):
        merge_overrides(PipelineConfig(), overrides)


def test_user_toml_target_is_accepted(tmp_path, monkeypatch):
    """Targets are checked against the registry with the user's METAEDGE_TARGETS file in it."""
    from metaedge.targets import registry

    (tmp_path / "t.toml").write_text('[targets.lab-pi]\nbased_on = "rpi4"\ndescription = "the Pi on the lab bench"\n')
    monkeypatch.setattr(registry, "_USER", {})
    monkeypatch.setenv("METAEDGE_TARGETS", str(tmp_path / "t.toml"))
    assert PipelineConfig(targets=("lab-pi",)).targets == ("lab-pi",)
    with pytest.raises(MetaedgeError, match="unknown target 'lab-pj'"):
        PipelineConfig(targets=("lab-pj",))


def test_prune_rank_check_setting_and_its_log_line():
    from metaedge.pipeline import rank_check_line

    assert PipelineConfig(prune_rank_check=10).prune_rank_check == 10
    for bad, needle in ((-1, "not a structure count"), (True, "not a structure count"), ("10", "not a structure count"), (1, "single structure")):
        with pytest.raises(MetaedgeError, match=needle):
            PipelineConfig(prune_rank_check=bad)
    with pytest.raises(MetaedgeError, match="trains none"):
        PipelineConfig(pruner="vib", prune_rank_check=10)
    good = rank_check_line({"spearman": 0.8, "interval_90": [0.61, 0.93], "n": 12})
    assert "Spearman 0.80 (90% interval 0.61..0.93) over 12 structures" in good and "--pruner uniform" not in good
    # a fitness that does not rank (or ranks nothing: a constant score) points the user at the cheap baseline
    for rho in (0.3, float("nan")):
        assert "compare with --pruner uniform" in rank_check_line({"spearman": rho, "interval_90": [-0.2, 0.7], "n": 10})
