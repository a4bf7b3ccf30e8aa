"""Materialised networks really shrink, run, and cost what the analytic pricer says."""

from __future__ import annotations

import copy
import random
import warnings

import pytest
import torch

from _prune_models import ALL, randomize_bn
from metaedge.compress.cost import count_cost
from metaedge.compress.graph import analyze_channels
from metaedge.compress.metapruning import Pricer, PruningNet, WidthSpace, l1_keep, materialize
from metaedge.zoo import create_model

X = torch.randn(4, 3, 8, 8)


@pytest.mark.parametrize("name", sorted(ALL))
def test_materialized_model_shrinks_and_matches_pricer(name):
    torch.manual_seed(0)
    model = randomize_bn(ALL[name]())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        a = analyze_channels(model, X)
    space = WidthSpace(a, multiple=4)
    pricer = Pricer(model, a, X.shape)
    genes = space.sample(random.Random(1))
    widths = space.widths(genes)
    small = materialize(model, a, a.crop_keep(widths)).eval()
    assert small(X).shape == model(X).shape
    cost = count_cost(small, X.shape)
    assert cost.macs == pricer.macs(widths) < pricer.base_macs
    assert cost.params == pricer.params(widths) < pricer.base_params
    for (n, p_small), (_, p_full) in zip(small.named_parameters(), model.named_parameters()):
        assert p_small.numel() <= p_full.numel(), n
    assert sum(p.numel() for p in small.parameters()) < sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("name", ["residual", "concat", "grouped", "se", "depthwise"])
def test_pruningnet_crop_equals_materialized(name):
    """The PruningNet at some widths computes exactly what the materialised network computes."""
    torch.manual_seed(0)
    model = randomize_bn(ALL[name]())
    a = analyze_channels(model, X)
    space = WidthSpace(a, multiple=4)
    pn = PruningNet(model, a, hidden=4, init_from_model=False).eval()
    widths = space.widths(space.sample(random.Random(3)))
    pn.set_widths(widths)
    full = copy.deepcopy(model)
    full.load_state_dict(pn.full_state_dict(model))
    small = materialize(full, a, a.crop_keep(widths)).eval()
    torch.testing.assert_close(pn(X), small(X), atol=1e-5, rtol=1e-4)


def test_l1_keep_selects_largest_filters_and_full_width_is_identity():
    torch.manual_seed(0)
    model = randomize_bn(ALL["residual"]())
    a = analyze_channels(model, X)
    torch.testing.assert_close(materialize(model, a, {}).eval()(X), model(X))
    g = a.layers["a1.0"].out_layout.groups[0]
    with torch.no_grad():
        model.a1[0].weight[[3, 7]] *= 100  # make two filters dominant
    keep = l1_keep(model, a, {g: 2})
    assert keep[g].tolist() == [3, 7]
    small = materialize(model, a, keep)
    assert small.a1[0].weight.shape[0] == 2 and small.a2[0].weight.shape[1] == 2
    torch.testing.assert_close(small.a1[0].weight, model.a1[0].weight[[3, 7]])


def test_mobilenetv2_uniform_half():
    m = create_model("mobilenetv2_100", num_classes=10, in_chans=1, input_size=16).eval()
    x = torch.randn(2, 1, 16, 16)
    a = analyze_channels(m, x)
    space = WidthSpace(a)
    widths = space.uniform(0.5)
    assert all(w % 8 == 0 for w in widths.values())
    small = materialize(m, a, a.crop_keep(widths))
    assert small(x).shape == (2, 10)
    assert count_cost(small, x.shape).macs == Pricer(m, a, x.shape).macs(widths)
    assert small.features[2].conv[1][0].groups == widths[a.layers["features.2.conv.0.0"].out_layout.groups[0]]


def test_fixed_group_cannot_be_cut():
    model = ALL["residual"]()
    a = analyze_channels(model, X)
    with pytest.raises(ValueError, match="fixed"):
        materialize(model, a, {"input": [0]})
