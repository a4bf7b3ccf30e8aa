"""Torch-free device runtime: load a metaedge artifact, validate inputs, run and serve inference.

This package (plus ``metaedge.errors``, ``metaedge.latency`` and ``metaedge.artifacts``) is what a
deployment bundle ships to the device. It must never import torch: devices run ONNX Runtime, TVM's
runtime or TensorRT only. Entry point: ``python -m metaedge.deploy.runtime serve|run``.
"""

from __future__ import annotations

from metaedge.deploy.runtime.errors import InputError
from metaedge.deploy.runtime.model import LoadedModel, load_model
from metaedge.deploy.runtime.spec import ModelSpec

__all__ = ["InputError", "LoadedModel", "ModelSpec", "load_model"]
