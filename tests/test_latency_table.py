"""Per-layer latency tables: one-layer ONNX models match the layer shapes, tables are measured on
the target and cached on disk, predictions sum the layers and extrapolate to unseen widths, and
make_latency_fn builds the search's budget function from a real model's LayerSpecs."""

from __future__ import annotations

import json

import numpy as np
import pytest

from metaedge.deploy.latency_table import LatencyTable, layer_onnx, make_latency_fn, measure_layers, spec_key
from metaedge.latency import TimingConfig

FAST = TimingConfig(warmup=2, repeats=10)


from metaedge.compress.cost import LayerSpec as Spec  # noqa: E402

SPECS = [
    Spec("conv", 3, 16, (3, 3), (2, 2), 1, (32, 32), (16, 16), name="stem"),
    Spec("bn", 16, 16, in_hw=(16, 16), out_hw=(16, 16)),
    Spec("act", 16, 16, in_hw=(16, 16), out_hw=(16, 16)),
    Spec("conv", 16, 16, (3, 3), (1, 1), 16, (16, 16), (16, 16), name="dw"),
    Spec("conv", 16, 32, (1, 1), (1, 1), 1, (16, 16), (16, 16), name="pw"),
    Spec("conv", 16, 32, (1, 1), (1, 1), 1, (16, 16), (16, 16), name="pw-again"),  # same shape, one entry
    Spec("pool", 32, 32, in_hw=(16, 16), out_hw=(1, 1)),
    Spec("linear", 32, 10, name="fc"),
]


@pytest.mark.parametrize("spec", [s for s in SPECS if s.kind in ("conv", "linear", "pool")], ids=lambda s: s.name or s.kind)
def test_layer_onnx_shapes(spec, tmp_path):
    from metaedge.deploy.backends.onnxruntime import OrtRunner

    shape = layer_onnx(spec, tmp_path / "l.onnx")
    out = OrtRunner(tmp_path / "l.onnx").run(np.zeros(shape, np.float32))
    if spec.kind == "linear":
        assert out.shape == (1, spec.out_channels)
    else:
        assert out.shape == (1, spec.out_channels, *spec.out_hw)


def test_spec_key_ignores_name():
    assert spec_key(SPECS[4]) == spec_key(SPECS[5])
    assert spec_key(SPECS[0]) != spec_key(SPECS[4])


def test_measure_predict_and_cache(tmp_path):
    cache = tmp_path / "layers.json"
    table = measure_layers(SPECS, "x86", timing=FAST, cache_path=cache)
    assert len(table.entries) == 5  # stem, dw, pw, pool, fc; bn/act are free (fused)
    assert all(v > 0 for v in table.entries.values())
    pred = table.predict(SPECS)
    assert pred == pytest.approx(sum(table.layer_ms(s) for s in SPECS))
    assert table.layer_ms(SPECS[1]) == 0.0
    assert len(json.loads(cache.read_text())) == 5
    # a second table comes entirely from the disk cache: no compiler call
    import metaedge.deploy.latency_table as lt

    called = []
    orig = lt.runner_for
    lt.runner_for = lambda *a, **k: called.append(1) or orig(*a, **k)
    try:
        again = measure_layers(SPECS, "x86", timing=FAST, cache_path=cache)
    finally:
        lt.runner_for = orig
    assert not called and again.entries == table.entries
    # save/load round trip
    table.save(tmp_path / "t.json")
    assert LatencyTable.load(tmp_path / "t.json").predict(SPECS) == pytest.approx(pred)


def test_unseen_widths_use_the_fit(tmp_path):
    table = LatencyTable("x86", "tvm", None)
    for c, ms in ((16, 1.0), (32, 2.0), (64, 4.0)):
        table.add(Spec("conv", c, c, (3, 3), (1, 1), 1, (8, 8), (8, 8)), ms)
    # MACs grow with c^2 here; the linear-in-MACs fit interpolates between measured points
    mid = table.layer_ms(Spec("conv", 48, 48, (3, 3), (1, 1), 1, (8, 8), (8, 8)))
    assert 2.0 < mid < 4.0
    dw = table.layer_ms(Spec("conv", 48, 48, (3, 3), (1, 1), 48, (8, 8), (8, 8)))
    assert dw > 0  # no depthwise entries: falls back to all measured layers


def test_make_latency_fn_from_model(tmp_path):
    import torch.nn as nn

    from metaedge.compress import cost

    model = nn.Sequential(
        nn.Conv2d(3, 16, 3, 2, 1), nn.BatchNorm2d(16), nn.ReLU(), nn.Conv2d(16, 32, 1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 10)
    )
    specs = cost.layer_specs(model, (1, 3, 32, 32))
    fn = make_latency_fn("x86", specs=specs, timing=FAST, cache_path=tmp_path / "c.json", width_multipliers=(0.5, 1.0))
    full = fn(specs)
    assert full > 0 and full == pytest.approx(fn.table.predict(specs))
    # a pruned variant (half the channels) was measured too and predicts no slower
    from dataclasses import replace

    half = [replace(s, out_channels=8) if s.name == "0" else s for s in specs]
    half = [replace(s, in_channels=8) if s.name == "3" else s for s in half]
    assert fn(half) <= full * 1.2


def test_cross_target_without_device_is_refused(tmp_path):
    from metaedge.errors import MetaedgeError

    with pytest.raises(MetaedgeError, match="built for rpi4 .*--device tracker-host:port/key"):
        measure_layers(SPECS[:1], "rpi4", timing=FAST, cache_path=tmp_path / "c.json")
    with pytest.raises(MetaedgeError, match="onnxruntime cannot be measured over TVM RPC"):
        measure_layers(SPECS[:1], "rpi4", device="127.0.0.1:9190/rpi4", backend="onnxruntime", cache_path=None)


def test_calibrate_scales_predictions():
    table = LatencyTable("x86", "tvm", None)
    table.add(SPECS[0], 1.0)
    table.add(SPECS[4], 0.5)
    net = [SPECS[0], SPECS[1], SPECS[4], SPECS[5]]  # stem, bn (free), pw twice
    assert table.predict(net) == pytest.approx(2.0)
    assert table.calibrate(net, 4.0) == pytest.approx(2.0)
    assert table.predict(SPECS[:1]) == pytest.approx(2.0)
