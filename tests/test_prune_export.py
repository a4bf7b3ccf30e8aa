"""A pruned (materialised) network exports to ONNX and matches ONNX Runtime within 1e-4."""

from __future__ import annotations

import random

import pytest
import torch

from _prune_models import ALL, randomize_bn
from metaedge.compress.graph import analyze_channels
from metaedge.compress.metapruning import PruningNet, WidthSpace, l1_keep, materialize
from metaedge.zoo import create_model

pytest.importorskip("onnxruntime")
from metaedge.deploy.export import ExportConfig, check_parity, export_onnx  # noqa: E402


def _pruned(model, x, multiple=8, seed=0, l1=False):
    a = analyze_channels(model, x)
    space = WidthSpace(a, multiple=multiple)
    widths = space.widths(space.sample(random.Random(seed)))
    keep = l1_keep(model, a, widths) if l1 else a.crop_keep(widths)
    return materialize(model, a, keep).eval(), widths


def test_pruned_resnet20_exports_and_passes_parity(tmp_path):
    """ResNet-20 rather than MobileNetV2 keeps the dynamo export short; depthwise is covered below."""
    torch.manual_seed(0)
    m = randomize_bn(create_model("resnet20", num_classes=10, in_chans=1, input_size=16))
    x = torch.randn(16, 1, 16, 16)
    a = analyze_channels(m, x)
    space = WidthSpace(a, multiple=4)
    widths = space.widths(space.sample(random.Random(0)))
    # weights as the PruningNet generates them, as prune_model does
    pn = PruningNet(m, a, hidden=4)
    pn.set_widths(widths)
    full = create_model("resnet20", num_classes=10, in_chans=1, input_size=16)
    full.load_state_dict(pn.full_state_dict(m))
    small = materialize(full, a, a.crop_keep(widths)).eval()
    path = export_onnx(small, x[:1], tmp_path / "pruned.onnx")
    report = check_parity(small, path, x, ExportConfig(atol=1e-4))
    assert report.passed and report.max_abs_err <= 1e-4
    assert path.stat().st_size < 0.8 * sum(p.numel() for p in m.parameters()) * 4


@pytest.mark.parametrize("name", ["concat", "grouped", "depthwise"])
def test_pruned_small_models_export(tmp_path, name):
    torch.manual_seed(0)
    m = randomize_bn(ALL[name]())
    x = torch.randn(8, 3, 8, 8)
    small, _ = _pruned(m, x, multiple=4, l1=True)
    path = export_onnx(small, x[:1], tmp_path / f"{name}.onnx")
    assert check_parity(small, path, x, ExportConfig(atol=1e-4)).passed
