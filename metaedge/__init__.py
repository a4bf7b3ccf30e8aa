"""metaedge: compress a PyTorch CNN, compile it and ship it to embedded targets.

Importing the package stays torch-free (the device runtime imports it without torch); the heavy
API is loaded on first use.
"""
from __future__ import annotations

__version__ = "0.1.0"
__all__ = ["__version__", "run_pipeline"]


def __getattr__(name: str):
    if name == "run_pipeline":
        from metaedge.pipeline import run_pipeline

        return run_pipeline
    raise AttributeError(f"module 'metaedge' has no attribute {name!r}")
