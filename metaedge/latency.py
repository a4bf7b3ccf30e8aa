"""Latency statistics shared by every measurement path (local, RPC, HTTP runner).

Kept free of torch and onnxruntime so the torch-free device runtime can import it.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from typing import Callable, Sequence

__all__ = ["LatencyStats", "TimingConfig", "parse_latency_budget", "summarize", "time_callable"]


@dataclass(frozen=True)
class TimingConfig:
    """How to time one forward pass: warm-up calls, timed repeats, threads for the runtime."""

    warmup: int = 10
    repeats: int = 50
    threads: int = 1

    def __post_init__(self) -> None:
        if self.warmup < 0 or self.repeats < 1 or self.threads < 1:
            raise ValueError(f"bad timing config {self}: need warmup >= 0, repeats >= 1, threads >= 1")


@dataclass(frozen=True)
class LatencyStats:
    """Per-call latency in milliseconds."""

    p50_ms: float
    p90_ms: float
    p99_ms: float
    mean_ms: float
    min_ms: float
    repeats: int

    def to_dict(self) -> dict[str, float | int]:
        return asdict(self)


def _percentile(sorted_values: Sequence[float], q: float) -> float:
    # Linear interpolation between closest ranks (numpy's default), without importing numpy.
    if len(sorted_values) == 1:
        return float(sorted_values[0])
    pos = (len(sorted_values) - 1) * q
    lo = int(pos)
    hi = min(lo + 1, len(sorted_values) - 1)
    return float(sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (pos - lo))


def summarize(samples_ms: Sequence[float]) -> LatencyStats:
    if not samples_ms:
        raise ValueError("no latency samples to summarize")
    s = sorted(samples_ms)
    return LatencyStats(
        p50_ms=_percentile(s, 0.50),
        p90_ms=_percentile(s, 0.90),
        p99_ms=_percentile(s, 0.99),
        mean_ms=sum(s) / len(s),
        min_ms=s[0],
        repeats=len(s),
    )


def time_callable(fn: Callable[[], object], config: TimingConfig = TimingConfig()) -> LatencyStats:
    """Call ``fn`` ``warmup`` times untimed, then ``repeats`` times timed one by one."""
    for _ in range(config.warmup):
        fn()
    samples = []
    for _ in range(config.repeats):
        t0 = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - t0) * 1e3)
    return summarize(samples)


def parse_latency_budget(text: str, reference_ms: float | None = None) -> float:
    """ "2ms" / "500us" / "0.002s" -> milliseconds; a bare number in (0, 1] is a fraction of ``reference_ms``."""
    import re

    s = str(text).strip().lower()
    m = re.fullmatch(r"([0-9]*\.?[0-9]+(?:e[-+]?[0-9]+)?)\s*(ms|us|µs|s)?", s)
    if not m:
        raise ValueError(f"latency budget {text!r} is not like 2ms, 500us or 0.6")
    value, unit = float(m.group(1)), m.group(2)
    if value <= 0:
        raise ValueError(f"latency budget {text!r} must be positive")
    if unit is None:
        if value > 1 or reference_ms is None:
            raise ValueError(f"latency budget {text!r} has no unit; write 2ms, or a fraction in (0, 1] of the baseline")
        return value * reference_ms
    return value * {"ms": 1.0, "us": 1e-3, "µs": 1e-3, "s": 1e3}[unit]
