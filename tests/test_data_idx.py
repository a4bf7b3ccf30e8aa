"""IDX (MNIST-format) folders, the named Fashion-MNIST source, --train-subset, native input sizes
and load-time validation of images and labels."""

import gzip
import struct
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch

from metaedge.cli.compress import _overrides
from metaedge.cli.main import build_parser
from metaedge.config import PipelineConfig, load_config_file, merge_overrides
from metaedge.data import DataConfig, load_data
from metaedge.data.idx import find_idx_files, read_idx
from metaedge.errors import MetaedgeError

FASHION = Path("/usr/share/datasets/fashion-mnist")


def write_idx(path: Path, arr: np.ndarray) -> Path:
    """An IDX file as the MNIST distribution writes it: ubyte type code, big-endian dims, raw bytes."""
    arr = np.ascontiguousarray(arr, dtype=np.uint8)
    data = struct.pack(">BBBB", 0, 0, 0x08, arr.ndim) + struct.pack(f">{arr.ndim}I", *arr.shape) + arr.tobytes()
    with (gzip.open if path.name.endswith(".gz") else open)(path, "wb") as f:
        f.write(data)
    return path


def make_idx_folder(root: Path, gz: bool, classes: int = 3, n_train: int = 20, n_test: int = 5, size: int = 10, test_prefix: str = "t10k") -> dict:
    rng = np.random.default_rng(0)
    root.mkdir(parents=True, exist_ok=True)
    ext = ".gz" if gz else ""
    out = {}
    for split, n in (("train", n_train), (test_prefix, n_test)):
        y = np.tile(np.arange(classes), n).astype(np.uint8)
        x = rng.integers(0, 256, (len(y), size, size), dtype=np.uint8)
        write_idx(root / f"{split}-images-idx3-ubyte{ext}", x)
        write_idx(root / f"{split}-labels-idx1-ubyte{ext}", y)
        out[split] = (x, y)
    return out


@pytest.mark.parametrize("gz", [True, False])
def test_idx_folder_keeps_the_official_test_split(tmp_path, gz):
    written = make_idx_folder(tmp_path / "mnistlike", gz)
    d = load_data(DataConfig(source=str(tmp_path / "mnistlike")))
    x_test, y_test = written["t10k"]
    assert d.num_classes == 3 and d.in_chans == 1 and d.input_size == 10
    assert len(d.train) + len(d.val) == 60 and len(d.test) == 15
    assert d.train.tensors[0].shape[1:] == (1, 10, 10)
    assert torch.equal(d.test.tensors[1], torch.from_numpy(y_test.astype(np.int64)))  # the file's order, untouched
    pixels = d.test.tensors[0][:, 0] * d.std[0] + d.mean[0]
    assert torch.allclose(pixels, torch.from_numpy(x_test / 255.0).float(), atol=1e-5)
    assert sorted(Counter(d.val.tensors[1].tolist()).values()) == [3, 3, 3]  # val carved stratified from train


def test_idx_reader_checks_the_header(tmp_path):
    path = write_idx(tmp_path / "train-labels-idx1-ubyte", np.arange(5))
    assert read_idx(path, ndim=1).tolist() == [0, 1, 2, 3, 4]
    with pytest.raises(MetaedgeError, match="3"):
        read_idx(path, ndim=3)
    (tmp_path / "bad-images-idx3-ubyte").write_bytes(b"PK\x03\x04junk")
    with pytest.raises(MetaedgeError, match="not an IDX file"):
        read_idx(tmp_path / "bad-images-idx3-ubyte")
    (tmp_path / "cut").write_bytes(path.read_bytes()[:-2])
    with pytest.raises(MetaedgeError, match="truncated"):
        read_idx(tmp_path / "cut")


