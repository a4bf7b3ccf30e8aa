"""Channel groups found by torch.fx on hand-built models with every coupling pattern."""

from __future__ import annotations

import warnings

import pytest
import torch

from _prune_models import ALL
from metaedge.compress.graph import analyze_channels
from metaedge.zoo import create_model

X = torch.randn(2, 3, 8, 8)


def groups_of(name: str):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        a = analyze_channels(ALL[name](), X)
    return a, [str(w.message) for w in caught if "full width" in str(w.message)]


def group_of(a, module: str) -> str:
    return a.layers[module].out_layout.groups


def test_residual_adds_couple_the_stage():
    a, warns = groups_of("residual")
    assert not warns
    stage = group_of(a, "stem.0")
    assert group_of(a, "a2.0") == stage == group_of(a, "b2.0") == group_of(a, "stem.1")  # BN follows
    assert set(a.groups[stage[0]].producers) == {"stem.0", "a2.0", "b2.0"}
    assert a.groups[stage[0]].prunable
    assert a.groups[group_of(a, "a1.0")[0]].prunable and group_of(a, "a1.0") != stage
    assert not a.groups[group_of(a, "fc")[0]].prunable  # the classifier output stays
    assert not a.groups["input"].prunable


def test_depthwise_ties_in_and_out():
    a, warns = groups_of("depthwise")
    assert not warns
    dw = a.layers["dw.0"]
    assert dw.depthwise and dw.in_layout == dw.out_layout == a.layers["expand.0"].out_layout


def test_grouped_conv_prunes_per_block():
    a, _ = groups_of("grouped")
    gin, gout = group_of(a, "c1.0")[0], group_of(a, "g.0")[0]
    assert a.groups[gin].chunks == 4 and a.groups[gout].chunks == 4
    assert a.groups[gin].prunable and a.groups[gout].prunable
    keep = a.crop_keep({gin: 16})[gin]
    assert keep.tolist() == [0, 1, 2, 3, 8, 9, 10, 11, 16, 17, 18, 19, 24, 25, 26, 27]


def test_concat_offsets_and_flatten_into_linear():
    a, warns = groups_of("concat")
    assert not warns
    left, right = group_of(a, "left.0")[0], group_of(a, "right.0")[0]
    assert a.layers["bn"].out_layout.groups == (left, right)
    assert a.layers["fuse.0"].in_layout.groups == (left, right)
    idx = a.layout_index(a.layers["fuse.0"].in_layout, {left: torch.tensor([0, 5]), right: torch.tensor([1])})
    assert idx.tolist() == [0, 5, 25]  # right starts at offset 24
    fc_in = a.layers["fc"].in_layout
    assert fc_in.unit == 16 and fc_in.groups == group_of(a, "fuse.0")
    assert a.layout_index(fc_in, {fc_in.groups[0]: torch.tensor([2])}).tolist() == list(range(32, 48))


def test_squeeze_excite_multiply_couples_gate_and_features():
    a, warns = groups_of("se")
    assert not warns
    assert group_of(a, "se2") == group_of(a, "stem.0")
    assert a.groups[group_of(a, "se1")[0]].prunable


def test_channel_shuffle_is_warned_and_left_full():
    a, warns = groups_of("shuffle")
    assert len(warns) == 1  # ONE warning listing everything
    assert "view" in warns[0] or "reshape" in warns[0]
    assert not a.groups[group_of(a, "c1.0")[0]].prunable
    assert "c1.0" in warns[0]
    assert a.groups[group_of(a, "c2.0")[0]].prunable  # after the shuffle, plain convs are fine


@pytest.mark.parametrize("name,n_prunable", [("mobilenetv2_100", 25), ("resnet20", 12)])
def test_zoo_models(name, n_prunable):
    m = create_model(name, num_classes=10, in_chans=1, input_size=16)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        a = analyze_channels(m, torch.zeros(1, 1, 16, 16))
    assert len(a.prunable) == n_prunable
