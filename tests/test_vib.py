"""VIB channel pruning: gates on channel groups, budget, fold, resume; export + parity through the CLI."""

from __future__ import annotations

import copy
import json
from dataclasses import replace

import pytest
import torch

from _prune_models import ALL, randomize_bn, tiny_data
from conftest import PRUNE_ONLY, TINY_MODEL, run_cli
from metaedge.compress.cost import count_cost
from metaedge.compress.graph import analyze_channels
from metaedge.compress.metapruning import PRESETS, WidthSpace, materialize
from metaedge.compress.vib import ChannelGates, VIBConfig, consumers, fold_gates, gated, keep_by_information, vib_prune
from metaedge.config import PipelineConfig
from metaedge.errors import MetaedgeError


def _gates(name: str):
    torch.manual_seed(0)
    m = randomize_bn(ALL[name]())
    x = torch.randn(6, 3, 8, 8)
    a = analyze_channels(m, x, warn=False)
    space = WidthSpace(a, multiple=4)
    return m, x, a, space, ChannelGates(a, space.groups)


@pytest.mark.parametrize("name", ["residual", "concat"])
def test_gates_follow_channel_groups(name):
    """One gate vector per group, on every consumer of it: the residual stage's convs and the fc all
    read the stem group's gates; the concat's fuse conv reads left's then right's."""
    m, x, a, space, gates = _gates(name)
    cons = consumers(a, space.groups)
    if name == "residual":
        stem = next(g for g in space.groups if "stem" in g)
        assert set(a.groups[stem].producers) >= {"stem.0", "a2.0", "b2.0"}  # residual-coupled
        readers = {n for n, lay in cons.items() if stem in lay.groups}
        assert readers == {"a1.0", "b1.0", "fc"}
    else:
        lay = cons["fuse.0"]
        assert lay.groups == (a.layers["left.0"].out_layout.groups[0], a.layers["right.0"].out_layout.groups[0])
        assert cons["fc"].unit == 16  # flatten of C x 4 x 4: each channel's gate repeats over its 16 features
        assert len(gates.index(cons["fc"])) == 32 * 16
    gates.train()
    with gated(m, gates):
        y = m(x)  # sampled gates, [batch, channels] per consumer: shapes agree everywhere
    assert y.shape == (6, 5) and torch.isfinite(y).all()
    assert torch.allclose(m(x), m(x))  # hooks gone


@pytest.mark.parametrize("name", ["residual", "concat"])
def test_zero_gate_is_the_channel_removed_and_fold_is_exact(name):
    m, x, a, space, gates = _gates(name)
    with torch.no_grad():
        gates.mu.uniform_(0.5, 1.5)
    keep = {}
    for g in space.groups:  # close every other channel of every gated group
        off, size = gates.offsets[g], a.groups[g].size
        with torch.no_grad():
            gates.mu[off + 1 : off + size : 2] = 0.0
        keep[g] = torch.arange(0, size, 2)
    gates.eval()
    with torch.no_grad(), gated(m, gates):
        y_gated = m(x)
    folded = fold_gates(copy.deepcopy(m), gates)
    with torch.no_grad():
        assert torch.allclose(folded(x), y_gated, atol=1e-5)
        small = materialize(folded, a, keep).eval()
        assert torch.allclose(small(x), y_gated, atol=1e-5)
    assert count_cost(small, (1, 3, 8, 8)).macs < count_cost(m, (1, 3, 8, 8)).macs


def test_keep_by_information_fills_the_budget_most_informative_first():
    m, x, a, space, gates = _gates("residual")
    scores = {g: torch.randn(a.groups[g].size, generator=torch.Generator().manual_seed(i)) for i, g in enumerate(space.groups)}
    from metaedge.compress.metapruning import Pricer

    pricer = Pricer(m, a, (1, 3, 8, 8))
    budget = 0.5 * pricer.base_macs
    widths, keep = keep_by_information(space, lambda w: float(pricer.macs(w)), budget, scores)
    assert 0.9 * budget <= pricer.macs(widths) <= budget
    for g, idx in keep.items():
        assert len(idx) == widths[g]
        dropped = torch.ones(a.groups[g].size, dtype=torch.bool)
        dropped[idx] = False
        assert scores[g][idx].min() >= scores[g][dropped].max()  # within a group: strictly by score


