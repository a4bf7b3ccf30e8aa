"""The IDX file format of MNIST, EMNIST, KMNIST and Fashion-MNIST, read with numpy.

A file is a big-endian header -- two zero bytes, a type code, the number of dimensions, then one
uint32 per dimension -- followed by the raw array. ``*-images-idx3-ubyte`` holds (N, H, W) pixels
(magic 0x00000803), ``*-labels-idx1-ubyte`` holds N labels (magic 0x00000801); either may be
gzipped (name ending in ``.gz``). A dataset folder holds a train pair and a test pair, told apart by
a name token ``train`` or ``t10k``/``test`` (``train-images-idx3-ubyte.gz``,
``emnist-digits-test-labels-idx1-ubyte``).
"""

from __future__ import annotations

import gzip
import re
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from metaedge.errors import MetaedgeError

__all__ = ["IdxFiles", "find_idx_files", "has_idx_files", "load_idx_folder", "read_idx"]

# IDX type code -> big-endian numpy dtype.
_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
_KIND = re.compile(r"(images-idx3|labels-idx1)-ubyte(\.gz)?$")
_FIX = "use the MNIST IDX files as published (train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz, t10k-...)"


def read_idx(path: Path | str, ndim: int | None = None) -> np.ndarray:
    """One IDX file as an array (native byte order); ``ndim`` checks the header's dimension count."""
    path = Path(path)
    try:
        opener = gzip.open if path.name.endswith(".gz") else open
        with opener(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError) as exc:  # gzip.BadGzipFile is an OSError
        raise MetaedgeError(f"{path} is not readable ({exc})", _FIX) from exc
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _DTYPES:
        magic = raw[:4].hex() if len(raw) >= 4 else "none"
        raise MetaedgeError(f"{path} is not an IDX file (magic 0x{magic})", _FIX)
    dims = raw[3]
    if ndim is not None and dims != ndim:
        raise MetaedgeError(f"{path} has {dims} dimensions, expected {ndim} (magic 0x{raw[:4].hex()})", _FIX)
    header = 4 + 4 * dims
    shape = struct.unpack(f">{dims}I", raw[4:header]) if len(raw) >= header else ()
    dtype = np.dtype(_DTYPES[raw[2]])
    want = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if len(shape) != dims or len(raw) - header != want:
        raise MetaedgeError(f"{path} is truncated or padded (header says {shape}, {len(raw) - max(header, 4)} data bytes)", "download the file again")
    arr = np.frombuffer(raw, dtype=dtype, offset=header).reshape(shape)
    # uint8 (the usual case) has no byte order, so this stays a zero-copy view of the file's bytes.
    return arr if dtype.itemsize == 1 else arr.astype(dtype.newbyteorder("="))


@dataclass(frozen=True)
class IdxFiles:
    train_images: Path
    train_labels: Path
    test_images: Path
    test_labels: Path


def _split_of(name: str) -> str | None:
    tokens = set(re.split(r"[-_.]", name.lower()))
    if "train" in tokens:
        return "train"
    if tokens & {"t10k", "test"}:
        return "test"
    return None


def has_idx_files(folder: Path) -> bool:
    """Whether ``folder`` directly holds any ``*-images-idx3-ubyte`` / ``*-labels-idx1-ubyte`` file."""
    return any(p.is_file() and _KIND.search(p.name) for p in folder.iterdir())


def find_idx_files(folder: Path) -> IdxFiles:
    """The train and test image/label files in ``folder``; a plain file wins over its ``.gz``."""
    found: dict[tuple[str, str], list[Path]] = {}
    for p in sorted(folder.iterdir()):
        m = _KIND.search(p.name)
        split = _split_of(p.name) if m else None
        if not (m and split and p.is_file()):
            continue
        kind = "images" if m.group(1).startswith("images") else "labels"
        found.setdefault((split, kind), []).append(p)
    picked: dict[str, Path] = {}
    for split in ("train", "test"):
        for kind in ("images", "labels"):
            cands = found.get((split, kind), [])
            stems = {p.name.removesuffix(".gz") for p in cands}
            if not cands:
                raise MetaedgeError(
                    f"{folder} has no {split} {kind} file (*{'t10k' if split == 'test' else 'train'}*-{kind}-idx{3 if kind == 'images' else 1}-ubyte[.gz])",
                    _FIX,
                )
            if len(stems) > 1:
                raise MetaedgeError(f"{folder} has several {split} {kind} files ({', '.join(sorted(stems))})", "keep one dataset's IDX files per folder")
            picked[f"{split}_{kind}"] = min(cands, key=lambda p: p.name.endswith(".gz"))
    return IdxFiles(**picked)


def load_idx_folder(folder: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``(x_train, y_train, x_test, y_test)`` with images as (N, 1, H, W) in the files' dtype."""
    files = find_idx_files(folder)
    out = []
    for images, labels in ((files.train_images, files.train_labels), (files.test_images, files.test_labels)):
        x, y = read_idx(images, ndim=3), read_idx(labels, ndim=1)
        if len(x) != len(y):
            raise MetaedgeError(f"{images.name} has {len(x)} images but {labels.name} {len(y)} labels", "use image and label files of the same release")
        out += [x[:, None], y]
    if out[0].shape[2:] != out[2].shape[2:]:
        raise MetaedgeError(
            f"train images are {out[0].shape[2:]} but test images {out[2].shape[2:]} in {folder}", "use train and test files of the same dataset"
        )
    return out[0], out[1], out[2], out[3]
