"""Loading a data source into normalized train / val / test tensors (see the package docstring)."""

from __future__ import annotations

import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

from metaedge.data._named import NAMED_SOURCES, named_source_dir
from metaedge.data._split import stratified_split, stratified_subset
from metaedge.data._validate import check_class_counts, check_images, check_labels, integer_labels
from metaedge.data.config import DataConfig
from metaedge.data.idx import has_idx_files, load_idx_folder
from metaedge.errors import MetaedgeError

__all__ = ["DataSplits", "load_data", "make_loader"]

# Sizes used when DataConfig.input_size is None and the source's own is not wanted: digits are 8x8,
# and the demo has always trained on them upscaled to 16x16.
_DEFAULT_SIZE = {"digits": 16}


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
    return (d.images / 16.0).astype(np.float32)[:, None], d.target  # (N,1,8,8) in [0,1]


def _image_folder(root: Path, in_chans: int | None) -> tuple[np.ndarray, np.ndarray, list[str]]:
    from PIL import Image, UnidentifiedImageError

    classes = sorted(p.name for p in root.iterdir() if p.is_dir())
    if len(classes) < 2:
        raise MetaedgeError(
            f"image folder {root} has {len(classes)} class subfolders",
            "put one subfolder per class (at least two) with images inside, or the IDX files of an MNIST-format dataset",
        )
    mode = "L" if in_chans == 1 else "RGB"
    xs, ys = [], []
    size = None
    for label, cls in enumerate(classes):
        for f in sorted((root / cls).iterdir()):
            if not f.is_file():
                continue
            try:
                with Image.open(f) as src:
                    im = src.convert(mode)
                    size = size or im.size
                    arr = np.asarray(im.resize(size), dtype=np.float32) / 255.0
            except (UnidentifiedImageError, OSError) as exc:
                raise MetaedgeError(f"{f} is not a readable image ({exc})", "remove it from the image folder") from exc
            xs.append(arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1))
            ys.append(label)
    if not xs:
        raise MetaedgeError(f"image folder {root} has no images in its class subfolders", "put the images of each class in its subfolder")
    return np.stack(xs), np.asarray(ys, dtype=np.int64), classes


def _npz(path: Path) -> tuple[np.ndarray, np.ndarray]:
    try:
        with np.load(path, allow_pickle=False) as z:
            if "x" not in z or "y" not in z:
                raise MetaedgeError(f"{path} lacks array 'x' or 'y' (has {sorted(z.files)})", "save it with np.savez(path, x=images, y=labels)")
            x, y = z["x"], z["y"]  # kept in their dtype: converted to float after subsetting
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as exc:
        raise MetaedgeError(
            f"{path} is not a readable .npz ({str(exc).splitlines()[0] if str(exc) else type(exc).__name__})", "save it with np.savez(path, x=images, y=labels)"
        ) from exc
    if x.ndim == 3:
        x = x[:, None]
    elif x.ndim == 4 and x.shape[-1] in (1, 3) and x.shape[1] not in (1, 3):
        x = x.transpose(0, 3, 1, 2)  # NHWC -> NCHW
    if x.ndim != 4 or len(x) != len(y):
        raise MetaedgeError(f"{path}: x has shape {x.shape} and y {y.shape}", "x must be (N,H,W), (N,C,H,W) or (N,H,W,C) with one label per image")
    return x, y


@dataclass(frozen=True)
class _Raw:
    """A source as read: images (N,C,H,W) in their own dtype, and the official test set if any."""

    name: str
    x: np.ndarray
    y: np.ndarray
    x_test: np.ndarray | None = None
    y_test: np.ndarray | None = None
    classes: list[str] | None = None


def _read_source(cfg: DataConfig) -> _Raw:
    if cfg.source == "digits":
        return _Raw("digits", *_digits())
    if cfg.source in NAMED_SOURCES:
        return _Raw(cfg.source, *load_idx_folder(named_source_dir(cfg.source)))
    path = Path(cfg.source)
    if path.is_dir() and has_idx_files(path):
        return _Raw(str(path), *load_idx_folder(path))
    if path.is_dir():
        x, y, classes = _image_folder(path, cfg.in_chans)
        return _Raw(str(path), x, y, classes=classes)
    if path.suffix == ".npz" and path.is_file():
        return _Raw(str(path), *_npz(path))
    names = ", ".join(["digits", *NAMED_SOURCES])
    raise MetaedgeError(
        f"data source {cfg.source} is not one of {names}, a folder or an existing .npz",
        f"pass --data digits, --data {next(iter(NAMED_SOURCES))}, --data DIR or --data file.npz",
    )


