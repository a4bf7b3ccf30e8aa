"""The accuracy-latency frontier of a sweep: one row per point read from its manifest, the Pareto
front, and the three views of it (CSV, PNG, terminal table).

The latency axis is the measured p50 of the backend the pipeline chose for the frontier target
(the first ``--target``), the number a user deploys with; a point with no measurement there (a
cross-compiled target without ``--device``) falls back to ONNX Runtime on this machine, and the
row says which it is.
"""

from __future__ import annotations

import csv
import io
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

from metaedge.artifacts import atomic_path, atomic_write_text
from metaedge.errors import MetaedgeError

__all__ = ["FrontierRow", "frontier_table", "pareto_front", "plot_frontier", "point_row", "write_csv"]


@dataclass(frozen=True)
class FrontierRow:
    point: str
    series: str
    pruner: str
    budget: str
    quant: str
    test_acc: float
    latency_ms: float
    latency_source: str  # "<target>/<backend> (<where>)" or "onnxruntime (local, fallback)"
    macs: int
    params: int
    onnx_bytes: int
    pareto: bool = False


def _chosen_latency(manifest: dict[str, Any], target: str | None) -> tuple[float, str]:
    section = (manifest.get("compiled") or {}).get(target or "", {})
    chosen = section.get("chosen")
    entry = section.get(chosen) if chosen else None
    p50 = ((entry or {}).get("latency") or {}).get("p50_ms")
    if p50:
        assert entry is not None  # p50 came from it
        return float(p50), f"{target}/{chosen} ({entry.get('measured_on', 'local')})"
    ort = (manifest.get("latency") or {}).get("onnxruntime", {}).get("p50_ms")
    if not ort:
        raise MetaedgeError(f"manifest of {manifest.get('config', {}).get('out')} has no latency", "re-run the sweep; the point will be recomputed")
    return float(ort), "onnxruntime (local, fallback)"


def point_row(point, manifest: dict[str, Any], target: str | None) -> FrontierRow:
    """``point`` is a plan.SweepPoint; ``manifest`` its finished artifact's manifest."""
    latency, source = _chosen_latency(manifest, target)
    cost = manifest.get("cost", {})
    return FrontierRow(
        point=point.name,
        series=point.series,
        pruner=point.pruner or "none",
        budget=point.budget or "1.0",
        quant=point.quant,
        test_acc=float(manifest["stages"]["final"]["accuracy"]["test"]),
        latency_ms=latency,
        latency_source=source,
        macs=int(cost.get("macs", 0)),
        params=int(cost.get("params", 0)),
        onnx_bytes=int(manifest.get("files", {}).get("model.onnx", {}).get("bytes", 0)),
    )


def pareto_front(rows: list[FrontierRow]) -> list[FrontierRow]:
    """The rows, each flagged ``pareto`` unless another row beats it: at least as accurate and at
    least as fast, strictly better in one."""

    def beaten(r: FrontierRow) -> bool:
        return any(o.test_acc >= r.test_acc and o.latency_ms <= r.latency_ms and (o.test_acc > r.test_acc or o.latency_ms < r.latency_ms) for o in rows)

    return [FrontierRow(**{**asdict(r), "pareto": not beaten(r)}) for r in rows]


def write_csv(rows: list[FrontierRow], path: Path | str) -> Path:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=[f.name for f in fields(FrontierRow)], lineterminator="\n")
    writer.writeheader()
    for r in sorted(rows, key=lambda r: r.latency_ms):
        writer.writerow(asdict(r))
    return atomic_write_text(path, buf.getvalue())


def plot_frontier(rows: list[FrontierRow], path: Path | str, title: str) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
    for series in sorted({r.series for r in rows} - {"baseline"}):
        pts = sorted((r for r in rows if r.series == series), key=lambda r: r.latency_ms)
        ax.plot([r.latency_ms for r in pts], [100 * r.test_acc for r in pts], "o-", alpha=0.8, label=series)
    for r in rows:
        if r.series == "baseline":
            ax.plot(r.latency_ms, 100 * r.test_acc, "k*", markersize=14, label="baseline (uncompressed)")
            ax.axhline(100 * r.test_acc, color="k", lw=0.6, ls=":")
    front = sorted((r for r in rows if r.pareto), key=lambda r: r.latency_ms)
    ax.step([r.latency_ms for r in front], [100 * r.test_acc for r in front], "k--", where="post", lw=1, alpha=0.6, label="Pareto front")
    ax.plot([r.latency_ms for r in front], [100 * r.test_acc for r in front], "o", mfc="none", mec="k", markersize=11)
    for r in rows:
        ax.annotate(r.budget if r.series != "baseline" else "", (r.latency_ms, 100 * r.test_acc), textcoords="offset points", xytext=(4, -10), fontsize=7)
    sources = sorted({r.latency_source.split(" (")[0] for r in rows})
    ax.set_xlabel(f"measured latency p50, ms ({', '.join(sources)})")
    ax.set_ylabel("test top-1 accuracy, % (deployed ONNX model)")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
    return Path(path)


def frontier_table(rows: list[FrontierRow], title: str):
    from rich.table import Table

    from metaedge.compress.cost import format_count

    t = Table(title=title)
    for col in ("point", "series", "budget", "test acc", "latency ms", "measured with", "MACs", "params", "ONNX KiB", "front"):
        t.add_column(col, justify="left" if col in ("point", "series", "measured with") else "right")
    for r in sorted(rows, key=lambda r: r.latency_ms):
        t.add_row(
            r.point,
            r.series,
            r.budget,
            f"{100 * r.test_acc:.2f}%",
            f"{r.latency_ms:.3f}",
            r.latency_source,
            format_count(r.macs),
            format_count(r.params),
            f"{r.onnx_bytes / 1024:.0f}",
            "*" if r.pareto else "",
        )
    return t
