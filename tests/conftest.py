"""Shared fixtures: tiny real models and data, so every test runs real code in seconds."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True, scope="session")
def _one_thread_torch():
    # Two threads on a 2-core VM are noisy and starve the other test processes (dockerd, qemu).
    torch.set_num_threads(1)
    yield


# The smallest real model the CLI tests train: half-width ResNet-20 on 8x8 inputs (seconds per epoch).
TINY_MODEL = ("--model", "resnet20", "--width-mult", "0.5", "--input-size", "8")
# A run that stops after the prune stage: a few hundred images, no QAT, no compile, a short timing.
PRUNE_ONLY = ("--train-subset", "256", "--quant", "off", "--target", "none", "--repeats", "5", "--warmup", "1")


def run_cli(*args: str, cwd: Path | None = None, timeout: float = 600, env: dict | None = None) -> subprocess.CompletedProcess:
    """Run ``metaedge ARGS`` in a subprocess, exactly as a user would."""
    # One OpenMP thread unless told otherwise: on 2 cores a 2-thread torch process beside any other
    # busy process spin-waits and runs ~20x slower (measured here).
    full_env = {"OMP_NUM_THREADS": "1", **os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    return subprocess.run([sys.executable, "-m", "metaedge.cli.main", *args], cwd=cwd, capture_output=True, text=True, timeout=timeout, env=full_env)


@pytest.fixture(scope="session")
def digits_small():
    from metaedge.data import DataConfig, load_data

    return load_data(DataConfig(input_size=8))


@pytest.fixture(scope="session")
def tiny_onnx(tmp_path_factory):
    """A trained-free but real ResNet-20 (width 0.25, 8x8 input) exported to ONNX, with its model."""
    from metaedge.deploy.export import export_onnx
    from metaedge.zoo import create_model

    torch.manual_seed(0)
    model = create_model("resnet20", num_classes=10, in_chans=1, width_mult=0.25, input_size=8).eval()
    path = tmp_path_factory.mktemp("tiny") / "model.onnx"
    export_onnx(model, torch.randn(1, 1, 8, 8), path)
    return model, path
