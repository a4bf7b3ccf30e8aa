"""Named benchmark datasets installed as system packages (``--data fashion-mnist``)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from metaedge.errors import MetaedgeError

__all__ = ["NAMED_SOURCES", "NamedSource", "named_source_dir"]


@dataclass(frozen=True)
class NamedSource:
    title: str
    folder: Path  # where the Debian package puts the IDX files
    env: str  # environment variable that overrides ``folder`` (another install, tests)
    package: str

    def resolve(self) -> Path:
        return Path(os.environ.get(self.env) or self.folder)


NAMED_SOURCES: dict[str, NamedSource] = {
    "fashion-mnist": NamedSource("Fashion-MNIST", Path("/usr/share/datasets/fashion-mnist"), "METAEDGE_FASHION_MNIST_DIR", "dataset-fashion-mnist"),
}


def named_source_dir(name: str) -> Path:
    """The folder of a named dataset; a one-line error naming the package when it is absent."""
    src = NAMED_SOURCES[name]
    folder = src.resolve()
    if not folder.is_dir():
        where = f" ({src.env})" if os.environ.get(src.env) else ""
        raise MetaedgeError(f"{src.title} not found at {folder}{where}", f"install it: apt-get install {src.package} (or pass --data DIR with the IDX files)")
    return folder
