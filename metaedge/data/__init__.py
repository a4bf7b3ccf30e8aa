"""Datasets: the embedded default (scikit-learn's digits), an image folder, or an ``.npz`` file.

Everything is loaded into memory as float tensors at the model's input size and normalized with
the training split's per-channel mean/std (recorded in the manifest so devices preprocess alike).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

from metaedge.data._split import stratified_split
from metaedge.errors import MetaedgeError

__all__ = ["DataConfig", "DataSplits", "load_data", "make_loader", "stratified_split"]


@dataclass(frozen=True)
class DataConfig:
    source: str = "digits"  # "digits", an image folder, or a .npz with arrays x, y
    input_size: int = 32
    in_chans: int | None = None  # None: the source's own channel count
    seed: int = 0
    val_frac: float = 0.15
    test_frac: float = 0.15

    def __post_init__(self) -> None:
        if self.input_size < 8:
            raise MetaedgeError(f"input size {self.input_size} is too small", "use --input-size 8 or more")
        if not (0 < self.val_frac < 0.5 and 0 < self.test_frac < 0.5):
            raise MetaedgeError("val/test fractions must lie in (0, 0.5)", "fix val_frac / test_frac in the config")


@dataclass
class DataSplits:
    name: str
    train: TensorDataset
    val: TensorDataset
    test: TensorDataset
    num_classes: int
    in_chans: int
    input_size: int
    mean: list[float]
    std: list[float]

    @property
    def input_shape(self) -> tuple[int, int, int, int]:
        return (1, self.in_chans, self.input_size, self.input_size)

    def summary(self) -> dict:
        return {
            "source": self.name,
            "num_classes": self.num_classes,
            "sizes": {"train": len(self.train), "val": len(self.val), "test": len(self.test)},
        }


def _digits() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    d = load_digits()
    return (d.images / 16.0).astype(np.float32)[:, None], d.target.astype(np.int64)  # (N,1,8,8) in [0,1]


def _image_folder(root: Path, in_chans: int | None) -> tuple[np.ndarray, np.ndarray, list[str]]:
    from PIL import Image, UnidentifiedImageError

    classes = sorted(p.name for p in root.iterdir() if p.is_dir())
    if len(classes) < 2:
        raise MetaedgeError(f"image folder {root} has {len(classes)} class subfolders", "put one subfolder per class (at least two) with images inside")
    mode = "L" if in_chans == 1 else "RGB"
    xs, ys = [], []
    size = None
    for label, cls in enumerate(classes):
        for f in sorted((root / cls).iterdir()):
            if not f.is_file():
                continue
            try:
                with Image.open(f) as im:
                    im = im.convert(mode)
                    size = size or im.size
                    arr = np.asarray(im.resize(size), dtype=np.float32) / 255.0
            except (UnidentifiedImageError, OSError) as exc:
                raise MetaedgeError(f"{f} is not a readable image ({exc})", "remove it from the image folder") from exc
            xs.append(arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1))
            ys.append(label)
    return np.stack(xs), np.asarray(ys, dtype=np.int64), classes


def _npz(path: Path) -> tuple[np.ndarray, np.ndarray]:
    try:
        with np.load(path, allow_pickle=False) as z:
            if "x" not in z or "y" not in z:
                raise MetaedgeError(f"{path} lacks array 'x' or 'y' (has {sorted(z.files)})", "save it with np.savez(path, x=images, y=labels)")
            x, y = z["x"].astype(np.float32), z["y"].astype(np.int64)
    except (ValueError, OSError) as exc:
        raise MetaedgeError(f"{path} is not a readable .npz ({exc})", "save it with np.savez(path, x=images, y=labels)") from exc
    if x.ndim == 3:
        x = x[:, None]
    elif x.ndim == 4 and x.shape[-1] in (1, 3) and x.shape[1] not in (1, 3):
        x = x.transpose(0, 3, 1, 2)  # NHWC -> NCHW
    if x.ndim != 4 or len(x) != len(y):
        raise MetaedgeError(f"{path}: x has shape {x.shape} and y {y.shape}", "x must be (N,H,W), (N,C,H,W) or (N,H,W,C) with one label per image")
    if x.max() > 1.5:
        x = x / 255.0
    return x, y


def load_data(cfg: DataConfig = DataConfig()) -> DataSplits:
    if cfg.source == "digits":
        x, y = _digits()
        name = "digits"
    else:
        path = Path(cfg.source)
        if path.is_dir():
            x, y, _ = _image_folder(path, cfg.in_chans)
        elif path.suffix == ".npz" and path.is_file():
            x, y = _npz(path)
        else:
            raise MetaedgeError(f"data source {cfg.source} is not 'digits', an image folder or an existing .npz", "pass --data digits, --data DIR or --data file.npz")
        name = str(path)
    if cfg.in_chans is not None and x.shape[1] != cfg.in_chans:
        if x.shape[1] == 1:
            x = np.repeat(x, cfg.in_chans, axis=1)
        elif cfg.in_chans == 1:
            x = x.mean(axis=1, keepdims=True)
        else:
            raise MetaedgeError(f"data has {x.shape[1]} channels, model wants {cfg.in_chans}", "set --in-chans to match the data")
    labels = np.unique(y)
    if labels[0] != 0 or labels[-1] != len(labels) - 1:
        raise MetaedgeError(f"labels must be 0..K-1, got {labels[:5]}...", "relabel y to consecutive integers from 0")
    xt = torch.from_numpy(x)
    if xt.shape[-1] != cfg.input_size or xt.shape[-2] != cfg.input_size:
        xt = F.interpolate(xt, size=(cfg.input_size, cfg.input_size), mode="bilinear", align_corners=False)
    train_idx, val_idx, test_idx = stratified_split(y, cfg.val_frac, cfg.test_frac, cfg.seed)
    mean = xt[train_idx].mean(dim=(0, 2, 3))
    std = xt[train_idx].std(dim=(0, 2, 3)).clamp_min(1e-6)
    xt = (xt - mean[None, :, None, None]) / std[None, :, None, None]
    yt = torch.from_numpy(y)
    split = lambda idx: TensorDataset(xt[idx].contiguous(), yt[idx])  # noqa: E731
    return DataSplits(name, split(train_idx), split(val_idx), split(test_idx), len(labels), xt.shape[1], cfg.input_size, mean.tolist(), std.tolist())


def make_loader(ds: TensorDataset, batch_size: int, shuffle: bool, seed: int = 0, drop_last: bool = False) -> DataLoader:
    gen = torch.Generator().manual_seed(seed)
    return DataLoader(ds, batch_size=batch_size, shuffle=shuffle, generator=gen if shuffle else None, drop_last=drop_last)
