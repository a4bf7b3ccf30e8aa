"""Choose the deployable point of a frontier and copy its artifact folder to ``--out``."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from metaedge.artifacts import MANIFEST_NAME
from metaedge.errors import MetaedgeError
from metaedge.sweep.frontier import FrontierRow

__all__ = ["check_destination", "choose_point", "copy_point"]


def choose_point(rows: list[FrontierRow], max_ms: float | None = None, min_acc: float | None = None) -> FrontierRow:
    """The most accurate row at or under ``max_ms``, or the fastest at or over ``min_acc`` (ties: the other axis)."""
    if (max_ms is None) == (min_acc is None):
        raise ValueError("pass exactly one of max_ms and min_acc")
    if max_ms is not None:
        fits = [r for r in rows if r.latency_ms <= max_ms]
        if not fits:
            fastest = min(rows, key=lambda r: r.latency_ms)
            raise MetaedgeError(
                f"no point runs within {max_ms:.3f} ms (the fastest, {fastest.point}, takes {fastest.latency_ms:.3f} ms)",
                "raise --pick, or add smaller budgets to the sweep",
            )
        return max(fits, key=lambda r: (r.test_acc, -r.latency_ms))
    assert min_acc is not None  # exactly one of the two, checked above
    fits = [r for r in rows if r.test_acc >= min_acc]
    if not fits:
        best = max(rows, key=lambda r: r.test_acc)
        raise MetaedgeError(
            f"no point reaches {100 * min_acc:.2f}% test accuracy (the best, {best.point}, has {100 * best.test_acc:.2f}%)",
            "lower --pick-acc, or add larger budgets to the sweep",
        )
    return min(fits, key=lambda r: (r.latency_ms, -r.test_acc))


def check_destination(dest: Path | str) -> None:
    """``dest`` may only be replaced if it is an artifact folder itself (holds a manifest) or empty,
    never a file or a folder of other files."""
    dest = Path(dest)
    if dest.exists() and (not dest.is_dir() or (any(dest.iterdir()) and not (dest / MANIFEST_NAME).exists())):
        raise MetaedgeError(f"--out {dest} exists and is not an artifact folder", "pass a new or empty folder, or a previous metaedge output")


def copy_point(src: Path | str, dest: Path | str) -> Path:
    """Copy the artifact folder ``src`` to ``dest`` whole or not at all (see check_destination)."""
    src, dest = Path(src), Path(dest)
    check_destination(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", dir=dest.parent))
    try:
        shutil.copytree(src, tmp / "new")
        old = tmp / "old"
        if dest.exists():
            dest.rename(old)
        (tmp / "new").rename(dest)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return dest
