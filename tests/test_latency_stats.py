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
    assert len(calls) == 8 and stats.repeats == 5 and stats.p50_ms >= 0


def test_bad_timing_config():
    with pytest.raises(ValueError):
        TimingConfig(repeats=0)