def _indices(cfg: DataConfig, raw: _Raw, y: np.ndarray, num_classes: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Train/val/test indices into ``raw.x``; test is empty when the source has its own."""
    check_class_counts(y, raw.name, raw.classes)
    test_frac = 0.0 if raw.x_test is not None else cfg.test_frac
    train, val, test = stratified_split(y, cfg.val_frac, test_frac, cfg.seed)
    if cfg.train_subset is not None:
        if cfg.train_subset < 2 * num_classes:
            raise MetaedgeError(
                f"--train-subset {cfg.train_subset} is too small for {num_classes} classes", f"pass at least {2 * num_classes} (2 images per class)"
            )
        train = stratified_subset(y, train, cfg.train_subset, cfg.seed)
    return train, val, test


def _gather_float(x: np.ndarray, order: np.ndarray, extra: list[np.ndarray]) -> np.ndarray:
    """``x[order]`` followed by ``extra``, as one C-contiguous float32 array in about [0, 1].

    Written into one preallocated array and scaled in place, so only the images kept are ever
    converted (a subset of Fashion-MNIST never costs the full 188 MB) and no second copy is made.
    """
    out = np.empty((len(order) + sum(len(e) for e in extra), *x.shape[1:]), dtype=np.float32)
    for at in range(0, len(order), 4096):  # in chunks: the temporary of a fancy index stays small
        chunk = order[at : at + 4096]
        out[at : at + len(chunk)] = x[chunk]
    at = len(order)
    for e in extra:
        out[at : at + len(e)] = e
        at += len(e)
    if out.size and out.max() > 1.5:  # 0..255 pixel values
        out /= 255.0
    return out


def _size(cfg: DataConfig, name: str, hw: tuple[int, int]) -> int:
    if cfg.input_size is not None:
        return cfg.input_size
    if cfg.source in _DEFAULT_SIZE:
        return _DEFAULT_SIZE[cfg.source]
    if hw[0] != hw[1]:
        raise MetaedgeError(f"{name}: images are {hw[0]}x{hw[1]}, not square", "pass --input-size N to resize them to NxN")
    if hw[0] < 8:
        raise MetaedgeError(f"{name}: images are {hw[0]}x{hw[1]}, too small for the models", "pass --input-size 8 or more to upscale them")
    return hw[0]


def load_data(cfg: DataConfig = DataConfig()) -> DataSplits:
    raw = _read_source(cfg)
    check_images(raw.x, raw.name)
    y = check_labels(raw.y, raw.name)
    num_classes = int(y.max()) + 1
    train_idx, val_idx, test_idx = _indices(cfg, raw, y, num_classes)
    # One array in split order: each split is a contiguous slice of it (a view, no copy per split).
    order = np.concatenate([train_idx, val_idx, test_idx])
    labels = [y[order]]
    tests = []
    if raw.x_test is not None:
        check_images(raw.x_test, f"{raw.name} (test)")
        assert raw.y_test is not None  # every source gives test images and labels together
        y_test = integer_labels(raw.y_test, f"{raw.name} (test)")
        if len(y_test) and (y_test.min() < 0 or y_test.max() >= num_classes):
            raise MetaedgeError(
                f"{raw.name}: test labels span {y_test.min()}..{y_test.max()} but train has classes 0..{num_classes - 1}",
                "use train and test files of the same dataset",
            )
        tests, labels = [raw.x_test], [*labels, y_test]
    x = _gather_float(raw.x, order, tests)
    n_train, n_val = len(train_idx), len(val_idx)
    if cfg.in_chans is not None and x.shape[1] != cfg.in_chans:
        if x.shape[1] == 1:
            x = np.repeat(x, cfg.in_chans, axis=1)
        elif cfg.in_chans == 1:
            x = x.mean(axis=1, keepdims=True)
        else:
            raise MetaedgeError(f"data has {x.shape[1]} channels, model wants {cfg.in_chans}", "set --in-chans to match the data")
    size = _size(cfg, raw.name, (x.shape[-2], x.shape[-1]))
    xt = torch.from_numpy(x)
    del x  # so a resize below frees the full-size copy
    if xt.shape[-1] != size or xt.shape[-2] != size:
        xt = F.interpolate(xt, size=(size, size), mode="bilinear", align_corners=False)
    mean = xt[:n_train].mean(dim=(0, 2, 3))
    std = xt[:n_train].std(dim=(0, 2, 3)).clamp_min(1e-6)
    xt.sub_(mean[None, :, None, None]).div_(std[None, :, None, None])  # in place: xt is ours alone
    yt = torch.from_numpy(np.concatenate(labels))
    cuts = [(0, n_train), (n_train, n_train + n_val), (n_train + n_val, len(yt))]
    train, val, test = (TensorDataset(xt[a:b], yt[a:b]) for a, b in cuts)
    return DataSplits(raw.name, train, val, test, num_classes, xt.shape[1], size, mean.tolist(), std.tolist())


def make_loader(ds: TensorDataset, batch_size: int, shuffle: bool, seed: int = 0, drop_last: bool = False) -> DataLoader:
    gen = torch.Generator().manual_seed(seed)
    return DataLoader(ds, batch_size=batch_size, shuffle=shuffle, generator=gen if shuffle else None, drop_last=drop_last)
