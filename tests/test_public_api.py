"""The package's public API: lazy, complete, and importable without torch."""

import importlib
import subprocess
import sys
from pathlib import Path

import metaedge

REPO = Path(__file__).resolve().parents[1]

BLOCK_TORCH = r"""
import sys
class Block:
    def find_spec(self, name, path=None, target=None):
        if name == "torch" or name.startswith("torch."):
            raise ImportError("torch is blocked in this test")
sys.meta_path.insert(0, Block())
import metaedge
assert metaedge.__version__ and "run_pipeline" in dir(metaedge)
bad = [k for k in sys.modules if k == "torch" or k.startswith("torch.")]
assert not bad, bad
try:
    metaedge.run_pipeline
except ImportError as exc:
    assert "torch is blocked" in str(exc), exc
else:
    raise AssertionError("run_pipeline loaded without torch: it is not lazy")
print("torch-free ok")
"""


def test_package_imports_without_torch():
    r = subprocess.run([sys.executable, "-c", BLOCK_TORCH], capture_output=True, text=True, cwd=REPO)
    assert r.returncode == 0, r.stderr
    assert "torch-free ok" in r.stdout


def test_every_stage_has_an_entry():
    from metaedge.compress.metapruning import prune_model
    from metaedge.compress.metaquant import quantize_model
    from metaedge.config import PipelineConfig
    from metaedge.deploy.bundle.builder import write_bundle
    from metaedge.deploy.compile import compile_for_target
    from metaedge.deploy.export import export_onnx
    from metaedge.pipeline import run_pipeline
    from metaedge.deploy.measure.local import time_onnxruntime

    expected = {
        "PipelineConfig": PipelineConfig,
        "run_pipeline": run_pipeline,
        "prune": prune_model,
        "quantize": quantize_model,
        "export": export_onnx,
        "compile": compile_for_target,
        "profile": time_onnxruntime,
        "write_bundle": write_bundle,
    }
    for name, obj in expected.items():
        assert getattr(metaedge, name) is obj, name
        assert name in metaedge.__all__
    importlib.import_module("metaedge.deploy.export")  # importing the subpackages must not shadow an entry

    assert metaedge.write_bundle is write_bundle and metaedge.export is export_onnx


def test_all_lists_exactly_the_lazy_entries():
    assert set(metaedge.__all__) == {"__version__", *metaedge._LAZY}


def test_unknown_attribute_is_an_attribute_error():
    import pytest

    with pytest.raises(AttributeError, match="no attribute 'prune_all'"):
        metaedge.prune_all  # noqa: B018


def test_readme_python_api_section_runs_names_that_exist():
    text = (REPO / "README.md").read_text()
    section = text.split("## Python API", 1)[1].split("\n## ", 1)[0]
    for name in ("PipelineConfig", "run_pipeline", "prune", "quantize", "export", "compile", "profile", "write_bundle"):
        assert f"metaedge.{name}" in section or f" {name}(" in section or f"import {name}" in section or f", {name}" in section, name
