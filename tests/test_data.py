"""Embedded digits, image folder and .npz sources; deterministic stratified splits."""

import numpy as np
import pytest
import torch
from PIL import Image

from metaedge.data import DataConfig, load_data, stratified_split
from metaedge.errors import MetaedgeError


def test_digits_split_is_deterministic_and_disjoint():
    a, b = load_data(DataConfig(input_size=8, seed=3)), load_data(DataConfig(input_size=8, seed=3))
    assert torch.equal(a.train.tensors[0], b.train.tensors[0]) and torch.equal(a.test.tensors[1], b.test.tensors[1])
    c = load_data(DataConfig(input_size=8, seed=4))
    assert not torch.equal(a.test.tensors[0], c.test.tensors[0])
    assert len(a.train) + len(a.val) + len(a.test) == 1797
    assert a.num_classes == 10 and a.in_chans == 1


def test_stratified_split_keeps_class_balance():
    labels = np.repeat(np.arange(4), 100)
    tr, va, te = stratified_split(labels, 0.2, 0.1, seed=0)
    assert not (set(tr) & set(va) or set(tr) & set(te) or set(va) & set(te))
    assert all(np.sum(labels[te] == k) == 10 for k in range(4))


def test_resize_normalize_and_channels():
    d = load_data(DataConfig(input_size=16, in_chans=3))
    x = d.train.tensors[0]
    assert x.shape[1:] == (3, 16, 16)
    assert abs(float(x.mean())) < 0.05 and abs(float(x.std()) - 1) < 0.05


def test_npz_source(tmp_path):
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "d.npz", x=rng.integers(0, 255, (60, 12, 12, 3)).astype(np.uint8), y=np.repeat(np.arange(3), 20))
    d = load_data(DataConfig(source=str(tmp_path / "d.npz"), input_size=8))
    assert d.in_chans == 3 and d.num_classes == 3 and d.train.tensors[0].shape[2:] == (8, 8)


def test_npz_without_labels_is_refused(tmp_path):
    np.savez(tmp_path / "bad.npz", images=np.zeros((4, 8, 8)))
    with pytest.raises(MetaedgeError, match="lacks array"):
        load_data(DataConfig(source=str(tmp_path / "bad.npz")))


def test_image_folder_source(tmp_path):
    for k, cls in enumerate(("cat", "dog")):
        (tmp_path / cls).mkdir()
        for i in range(10):
            Image.fromarray(np.full((10, 10, 3), 10 * i + 100 * k, dtype=np.uint8)).save(tmp_path / cls / f"{i}.png")
    d = load_data(DataConfig(source=str(tmp_path), input_size=8))
    assert d.num_classes == 2 and d.in_chans == 3 and len(d.train) + len(d.val) + len(d.test) == 20


def test_missing_source_names_the_fix():
    with pytest.raises(MetaedgeError, match="--data digits"):
        load_data(DataConfig(source="/nonexistent/folder"))
