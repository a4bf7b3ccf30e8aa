"""Atomic writes and the versioned manifest."""

import json

import pytest

from metaedge.artifacts import MANIFEST_NAME, SCHEMA_VERSION, ArtifactDir, atomic_path, atomic_write_json, load_manifest
from metaedge.errors import MetaedgeError


def test_failed_write_leaves_old_file_and_no_temp(tmp_path):
    target = tmp_path / "model.bin"
    target.write_bytes(b"old")
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_bytes(b"half-writ")
            raise RuntimeError("killed")
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["model.bin"]


def test_manifest_updates_and_schema(tmp_path):
    art = ArtifactDir(tmp_path)
    art.update(stages={"baseline": {"accuracy": 0.9}})
    art.update(stages={"prune": {"accuracy": 0.8}})
    (tmp_path / "model.onnx").write_bytes(b"x" * 10)
    entry = art.record_file("model.onnx", "model")
    m = load_manifest(tmp_path)
    assert m["schema_version"] == SCHEMA_VERSION
    assert set(m["stages"]) == {"baseline", "prune"}
    assert m["files"]["model.onnx"] == entry and entry["bytes"] == 10


def test_foreign_schema_version_refused(tmp_path):
    atomic_write_json(tmp_path / MANIFEST_NAME, {"schema_version": 99})
    with pytest.raises(MetaedgeError, match="schema_version 99"):
        load_manifest(tmp_path)


def test_corrupt_manifest_refused(tmp_path):
    (tmp_path / MANIFEST_NAME).write_text("{not json")
    with pytest.raises(MetaedgeError, match="not valid JSON"):
        load_manifest(tmp_path)
    assert json.loads  # the error names the file and the fix rather than a traceback