@pytest.fixture(scope="module")
def vib_result(tmp_path_factory):
    torch.manual_seed(0)
    m = randomize_bn(ALL["residual"]())
    base = count_cost(m, (1, 3, 8, 8)).macs
    cfg = replace(PRESETS["demo"], budget=0.4 * base, channel_multiple=1, finetune_epochs=1, recalib_batches=2, batch_size=32)
    work = tmp_path_factory.mktemp("vib")
    return base, vib_prune(m, tiny_data(), cfg, VIBConfig(epochs=1), work, quiet=True), (m, cfg, work)


def test_vib_rerun_resumes_from_its_checkpoints(vib_result):
    _, res, (m, cfg, work) = vib_result
    assert (work / "vib_gates.pt").exists()
    again = vib_prune(m, tiny_data(), cfg, VIBConfig(epochs=1), work, quiet=True)
    assert again.widths == res.widths and again.details["gate_history"] == res.details["gate_history"]
    with pytest.raises(MetaedgeError, match="other VIB settings"):
        vib_prune(m, tiny_data(), cfg, VIBConfig(epochs=1, gamma=0.5), work, quiet=True)


def test_vib_meets_the_macs_budget(vib_result):
    base, res, _ = vib_result
    budget = 0.4 * base
    # the greedy fill stops when no single step fits; this toy's groups are ~13 channels, so one step is ~3% of a
    # group's MACs (a 31-ratio grid lands on the same widths, tried): every pruner's band is 95-100% of the budget
    assert 0.95 * budget <= res.macs <= budget
    assert res.macs == count_cost(res.model, (1, 3, 8, 8)).macs
    assert res.summary()["budget_use"] == pytest.approx(res.macs / budget)
    assert res.method == "vib" and res.details["gate_history"][0]["gated"] > 0
    assert res.details["vib"]["budget_control"] and res.details["gate_history"][0]["gamma"] != res.details["vib"]["gamma"]


def test_bad_pruner_values_are_one_line_errors(tmp_path):
    with pytest.raises(MetaedgeError, match="unknown pruner"):
        PipelineConfig(pruner="magic")
    with pytest.raises(MetaedgeError, match="nothing to spend the budget on"):
        PipelineConfig(pruner="none")
    with pytest.raises(MetaedgeError, match="VIB gamma"):
        VIBConfig(gamma=-1, budget_control=False)
    with pytest.raises(MetaedgeError, match="VIB budget control"):
        VIBConfig(gamma=0)
    proc = run_cli("compress", "--pruner", "magic", "--out", str(tmp_path))
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1 and "invalid choice" in proc.stderr


def test_cli_vib_end_to_end(tmp_path):
    out, cache = tmp_path / "out", tmp_path / "cache"
    proc = run_cli(
        "compress",
        *TINY_MODEL,
        "--epochs",
        "1",
        "--pruner",
        "vib",
        "--prune-macs",
        "0.5",
        *PRUNE_ONLY,
        "--out",
        str(out),
        "--cache-dir",
        str(cache),
        "--quiet",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "pruned (vib)" in proc.stdout
    m = json.loads((out / "manifest.json").read_text())
    pr = m["stages"]["prune"]
    assert pr["method"] == "vib" and pr["macs"] <= pr["budget"] and pr["budget_use"] > 0.9
    assert pr["widths"] and pr["gate_history"] and m["cost"]["macs"] == pr["macs"]
    assert m["export"]["parity"]["passed"]  # the VIB model through the pipeline's one ONNX export path and parity gate
