"""Latency figures: one histogram per measured series plus a p50/p90/p99 bar chart.

Input is plain data (label -> per-call samples in ms) so any measurement path (local ONNX Runtime,
TVM over RPC, HTTP against a bundle) can be plotted. Needs matplotlib (``pip install metaedge[plot]``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Mapping, Sequence

from metaedge.artifacts import atomic_path
from metaedge.errors import MetaedgeError
from metaedge.latency import summarize

__all__ = ["plot_latency"]


def plot_latency(series: Mapping[str, Sequence[float]], out: Path | str, title: str = "latency") -> Path:
    """Write a PNG: left, latency histograms (ms) per series; right, p50/p90/p99 per series."""
    series = {k: list(v) for k, v in series.items() if len(v) > 0}
    if not series:
        raise MetaedgeError("nothing to plot: no latency samples", "run the profile with --repeats >= 1")
    try:
        import matplotlib

        matplotlib.use("Agg")  # no display on servers and CI
        import matplotlib.pyplot as plt
    except ImportError as exc:
        raise MetaedgeError("--plot needs matplotlib", "pip install matplotlib (or metaedge[plot])") from exc

    fig, (ax_hist, ax_pct) = plt.subplots(1, 2, figsize=(11, 4), gridspec_kw={"width_ratios": [3, 2]})
    labels = list(series)
    lo = max(min(min(v) for v in series.values()), 1e-6)
    hi = max(max(v) for v in series.values())
    n_bins = min(40, max(8, max(len(v) for v in series.values()) // 3))
    # Shared bins; log-spaced when series differ by orders of magnitude (or a few outliers dominate).
    log = hi / lo > 20
    edges: list[float] | int  # explicit bin edges, or a bin count for one value
    if log:
        edges = [lo * (hi / lo) ** (i / n_bins) for i in range(n_bins + 1)]
        ax_hist.set_xscale("log")
    else:
        edges = [lo + (hi - lo) * i / n_bins for i in range(n_bins + 1)] if hi > lo else n_bins
    for label in labels:
        ax_hist.hist(series[label], bins=edges, alpha=0.55, label=label)
    ax_hist.set_xlabel("latency per call (ms" + (", log scale)" if log else ")"))
    ax_hist.set_ylabel("calls")
    ax_hist.set_title(f"{title}: distribution")
    ax_hist.legend(fontsize=8)

    width = 0.8 / 3
    for i, (q, name) in enumerate(((0, "p50"), (1, "p90"), (2, "p99"))):
        values = []
        for label in labels:
            s = summarize(series[label])
            values.append((s.p50_ms, s.p90_ms, s.p99_ms)[q])
        ax_pct.bar([j + (i - 1) * width for j in range(len(labels))], values, width, label=name)
    ax_pct.set_xticks(range(len(labels)))
    ax_pct.set_xticklabels(labels, rotation=20, ha="right", fontsize=8)
    ax_pct.set_ylabel("ms")
    ax_pct.set_title("percentiles")
    ax_pct.legend(fontsize=8)
    fig.tight_layout()

    out = Path(out)
    with atomic_path(out) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)
    return out
