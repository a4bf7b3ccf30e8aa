"""Accuracy vs MACs of every evaluated candidate, the Pareto front and the chosen point (PNG)."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from metaedge.artifacts import atomic_path

__all__ = ["pareto_front", "plot_search"]


def pareto_front(points: Sequence[tuple[float, float]]) -> list[tuple[float, float]]:
    """(cost, accuracy) points not dominated by a cheaper-or-equal and more-accurate one."""
    front, best = [], -1.0
    for c, a in sorted(points, key=lambda p: (p[0], -p[1])):
        if a > best:
            front.append((c, a))
            best = a
    return front


def plot_search(records: Sequence[dict], chosen: dict, path: Path, budget_macs: float | None = None, title: str = "MetaPruning search") -> Path | None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None  # plotting is optional (metaedge[plot])
    pts = [(r["macs"] / 1e6, r["accuracy"] * 100) for r in records]
    front = pareto_front(pts)
    fig, ax = plt.subplots(figsize=(6, 4), dpi=120)
    ax.scatter([p[0] for p in pts], [p[1] for p in pts], s=10, alpha=0.5, label=f"candidates ({len(pts)})")
    ax.plot([p[0] for p in front], [p[1] for p in front], "-o", ms=3, color="tab:orange", label="Pareto front")
    ax.scatter([chosen["macs"] / 1e6], [chosen["accuracy"] * 100], marker="*", s=180, color="tab:red", zorder=5, label="chosen")
    if budget_macs:
        ax.axvline(budget_macs / 1e6, ls="--", color="grey", lw=1, label="budget")
    ax.set_xlabel("MMACs")
    ax.set_ylabel("val top-1 before fine-tune (%)")
    ax.set_title(title)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
    return path
