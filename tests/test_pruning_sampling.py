"""PruningNet training widths (sandwich rule in a budget band), training starts, the rank diagnostic."""

from __future__ import annotations

import math
import random
from dataclasses import replace

import pytest
import torch

from _prune_models import ALL, tiny_data
from metaedge.compress.cost import count_cost
from metaedge.compress.graph import analyze_channels
from metaedge.compress.metapruning import PRESETS, Pricer, PruningNet, WidthSpace, materialize, prune_model
from metaedge.compress.metapruning.diagnostic import rank_check, spearman, spearman_interval
from metaedge.compress.metapruning.materialize import l1_keep
from metaedge.compress.metapruning.sampling import Band, WidthSampler
from metaedge.compress.metapruning.starts import start_model
from metaedge.compress.metapruning.training import PNTrainConfig, recalib_batches, train_pruningnet
from metaedge.compress.train import TrainConfig
from metaedge.errors import MetaedgeError

X = torch.randn(2, 3, 8, 8)


def _setup(name: str = "residual"):
    torch.manual_seed(0)
    model = ALL[name]().eval()
    a = analyze_channels(model, X)
    space = WidthSpace(a, multiple=4)
    pricer = Pricer(model, a, (1, 3, 8, 8))
    return model, a, space, pricer


@pytest.mark.parametrize("name", sorted(ALL))
def test_fast_macs_equal_the_layer_specs(name):
    _, _, space, pricer = _setup(name)
    rng = random.Random(0)
    for _ in range(30):
        w = space.widths(space.sample(rng))
        assert pricer.macs(w) == sum(s.macs for s in pricer.specs(w))


def test_sandwich_sampler_stays_in_band():
    _, _, space, pricer = _setup()
    cost = lambda w: float(pricer.macs(w))  # noqa: E731
    band = Band.around([0.3 * pricer.base_macs, 0.6 * pricer.base_macs])
    sampler = WidthSampler(space, cost, band, random_widths=3, largest="band")
    rng = random.Random(1)
    seen_costs = []
    for _ in range(40):
        widths = sampler(rng)
        assert len(widths) == 5
        assert widths[0] == sampler.largest and cost(widths[0]) <= band.hi  # the band's top: the in-place teacher
        assert band.lo * 0.9 <= cost(widths[1]) <= band.hi  # smallest in-band: uniform widths at the band's edge
        for w in widths[2:]:
            assert cost(w) <= band.hi * (1 + 1e-9)
            seen_costs.append(cost(w))
    # the targets spread over the band instead of piling up at one end
    assert min(seen_costs) < 0.45 * pricer.base_macs < max(seen_costs)
    assert cost(sampler.largest) >= 0.8 * band.hi and cost(sampler.largest) >= cost(sampler.smallest)
    full = WidthSampler(space, cost, band, random_widths=1)  # the default teacher: every group at full width
    assert full(rng)[0] == space.widths(space.full())
    assert not WidthSampler(space, cost, band, random_widths=1, sandwich=False).sandwich
    with pytest.raises(MetaedgeError):
        Band(0.5, 0.1)


def test_sandwich_training_runs_resumes_and_reduces_loss(tmp_path):
    model, a, space, pricer = _setup()
    data = tiny_data()
    cost = lambda w: float(pricer.macs(w))  # noqa: E731
    sampler = WidthSampler(space, cost, Band.around([0.5 * pricer.base_macs]), random_widths=1)
    pn = PruningNet(model, a, hidden=8, init_from_model=False)
    cfg = PNTrainConfig(TrainConfig(epochs=6, batch_size=32, lr=0.05, weight_decay=0.0))
    hist = train_pruningnet(pn, space, data.train, cfg, checkpoint=tmp_path / "pn.pt", quiet=True, sampler=sampler).history
    assert len(hist) == 6 and hist[-1]["loss"] < hist[0]["loss"]
    again = train_pruningnet(pn, space, data.train, cfg, checkpoint=tmp_path / "pn.pt", quiet=True, sampler=sampler)
    assert again.history == hist and again.epochs_run == 0  # finished: nothing retrained


def test_starts_generated_inherited_scratch():
    model, a, space, pricer = _setup()
    data = tiny_data()
    pn = PruningNet(model, a, hidden=8, init_from_model=False).eval()
    widths = space.widths(space.smallest())
    recalib = recalib_batches(data.train, 32, 2, 0)
    gen = start_model("generated", model, a, widths, recalib, pn=pn).eval()
    inh = start_model("inherited", model, a, widths, recalib).eval()
    scr = start_model("scratch", model, a, widths, recalib, seed=3).eval()
    macs = {count_cost(m, (1, 3, 8, 8)).macs for m in (gen, inh, scr)}
    assert macs == {pricer.macs(widths)}
    # generated: the PruningNet's weights for these widths (BN re-estimated on the same batches)
    pn.set_widths(widths)
    name = next(n for n, m in gen.named_modules() if isinstance(m, torch.nn.Conv2d))
    torch.testing.assert_close(dict(gen.named_modules())[name].weight, pn.gen_layers()[name].cropped()[0])
    ref = materialize(model, a, a.crop_keep(widths))
    torch.testing.assert_close(dict(inh.named_modules())[name].weight, dict(ref.named_modules())[name].weight)
    assert not torch.allclose(dict(scr.named_modules())[name].weight, dict(ref.named_modules())[name].weight)
    # l1: the channels of largest filter L1 norm, exactly as the L1 baseline keeps them
    l1 = start_model("l1", model, a, widths, recalib).eval()
    ref_l1 = materialize(model, a, l1_keep(model, a, widths))
    torch.testing.assert_close(dict(l1.named_modules())[name].weight, dict(ref_l1.named_modules())[name].weight)
    assert count_cost(l1, (1, 3, 8, 8)).macs == pricer.macs(widths)
    with pytest.raises(ValueError):
        start_model("generated", model, a, widths, recalib)


