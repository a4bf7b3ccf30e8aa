"""Tucker low rank: exact at full rank, MACs as the cost model counts them, budget; export + parity through the CLI."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn as nn

from _prune_models import ALL, randomize_bn, tiny_data
from conftest import PRUNE_ONLY, TINY_MODEL, run_cli
from metaedge.compress.cost import count_cost
from metaedge.compress.lowrank import LowRankConfig, RankPlan, candidates, factorize, lowrank_model, plan_ranks, pruning_budget, svd_linear, tucker2_conv
from metaedge.compress.train import TrainConfig
from metaedge.config import PipelineConfig
from metaedge.errors import MetaedgeError


@pytest.mark.parametrize("stride,padding_mode", [(1, "zeros"), (2, "zeros"), (1, "reflect")])
def test_tucker_at_full_rank_is_exact(stride, padding_mode):
    torch.manual_seed(0)
    conv = nn.Conv2d(12, 20, 3, stride, 1, bias=True, padding_mode=padding_mode)
    seq = tucker2_conv(conv, 20, 12)
    x = torch.randn(2, 12, 9, 9)
    with torch.no_grad():
        assert (seq(x) - conv(x)).abs().max() < 1e-5
    assert [type(m) for m in seq] == [nn.Conv2d] * 3 and seq[0].kernel_size == (1, 1) and seq[1].kernel_size == (3, 3) and seq[2].kernel_size == (1, 1)


def test_svd_at_full_rank_is_exact():
    torch.manual_seed(0)
    lin = nn.Linear(24, 10)
    x = torch.randn(4, 24)
    with torch.no_grad():
        assert (svd_linear(lin, 10)(x) - lin(x)).abs().max() < 1e-5


def test_full_ranks_reconstruct_the_model():
    torch.manual_seed(0)
    m = randomize_bn(ALL["residual"]())
    cands = candidates(m, (1, 3, 8, 8), multiple=1)
    plan = RankPlan({c.name: c.sizes for c in cands}, 0, 0, {})
    full, errors = factorize(m, plan)
    assert errors and max(errors.values()) < 1e-5
    x = torch.randn(4, 3, 8, 8)
    with torch.no_grad():
        assert (full(x) - m(x)).abs().max() < 1e-4


def test_skips_depthwise_grouped_and_1x1():
    m = ALL["depthwise"]()
    names = {c.name for c in candidates(m, (1, 3, 8, 8), multiple=1)}
    assert not names & {"expand.0", "dw.0", "project"}  # 1x1, depthwise, 1x1
    assert "g.0" not in {c.name for c in candidates(ALL["grouped"](), (1, 3, 8, 8), multiple=1)}


@pytest.mark.parametrize("frac", [0.7, 0.4])
def test_factorized_macs_match_the_cost_model_and_meet_the_budget(frac):
    torch.manual_seed(0)
    m = randomize_bn(ALL["residual"]())
    base = count_cost(m, (1, 3, 8, 8)).macs
    plan = plan_ranks(candidates(m, (1, 3, 8, 8), multiple=4), base, frac * base)
    small, _ = factorize(m, plan)
    assert count_cost(small, (1, 3, 8, 8)).macs == plan.macs
    assert 0.98 * frac * base <= plan.macs <= frac * base
    assert plan.ranks and all(len(r) == (1 if name == "fc" else 2) for name, r in plan.ranks.items())


def test_pruning_budget_leaves_tucker_a_share():
    torch.manual_seed(0)
    m = ALL["residual"]()
    base = count_cost(m, (1, 3, 8, 8)).macs
    b = pruning_budget(m, (1, 3, 8, 8), 0.25 * base, 4)
    assert 0.25 * base < b < base
    assert pruning_budget(ALL["depthwise"](), (1, 3, 8, 8), 1000.0, 4) == 1000.0  # nothing to factorize: the pruner takes it all


def test_lowrank_model_fine_tunes_to_the_budget(tmp_path):
    torch.manual_seed(0)
    m = randomize_bn(ALL["residual"]())
    base = count_cost(m, (1, 3, 8, 8)).macs
    cfg = LowRankConfig(budget=0.5 * base, rank_multiple=4, finetune=TrainConfig(epochs=1, batch_size=32, lr=0.02, distill_alpha=0.5))
    res = lowrank_model(m, tiny_data(), cfg, tmp_path / "work", quiet=True)
    assert res.macs <= 0.5 * base and res.macs == count_cost(res.model, (1, 3, 8, 8)).macs
    assert res.summary()["ranks"] == res.ranks and res.ranks and set(res.reconstruction_error) == set(res.ranks)
    assert list((tmp_path / "work").glob("finetune-*.pt"))  # resumable like every fine-tune
    with pytest.raises(MetaedgeError, match="Tucker cannot bring"):
        lowrank_model(
            ALL["depthwise"](), tiny_data(), LowRankConfig(budget=0.3 * count_cost(ALL["depthwise"](), (1, 3, 8, 8)).macs), tmp_path / "w2", quiet=True
        )


def test_bad_lowrank_values_are_one_line_errors(tmp_path, capsys):
    from metaedge.cli.main import main

    with pytest.raises(MetaedgeError, match="unknown low-rank"):
        PipelineConfig(lowrank="cp")
    with pytest.raises(MetaedgeError, match="takes a MACs budget"):
        PipelineConfig(lowrank="tucker", prune_latency="2ms")
    assert main(["compress", "--lowrank", "tucker", "--prune-macs", "off", "--out", str(tmp_path)]) == 2  # before any training
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "needs a MACs budget" in err[0]


def test_cli_tucker_after_pruning_end_to_end(tmp_path):
    """--lowrank tucker composed with a pruner (uniform, for speed): widths and ranks in the manifest, budget met."""
    out, cache = tmp_path / "out", tmp_path / "cache"
    proc = run_cli(
        "compress",
        *TINY_MODEL,
        "--epochs",
        "1",
        "--pruner",
        "uniform",
        "--lowrank",
        "tucker",
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
    assert "pruned (uniform+tucker)" in proc.stdout
    m = json.loads((out / "manifest.json").read_text())
    pr = m["stages"]["prune"]
    assert pr["method"] == "uniform+tucker" and pr["widths"] and pr["ranks"]
    assert 0.98 * pr["budget"] <= pr["macs"] <= pr["budget"] and pr["prune_budget"] > pr["budget"]
    # the factorized model through the pipeline's one ONNX export path and parity gate
    assert pr["lowrank"]["reconstruction_error"] and m["export"]["parity"]["passed"]
