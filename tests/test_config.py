"""Typed configs from TOML / YAML files plus flag overrides, validated key by key."""
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
