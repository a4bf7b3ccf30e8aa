"""Deployment targets (x86, ARM64 boards, CUDA GPUs, Jetsons) and how to reach a device (TVM RPC, HTTP)."""

from metaedge.targets.registry import Target, get_target, list_targets, load_targets_toml, register_target

__all__ = ["Target", "get_target", "list_targets", "load_targets_toml", "register_target"]
