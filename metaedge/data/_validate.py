"""Cheap checks on loaded data, so a bad array fails at load with one line, not mid-training."""

from __future__ import annotations

import numpy as np

from metaedge.errors import MetaedgeError

__all__ = ["MIN_PER_CLASS", "check_class_counts", "check_images", "check_labels", "integer_labels"]

# One image each for train, val and test.
MIN_PER_CLASS = 3


def check_images(x: np.ndarray, where: str) -> None:
    if not (np.issubdtype(x.dtype, np.number) or x.dtype == np.bool_) or np.iscomplexobj(x):
        raise MetaedgeError(f"{where}: images have dtype {x.dtype}", "store images as integers or floats")
    if np.issubdtype(x.dtype, np.floating):
        bad = x.size - int(np.count_nonzero(np.isfinite(x)))
        if bad:
            raise MetaedgeError(f"{where}: {bad} image values are NaN or infinite", "clean or drop those images")


def integer_labels(y: np.ndarray, where: str) -> np.ndarray:
    """Labels as int64; float labels must hold whole numbers (never silently truncated)."""
    y = np.asarray(y)
    if y.ndim != 1:
        raise MetaedgeError(f"{where}: labels have shape {y.shape}", "give one integer label per image (a 1-D array)")
    if np.issubdtype(y.dtype, np.floating):
        if not np.all(np.isfinite(y)) or np.any(y != np.round(y)):
            sample = y[~np.isfinite(y) | (y != np.round(y))][:3]
            raise MetaedgeError(f"{where}: labels must be integers, got {sample.tolist()}", "save y as an integer array of class indices 0..K-1")
    elif not (np.issubdtype(y.dtype, np.integer) or y.dtype == np.bool_):
        raise MetaedgeError(f"{where}: labels have dtype {y.dtype}", "save y as an integer array of class indices 0..K-1")
    return y.astype(np.int64)


def check_labels(y: np.ndarray, where: str) -> np.ndarray:
    """Labels as int64 0..K-1 with at least two classes."""
    y = integer_labels(y, where)
    labels = np.unique(y)
    if len(labels) < 2:
        raise MetaedgeError(f"{where}: only {len(labels)} class ({labels.tolist()}) in the labels", "classification needs at least two classes")
    if labels[0] != 0 or labels[-1] != len(labels) - 1:
        raise MetaedgeError(f"labels must be 0..K-1, got {labels[:5]}...", "relabel y to consecutive integers from 0")
    return y


def check_class_counts(y: np.ndarray, where: str, names: list[str] | None = None, minimum: int = MIN_PER_CLASS) -> None:
    counts = np.bincount(y)
    small = np.flatnonzero(counts < minimum)
    if len(small):
        k = int(small[0])
        name = f"{k} ({names[k]!r})" if names else str(k)
        more = f" (and {len(small) - 1} more classes)" if len(small) > 1 else ""
        raise MetaedgeError(
            f"{where}: class {name} has {counts[k]} images{more}, the split needs at least {minimum} per class", f"add images of class {name} or drop it"
        )
