"""metaedge: compress a PyTorch CNN, compile it and ship it to embedded targets.

The public API, one entry per stage, beside the whole chain::

    from metaedge import PipelineConfig, run_pipeline          # metaedge compress
    from metaedge import prune, quantize, export, compile, profile, write_bundle  # deploy

Importing the package stays torch-free (the device runtime imports it without torch): every name
below is loaded from its module on first use.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

# public name -> (module, attribute)
_LAZY: dict[str, tuple[str, str]] = {
    "PipelineConfig": ("metaedge.config", "PipelineConfig"),
    "run_pipeline": ("metaedge.pipeline", "run_pipeline"),
    "load_data": ("metaedge.data", "load_data"),
    "build_model": ("metaedge.zoo", "build_model"),
    "prune": ("metaedge.compress.metapruning", "prune_model"),  # MetaPruning to a MACs / latency budget
    "quantize": ("metaedge.compress.metaquant", "quantize_model"),  # MetaQuant / STE / LSQ QAT
    "export": ("metaedge.deploy.export", "export_onnx"),  # fp32 ONNX (check_parity for the gate)
    "compile": ("metaedge.deploy.compile", "compile_for_target"),  # backends for a target, fastest chosen
    "profile": ("metaedge.deploy.measure.local", "time_onnxruntime"),  # latency of an ONNX model here
    # the deploy stage; not named "deploy": that is the metaedge.deploy subpackage's attribute
    "write_bundle": ("metaedge.deploy.bundle.builder", "write_bundle"),  # Docker bundle for a target
}

__all__ = ["PipelineConfig", "__version__", "build_model", "compile", "export", "load_data", "profile", "prune", "quantize", "run_pipeline", "write_bundle"]


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module 'metaedge' has no attribute {name!r}")
    module, attr = _LAZY[name]
    value = getattr(importlib.import_module(module), attr)
    globals()[name] = value  # later lookups skip __getattr__
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
