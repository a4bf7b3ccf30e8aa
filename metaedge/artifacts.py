"""The artifact directory of a run and its versioned manifest; every write is atomic.

A killed run never leaves a half-written file: each file is written to a temporary name in the
same directory, flushed, fsync'ed and renamed over the final name (rename is atomic on POSIX).
Torch-free so the device runtime can read manifests.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from metaedge.errors import MetaedgeError

__all__ = [
    "MANIFEST_NAME",
    "SCHEMA_VERSION",
    "ArtifactDir",
    "atomic_path",
    "atomic_write_bytes",
    "atomic_write_json",
    "atomic_write_text",
    "file_sha256",
    "load_manifest",
]

MANIFEST_NAME = "manifest.json"
_UMASK = os.umask(0)
os.umask(_UMASK)
SCHEMA_VERSION = 1


@contextmanager
def atomic_path(final: Path | str) -> Iterator[Path]:
    """Yield a temporary path beside ``final``; on success rename it over ``final``.

    For writers that want a path rather than bytes (``torch.save``, ``onnx.save``, TVM's
    ``export_library``). On an exception the temporary file is removed and ``final`` is untouched.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    os.chmod(tmp_path, 0o666 & ~_UMASK)  # mkstemp makes 0600; artifacts are shared like any written file
    try:
        yield tmp_path
        with open(tmp_path, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp_path, final)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def atomic_write_bytes(final: Path | str, data: bytes) -> Path:
    with atomic_path(final) as tmp:
        tmp.write_bytes(data)
    return Path(final)


def atomic_write_text(final: Path | str, text: str) -> Path:
    return atomic_write_bytes(final, text.encode("utf-8"))


def atomic_write_json(final: Path | str, obj: Any) -> Path:
    return atomic_write_text(final, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def file_sha256(path: Path | str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def load_manifest(directory: Path | str) -> dict[str, Any]:
    path = Path(directory) / MANIFEST_NAME
    if not path.is_file():
        raise MetaedgeError(f"{path} does not exist", "point --artifact at a directory written by `metaedge compress`")
    try:
        manifest = json.loads(path.read_text())
    except PermissionError as exc:
        raise MetaedgeError(f"{path} is not readable by this user", f"fix its permissions (chmod a+r {path})") from exc
    except json.JSONDecodeError as exc:
        raise MetaedgeError(f"{path} is not valid JSON ({exc.msg} at line {exc.lineno})", "re-run `metaedge compress` to rewrite it") from exc
    version = manifest.get("schema_version")
    if version != SCHEMA_VERSION:
        raise MetaedgeError(
            f"{path} has schema_version {version!r}, this metaedge reads {SCHEMA_VERSION}",
            "re-run `metaedge compress` with this version to rewrite the artifact",
        )
    return manifest


class ArtifactDir:
    """One run's output folder. The manifest is rewritten atomically after every stage, so a run
    killed half-way leaves a valid manifest describing the stages that finished."""

    def __init__(self, root: Path | str) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        path = self.root / MANIFEST_NAME
        self.manifest: dict[str, Any] = load_manifest(self.root) if path.exists() else {"schema_version": SCHEMA_VERSION}
        self.manifest["schema_version"] = SCHEMA_VERSION

    def path(self, name: str) -> Path:
        return self.root / name

    def update(self, **sections: Any) -> None:
        """Merge top-level sections into the manifest and write it."""
        for key, value in sections.items():
            if isinstance(value, dict) and isinstance(self.manifest.get(key), dict):
                self.manifest[key].update(value)
            else:
                self.manifest[key] = value
        self.save()

    def record_file(self, name: str, role: str) -> dict[str, Any]:
        """Record size and hash of a file already in the directory under ``files.<name>``."""
        p = self.path(name)
        entry = {"role": role, "bytes": p.stat().st_size, "sha256": file_sha256(p)}
        self.manifest.setdefault("files", {})[name] = entry
        self.save()
        return entry

    def save(self) -> None:
        atomic_write_json(self.root / MANIFEST_NAME, self.manifest)
