"""Deterministic, stratified splits: the same seed gives the same indices anywhere."""

from __future__ import annotations

import numpy as np

__all__ = ["stratified_split", "stratified_subset"]


def stratified_split(labels: np.ndarray, val_frac: float, test_frac: float, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per class: shuffle with a seeded generator, cut test then val off the front.

    A part with a positive fraction gets at least one image of every class that has three or more,
    so small classes still show up in val and test. ``test_frac=0`` is the "val only" split for
    sources with an official test set (the test part is then empty).
    """
    rng = np.random.default_rng(seed)
    train, val, test = [], [], []
    for cls in np.unique(labels):
        idx = np.flatnonzero(labels == cls)
        rng.shuffle(idx)
        n_test = _count(len(idx), test_frac)
        n_val = _count(len(idx), val_frac)
        test.append(idx[:n_test])
        val.append(idx[n_test : n_test + n_val])
        train.append(idx[n_test + n_val :])
    return tuple(np.sort(np.concatenate(part)) for part in (train, val, test))  # type: ignore[return-value]


def _count(n: int, frac: float) -> int:
    k = int(round(n * frac))
    return max(k, 1) if frac > 0 and n >= 3 else k


def stratified_subset(labels: np.ndarray, idx: np.ndarray, n: int, seed: int) -> np.ndarray:
    """At most ``n`` of ``idx``, each class in proportion to its share (at least one), sorted."""
    if n >= len(idx):
        return idx
    classes, counts = np.unique(labels[idx], return_counts=True)
    # Largest-remainder quotas, every class kept, so the subset has exactly n images.
    exact = counts * n / len(idx)
    quota = np.clip(np.floor(exact).astype(np.int64), 1, counts)
    for k in np.argsort(-(exact - np.floor(exact)), kind="stable"):
        if quota.sum() >= n:
            break
        if quota[k] < counts[k]:
            quota[k] += 1
    while quota.sum() > n:  # the "at least one" floor overshot: take from the biggest quotas
        quota[np.argmax(quota)] -= 1
    rng = np.random.default_rng([seed, 1])  # its own stream: the subset never moves the val/test split
    picked = [rng.permutation(idx[labels[idx] == c])[:q] for c, q in zip(classes, quota)]
    return np.sort(np.concatenate(picked))
