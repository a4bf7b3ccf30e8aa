"""Datasets: the embedded default (scikit-learn's digits), a named benchmark (``fashion-mnist``), a
folder of IDX files (MNIST format), an image folder, or an ``.npz`` file.

Everything is loaded into memory as float tensors at the model's input size (the source's own size
unless one is asked for) and normalized with the training split's per-channel mean/std (recorded in
the manifest so devices preprocess alike). Sources with an official test set keep it as the test
split; val is then carved from their train set.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from metaedge.data._named import NAMED_SOURCES
from metaedge.data.config import DataConfig

if TYPE_CHECKING:
    from metaedge.data._split import stratified_split, stratified_subset
    from metaedge.data.sources import DataSplits, load_data, make_loader

__all__ = ["DataConfig", "DataSplits", "NAMED_SOURCES", "load_data", "make_loader", "stratified_split", "stratified_subset"]

# The loaders need torch; DataConfig and NAMED_SOURCES do not. Loading the rest on first use lets
# the CLI check every setting before it pays for importing torch.
_LAZY = {"DataSplits": "sources", "load_data": "sources", "make_loader": "sources", "stratified_split": "_split", "stratified_subset": "_split"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(f"metaedge.data.{_LAZY[name]}"), name)
    raise AttributeError(f"module 'metaedge.data' has no attribute {name!r}")
