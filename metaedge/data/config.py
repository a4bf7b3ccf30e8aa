"""What data a run uses (torch-free, so settings are checked before torch is imported)."""

from __future__ import annotations

from dataclasses import dataclass

from metaedge.errors import MetaedgeError

__all__ = ["DataConfig"]


@dataclass(frozen=True)
class DataConfig:
    source: str = "digits"  # "digits", a name in NAMED_SOURCES, a folder (IDX files or class subfolders), or a .npz with x, y
    input_size: int | None = None  # None: the source's own (square) size; 16 for digits
    in_chans: int | None = None  # None: the source's own channel count
    seed: int = 0
    val_frac: float = 0.15
    test_frac: float = 0.15  # unused by sources with an official test set
    train_subset: int | None = None  # at most this many training images (stratified), for CPU runs

    def __post_init__(self) -> None:
        if self.input_size is not None and self.input_size < 8:
            raise MetaedgeError(f"input size {self.input_size} is too small", "use --input-size 8 or more")
        if not (0 < self.val_frac < 0.5 and 0 < self.test_frac < 0.5):
            raise MetaedgeError("val/test fractions must lie in (0, 0.5)", "fix val_frac / test_frac in the config")
        if self.train_subset is not None and (isinstance(self.train_subset, bool) or not isinstance(self.train_subset, int)):
            raise MetaedgeError(f"train_subset {self.train_subset!r} is not a whole number", "pass e.g. --train-subset 2000")
        if self.train_subset is not None and self.train_subset < 4:  # two classes, two images each
            raise MetaedgeError(f"--train-subset {self.train_subset} is too small", "pass at least 2 images per class (e.g. --train-subset 2000)")
