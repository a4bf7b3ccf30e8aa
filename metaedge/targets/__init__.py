"""Deployment targets (x86, ARM64 boards, CUDA GPUs, Jetsons) and measuring models on them."""
from metaedge.targets.registry import Target, get_target, list_targets, load_targets_toml, register_target

__all__ = ["Target", "get_target", "list_targets", "load_targets_toml", "register_target"]
