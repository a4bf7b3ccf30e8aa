"""The model registry and safe loading of user models."""

import pickle

import pytest
import torch
import torch.nn as nn

from metaedge.errors import MetaedgeError
from metaedge.zoo import build_model, create_model, list_models, load_state_dict_file, register_model


def test_builtin_models_registered():
    assert {"mobilenetv2_100", "mobilenetv2_050", "resnet20", "resnet56"} <= set(list_models())


@pytest.mark.parametrize("name", ["mobilenetv2_100", "resnet20"])
@pytest.mark.parametrize("in_chans,size,classes", [(1, 16, 10), (3, 32, 7)])
def test_models_take_size_channels_classes(name, in_chans, size, classes):
    model = create_model(name, num_classes=classes, in_chans=in_chans, input_size=size).eval()
    assert model(torch.zeros(2, in_chans, size, size)).shape == (2, classes)


def test_width_multiplier_shrinks_model():
    full = sum(p.numel() for p in create_model("resnet20", width_mult=1.0).parameters())
    half = sum(p.numel() for p in create_model("resnet20", width_mult=0.5).parameters())
    assert half < full / 3


def test_unknown_name_suggests_close_match():
    with pytest.raises(MetaedgeError, match="did you mean 'resnet20'"):
        create_model("resnet21")


def test_duplicate_registration_refused():
    with pytest.raises(ValueError):

        @register_model
        def resnet20():  # noqa: F811
            return nn.Identity()


def test_factory_spec_and_weights(tmp_path):
    model = build_model("torch.nn:Identity")
    assert isinstance(model, nn.Identity)
    src = create_model("resnet20", num_classes=10, width_mult=0.25)
    torch.save(src.state_dict(), tmp_path / "w.pt")
    loaded = build_model("resnet20", tmp_path / "w.pt", num_classes=10, width_mult=0.25)
    assert torch.equal(loaded.fc.weight, src.fc.weight)


def test_weights_for_other_architecture_refused(tmp_path):
    torch.save(create_model("resnet20", num_classes=10).state_dict(), tmp_path / "w.pt")
    with pytest.raises(MetaedgeError, match="do not match"):
        build_model("resnet20", tmp_path / "w.pt", num_classes=7)


class _Evil:
    def __reduce__(self):
        return (print, ("this ran while unpickling",))


def test_pickle_that_runs_code_is_refused(tmp_path):
    path = tmp_path / "evil.pt"
    with open(path, "wb") as fh:
        pickle.dump({"w": _Evil()}, fh)
    with pytest.raises(MetaedgeError, match="would run code"):
        load_state_dict_file(path)


def test_pt2_exported_program(tmp_path):
    src = create_model("resnet20", num_classes=10, width_mult=0.25).eval()
    x = torch.randn(1, 3, 32, 32)
    torch.export.save(torch.export.export(src, (x,)), tmp_path / "m.pt2")
    model = build_model(str(tmp_path / "m.pt2"))
    assert torch.allclose(model(x), src(x), atol=1e-5)