def test_idx_folder_names(tmp_path):
    make_idx_folder(tmp_path / "a", gz=True, test_prefix="test")
    files = find_idx_files(tmp_path / "a")
    assert files.test_images.name == "test-images-idx3-ubyte.gz" and files.train_labels.name == "train-labels-idx1-ubyte.gz"
    (tmp_path / "a" / "test-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(MetaedgeError, match="no test labels file"):
        load_data(DataConfig(source=str(tmp_path / "a")))


def test_fashion_mnist_from_env_folder(tmp_path, monkeypatch):
    make_idx_folder(tmp_path / "fm", gz=True, classes=10, size=28)
    monkeypatch.setenv("METAEDGE_FASHION_MNIST_DIR", str(tmp_path / "fm"))
    d = load_data(DataConfig(source="fashion-mnist"))
    assert d.name == "fashion-mnist" and d.num_classes == 10 and d.input_size == 28 and len(d.test) == 50


def test_missing_fashion_mnist_names_the_package(tmp_path, monkeypatch):
    monkeypatch.setenv("METAEDGE_FASHION_MNIST_DIR", str(tmp_path / "absent"))
    with pytest.raises(MetaedgeError, match="Fashion-MNIST not found at .*apt-get install dataset-fashion-mnist") as exc:
        load_data(DataConfig(source="fashion-mnist"))
    assert "\n" not in str(exc.value) and "--data DIR" in str(exc.value)


def test_train_subset_bounds_train_and_stays_stratified(tmp_path):
    make_idx_folder(tmp_path / "d", gz=False, classes=4, n_train=50)
    full = load_data(DataConfig(source=str(tmp_path / "d")))
    sub = load_data(DataConfig(source=str(tmp_path / "d"), train_subset=40))
    assert len(sub.train) == 40 and Counter(sub.train.tensors[1].tolist()) == {k: 10 for k in range(4)}
    assert torch.equal(sub.val.tensors[1], full.val.tensors[1]) and len(sub.test) == len(full.test)  # val is carved first
    assert len(load_data(DataConfig(source=str(tmp_path / "d"), train_subset=10_000)).train) == len(full.train)
    with pytest.raises(MetaedgeError, match="too small for 4 classes"):
        load_data(DataConfig(source=str(tmp_path / "d"), train_subset=6))
    with pytest.raises(MetaedgeError, match="too small"):
        DataConfig(train_subset=2)


def test_train_subset_flag_and_config_key(tmp_path):
    parser, _ = build_parser()
    args = parser.parse_args(["compress", "--data", "fashion-mnist", "--train-subset", "12000", "--input-size", "16"])
    cfg = merge_overrides(PipelineConfig(), _overrides(args))
    assert cfg.data == DataConfig(source="fashion-mnist", input_size=16, train_subset=12000)
    (tmp_path / "c.toml").write_text('[data]\nsource = "fashion-mnist"\ntrain_subset = 500\n')
    cfg = merge_overrides(PipelineConfig(), load_config_file(tmp_path / "c.toml"))
    assert cfg.data.train_subset == 500 and cfg.data.input_size is None
    (tmp_path / "bad.toml").write_text("[data]\ntrain_subset = 2.5\n")
    with pytest.raises(MetaedgeError, match="whole number"):
        merge_overrides(PipelineConfig(), load_config_file(tmp_path / "bad.toml"))


def test_npz_keeps_its_resolution_unless_asked(tmp_path):
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "d.npz", x=rng.integers(0, 255, (30, 28, 28)).astype(np.uint8), y=np.repeat(np.arange(3), 10))
    assert load_data(DataConfig(source=str(tmp_path / "d.npz"))).train.tensors[0].shape[2:] == (28, 28)
    d = load_data(DataConfig(source=str(tmp_path / "d.npz"), input_size=16))
    assert d.input_size == 16 and d.train.tensors[0].shape[2:] == (16, 16)
    assert PipelineConfig().data.input_size is None and load_data(PipelineConfig().data).input_size == 16  # digits demo
    np.savez(tmp_path / "wide.npz", x=np.zeros((30, 20, 28), np.float32), y=np.repeat(np.arange(3), 10))
    with pytest.raises(MetaedgeError, match="not square.*--input-size"):
        load_data(DataConfig(source=str(tmp_path / "wide.npz")))
    assert load_data(DataConfig(source=str(tmp_path / "wide.npz"), input_size=24)).input_size == 24


def _npz(tmp_path: Path, x: np.ndarray, y: np.ndarray) -> str:
    np.savez(tmp_path / "d.npz", x=x, y=y)
    return str(tmp_path / "d.npz")


def test_bad_arrays_are_refused_at_load(tmp_path):
    y = np.repeat(np.arange(3), 10)
    x = np.random.default_rng(0).random((30, 12, 12)).astype(np.float32)
    nan = x.copy()
    nan[0, 0, :2] = np.nan
    nan[1, 1, 1] = np.inf
    with pytest.raises(MetaedgeError, match="3 image values are NaN or infinite"):
        load_data(DataConfig(source=_npz(tmp_path, nan, y)))
    with pytest.raises(MetaedgeError, match="labels must be integers"):
        load_data(DataConfig(source=_npz(tmp_path, x, y + 0.5)))
    assert load_data(DataConfig(source=_npz(tmp_path, x, y.astype(np.float32)))).num_classes == 3  # whole-number floats are fine
    with pytest.raises(MetaedgeError, match="only 1 class"):
        load_data(DataConfig(source=_npz(tmp_path, x, np.zeros(30, np.int64))))
    few = y.copy()
    few[few == 2] = 1
    few[0] = 2  # class 2 has one image: it cannot appear in train, val and test
    with pytest.raises(MetaedgeError, match="class 2 has 1 images") as exc:
        load_data(DataConfig(source=_npz(tmp_path, x, few)))
    assert "\n" not in str(exc.value)


def test_small_class_in_an_image_folder_is_named(tmp_path):
    from PIL import Image

    for cls, n in (("cat", 6), ("dog", 2)):
        (tmp_path / cls).mkdir()
        for i in range(n):
            Image.fromarray(np.full((10, 10), 20 * i, dtype=np.uint8)).save(tmp_path / cls / f"{i}.png")
    with pytest.raises(MetaedgeError, match="class 1 \\('dog'\\) has 2 images"):
        load_data(DataConfig(source=str(tmp_path)))


@pytest.mark.skipif(not FASHION.is_dir(), reason=f"{FASHION} absent (Debian package dataset-fashion-mnist; tools/setup_system.sh installs it as root)")
def test_real_fashion_mnist(monkeypatch):
    monkeypatch.delenv("METAEDGE_FASHION_MNIST_DIR", raising=False)
    d = load_data(DataConfig(source="fashion-mnist", train_subset=2000))
    assert d.num_classes == 10 and len(d.test) == 10_000 and len(d.train) == 2000 and d.input_size == 28
    assert Counter(d.train.tensors[1].tolist()) == {k: 200 for k in range(10)}
