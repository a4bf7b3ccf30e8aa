"""The analytic cost model against the papers' numbers and torch's own FLOP counter."""

import pytest
import torch
import torch.nn as nn
from torch.utils.flop_counter import FlopCounterMode

from metaedge.compress.cost import count_cost, layer_specs
from metaedge.zoo import create_model


def _flop_counter_macs(model, shape):
    with FlopCounterMode(display=False) as fc:
        model.eval()(torch.zeros(shape))
    return fc.get_total_flops() // 2


def test_mobilenetv2_matches_paper():
    cost = count_cost(create_model("mobilenetv2_100", num_classes=1000), (1, 3, 224, 224))
    assert cost.macs == pytest.approx(300e6, rel=0.02)
    assert cost.params == pytest.approx(3.5e6, rel=0.02)


def test_resnet20_matches_paper():
    cost = count_cost(create_model("resnet20", num_classes=10), (1, 3, 32, 32))
    assert cost.macs == pytest.approx(41e6, rel=0.02)
    assert cost.params == pytest.approx(0.27e6, rel=0.02)


@pytest.mark.parametrize(
    "name,kw,shape",
    [
        ("mobilenetv2_100", dict(num_classes=10, in_chans=1, input_size=16), (1, 1, 16, 16)),
        ("mobilenetv2_050", dict(num_classes=10, input_size=32), (1, 3, 32, 32)),
        ("resnet56", dict(num_classes=100), (1, 3, 32, 32)),
    ],
)
def test_exactly_matches_flop_counter(name, kw, shape):
    model = create_model(name, **kw)
    assert count_cost(model, shape).macs == _flop_counter_macs(model, shape)


def test_grouped_and_depthwise_conv():
    model = nn.Sequential(
        nn.Conv2d(8, 16, 3, padding=1, groups=4), nn.Conv2d(16, 16, 3, stride=2, padding=1, groups=16), nn.Flatten(), nn.Linear(16 * 4 * 4, 5)
    )
    shape = (1, 8, 8, 8)
    cost = count_cost(model, shape)
    expected = 8 * 8 * 16 * (8 // 4) * 9 + 4 * 4 * 16 * 1 * 9 + 256 * 5
    assert cost.macs == expected == _flop_counter_macs(model, shape)
    assert cost.params == sum(p.numel() for p in model.parameters())


def test_specs_are_hashable_and_shape_keyed():
    specs = layer_specs(create_model("resnet20", num_classes=10), (1, 3, 32, 32))
    convs = [s for s in specs if s.kind == "conv"]
    assert len(convs) == 21  # 19 3x3 convs + 2 projection shortcuts
    assert len({s.shape_key() for s in convs}) < len(convs)  # repeated blocks share a shape
    assert any(s.kind == "bn" and s.elementwise_ops > 0 for s in specs)
