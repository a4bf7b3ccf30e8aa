"""Evolutionary search: budget respected, resumable after a kill, and the whole prune stage end to end."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
import torch

from _prune_models import ALL, tiny_data
from metaedge.compress.cost import count_cost
from metaedge.compress.graph import analyze_channels
from metaedge.compress.metapruning import PRESETS, Pricer, SearchConfig, WidthSpace, evolutionary_search, prune_model
from metaedge.errors import MetaedgeError

X = torch.randn(2, 3, 8, 8)


def _space():
    model = ALL["residual"]()
    a = analyze_channels(model, X)
    return WidthSpace(a, multiple=2), Pricer(model, a, X.shape)


def _score(widths):  # a cheap deterministic stand-in for accuracy: prefers wide early layers
    return sum((i + 1) * w for i, w in enumerate(sorted(widths.values()))) / 1000.0


CFG = SearchConfig(population=10, generations=4, parents=3, seed=1)


def test_search_respects_budget_and_logs_every_candidate(tmp_path):
    space, pricer = _space()
    budget = 0.3 * pricer.base_macs
    log = tmp_path / "s.jsonl"
    res = evolutionary_search(space, lambda w: pricer.macs(w), budget, _score, log, CFG, describe=lambda w: {"macs": pricer.macs(w)})
    lines = [json.loads(x) for x in log.read_text().splitlines()]
    assert len(lines) == res.evaluated == len(res.records) > 10
    assert all(r["macs"] <= budget for r in lines)
    assert res.cost <= budget and res.accuracy == max(r["accuracy"] for r in lines)
    assert (tmp_path / "s_state.json").exists()
    with pytest.raises(MetaedgeError, match="narrowest"):
        evolutionary_search(space, lambda w: pricer.macs(w), 10, _score, tmp_path / "t.jsonl", CFG)


def test_interrupted_search_resumes_without_reevaluation(tmp_path):
    space, pricer = _space()
    budget = 0.4 * pricer.base_macs
    cost = lambda w: pricer.macs(w)  # noqa: E731
    ref = evolutionary_search(space, cost, budget, _score, tmp_path / "ref.jsonl", CFG)
    calls = []

    def dying(widths):
        if len(calls) == 17:
            raise KeyboardInterrupt  # killed mid-search
        calls.append(widths)
        return _score(widths)

    log = tmp_path / "run.jsonl"
    with pytest.raises(KeyboardInterrupt):
        evolutionary_search(space, cost, budget, dying, log, CFG)
    with open(log, "a") as fh:
        fh.write('{"genes": [1, 2')  # a line cut by the kill
    again = []
    res = evolutionary_search(space, cost, budget, lambda w: again.append(w) or _score(w), log, CFG)
    assert res.genes == ref.genes and res.accuracy == ref.accuracy
    assert len(again) == ref.evaluated - 17  # nothing scored twice
    assert not any(w in calls for w in again)


def test_prune_model_end_to_end_and_resume(tmp_path):
    torch.manual_seed(0)
    model = ALL["residual"]()
    data = tiny_data()
    base = count_cost(model, (1, 3, 8, 8)).macs
    cfg = replace(
        PRESETS["demo"],
        budget=0.4 * base,
        channel_multiple=4,
        pruningnet_epochs=2,
        population=6,
        generations=2,
        parents=2,
        recalib_batches=2,
        finetune_epochs=1,
        batch_size=32,
    )
    res = prune_model(model, data, cfg, tmp_path, quiet=True)
    assert res.macs <= cfg.budget and res.base_macs == base
    assert res.model(X).shape == (2, 5)
    assert res.plot is not None and res.plot.exists() and res.search_log.exists()
    assert (tmp_path / "pruningnet.pt").exists() and list(tmp_path.glob("finetune-*.pt"))
    n = len(res.search_log.read_text().splitlines())
    again = prune_model(model, data, cfg, tmp_path, quiet=True)  # everything resumes: nothing recomputed
    assert again.widths == res.widths and len(res.search_log.read_text().splitlines()) == n
    assert again.seconds["pruningnet"] < res.seconds["pruningnet"] + 1


def test_latency_budget_prices_candidate_specs(tmp_path):
    """A caller's latency model sees the candidate's layer specs (no network is built)."""
    space, pricer = _space()
    seen = []

    def latency_ms(specs):
        seen.append(len(specs))
        return sum(s.macs for s in specs) * 1e-6 + 0.01 * sum(1 for s in specs if s.kind == "conv")

    cost = lambda w: latency_ms(pricer.specs(w))  # noqa: E731  (what prune_model does for budget_kind="latency")
    budget = 0.5 * cost({})
    res = evolutionary_search(space, cost, budget, _score, tmp_path / "lat.jsonl", CFG)
    assert res.cost <= budget and seen
    with pytest.raises(MetaedgeError, match="latency"):
        prune_model(ALL["residual"](), tiny_data(), replace(PRESETS["demo"], budget_kind="latency", budget=1.0), tmp_path / "w", quiet=True)
