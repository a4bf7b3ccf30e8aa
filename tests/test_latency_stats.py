"""Percentiles and the timing loop."""

import pytest

from metaedge.latency import TimingConfig, summarize, time_callable


def test_percentiles_interpolate_like_numpy():
    import numpy as np

    samples = [5.0, 1.0, 3.0, 2.0, 4.0, 10.0, 7.0]
    s = summarize(samples)
    assert s.p50_ms == pytest.approx(np.percentile(samples, 50))
    assert s.p90_ms == pytest.approx(np.percentile(samples, 90))
    assert s.p99_ms == pytest.approx(np.percentile(samples, 99))
    assert s.min_ms == 1.0 and s.repeats == 7


def test_time_callable_counts_calls():
    calls = []
    stats = time_callable(lambda: calls.append(1), TimingConfig(warmup=3, repeats=5))
    assert len(calls) == 8 and stats.repeats == 5 and 0 <= stats.min_ms <= stats.p50_ms <= stats.p99_ms


def test_bad_timing_config():
    with pytest.raises(ValueError):
        TimingConfig(repeats=0)


@pytest.mark.parametrize("text,ref,ms", [("2ms", None, 2.0), ("500us", None, 0.5), ("0.003s", None, 3.0), ("0.6", 10.0, 6.0), ("1", 4.0, 4.0)])
def test_latency_budget_parsing(text, ref, ms):
    from metaedge.latency import parse_latency_budget

    assert parse_latency_budget(text, ref) == pytest.approx(ms)


@pytest.mark.parametrize("text", ["fast", "0", "-2ms", "3", "2 hours"])
def test_bad_latency_budget(text):
    from metaedge.latency import parse_latency_budget

    with pytest.raises(ValueError):
        parse_latency_budget(text, 5.0)


def test_latency_budget_needs_a_target():
    from metaedge.config import PipelineConfig, merge_overrides
    from metaedge.errors import MetaedgeError

    with pytest.raises(MetaedgeError, match="--target"):
        merge_overrides(PipelineConfig(), {"prune_latency": "2ms", "targets": ()})