def test_spearman():
    assert spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    assert spearman([1, 1, 1], [1, 2, 3]) != spearman([1, 1, 1], [1, 2, 3])  # nan: a constant side ranks nothing


def test_spearman_interval_resolves_with_more_structures():
    # a monotone proxy ranks perfectly in every resample
    assert spearman_interval(list(range(10)), [2 * i for i in range(10)]) == (1.0, 1.0)
    # the same noisy relation, 10 vs 80 structures: the point estimates agree, the interval narrows
    rng = random.Random(0)
    xs = [rng.random() for _ in range(80)]
    ys = [x + rng.gauss(0, 0.3) for x in xs]
    lo10, hi10 = spearman_interval(xs[:10], ys[:10])
    lo80, hi80 = spearman_interval(xs, ys)
    assert -1 <= lo10 < hi10 <= 1 and -1 <= lo80 < hi80 <= 1
    assert lo80 <= spearman(xs, ys) <= hi80
    assert hi80 - lo80 < 0.5 * (hi10 - lo10)
    assert spearman_interval(xs[:10], ys[:10]) == (lo10, hi10)  # seeded: the manifest's interval is reproducible
    assert spearman_interval(xs, ys, level=0.5)[1] - spearman_interval(xs, ys, level=0.5)[0] < hi80 - lo80
    assert all(math.isnan(v) for v in spearman_interval([1, 1, 1], [1, 2, 3]))  # a constant side: nothing to resample
    with pytest.raises(ValueError):
        spearman_interval(xs, ys, level=90)


def test_rank_check_scores_in_budget_structures():
    model, a, space, pricer = _setup()
    data = tiny_data()
    cost = lambda w: float(pricer.macs(w))  # noqa: E731
    pn = PruningNet(model, a, hidden=8, init_from_model=True)
    budget = 0.5 * pricer.base_macs
    check = rank_check(pn, model, a, space, cost, budget, data, recalib_batches(data.train, 32, 2, 0), TrainConfig(epochs=1, batch_size=32, lr=0.02), n=5)
    assert len(check.points) == 5
    assert len({tuple(sorted(p["widths"].items())) for p in check.points}) == 5  # distinct structures
    assert all(p["cost"] <= budget for p in check.points)
    # repaired towards the budget (a coarse 4-channel space cannot always reach 90% of it)
    assert sum(p["cost"] for p in check.points) / len(check.points) >= 0.75 * budget
    # both scores are top-1 accuracies on the whole val split: whole counts of its images
    n_val = len(data.val)
    assert all(abs(p[k] * n_val - round(p[k] * n_val)) < 1e-6 and 0 <= p[k] <= 1 for p in check.points for k in ("pruningnet", "trained"))
    assert check.summary()["n"] == 5
    lo, hi = check.summary()["interval_90"]
    assert (lo != lo and hi != hi) or -1 <= lo <= hi <= 1
    assert check.spearman != check.spearman or -1 <= check.spearman <= 1  # nan only when one side is constant


def test_prune_model_records_rank_check_and_start(tmp_path):
    model, _, _, pricer = _setup()
    cfg = replace(
        PRESETS["demo"],
        budget=0.4 * pricer.base_macs,
        channel_multiple=4,
        pruningnet_epochs=1,
        hidden=8,
        population=4,
        generations=1,
        parents=2,
        recalib_batches=2,
        finetune_epochs=1,
        batch_size=32,
        rank_check=3,
        start="best",
    )
    res = prune_model(model, tiny_data(), cfg, tmp_path, quiet=True)
    assert res.rank_check is not None and res.rank_check["n"] == 3
    # "best": both starts fine-tuned, the one with the better val top-1 after it kept
    assert set(res.start_accuracy) == set(res.finetuned_accuracy) == {"generated", "l1"}
    assert res.val_accuracy == res.finetuned_accuracy[res.init] == max(res.finetuned_accuracy.values())
    assert res.macs <= cfg.budget
    with pytest.raises(MetaedgeError):
        replace(cfg, start="somewhere")
    with pytest.raises(MetaedgeError):
        replace(cfg, best_starts=("generated", "elsewhere"))
