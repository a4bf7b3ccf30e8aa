"""Which Dockerfile, platform, base image and backend a deployment target gets.

The target registry (:mod:`metaedge.targets.registry`) is the source of truth for a target's name,
family, CPU architecture and Docker base image; this module only adds what the bundle needs on top:
the backends each family's runtime image can carry and the Docker platform of each architecture.
"""

from __future__ import annotations

from dataclasses import dataclass

from metaedge.errors import MetaedgeError
from metaedge.targets.registry import builtin_targets, get_target

__all__ = ["BUNDLE_TARGETS", "CUDA_TENSORRT_BASE", "BundleTarget", "resolve_target"]

# Backends each family's runtime image can carry, default first. TensorRT engines are device
# specific, so GPU bundles ship the ONNX and build the engine on the device at first start.
_FAMILY_BACKENDS = {
    "x86": ("onnxruntime", "tvm"),
    "arm64": ("onnxruntime", "tvm"),
    "cuda": ("onnxruntime", "tensorrt"),
    # onnxruntime-gpu has no aarch64 wheel on PyPI, so Jetson bundles are TensorRT only.
    "jetson": ("tensorrt",),
}
# TensorRT's Python API is not in plain CUDA runtime images; desktop TensorRT bundles use NGC's image.
CUDA_TENSORRT_BASE = "nvcr.io/nvidia/tensorrt:24.08-py3"
_ARCH_PLATFORM = {"x86_64": "linux/amd64", "aarch64": "linux/arm64"}
# The built-in targets that have a bundle recipe (user targets from a TOML file work too).
BUNDLE_TARGETS = tuple(t.name for t in builtin_targets() if t.family in _FAMILY_BACKENDS and t.arch in _ARCH_PLATFORM)


@dataclass(frozen=True)
class BundleTarget:
    name: str
    family: str
    platform: str  # docker platform, e.g. linux/arm64
    base_image: str
    backends: tuple[str, ...]
    gpu: bool

    @property
    def default_backend(self) -> str:
        return self.backends[0]


def resolve_target(name: str) -> BundleTarget:
    """The bundle recipe for a registry target (a built-in or one from METAEDGE_TARGETS)."""
    target = get_target(name)
    if target.family not in _FAMILY_BACKENDS:
        raise MetaedgeError(
            f"target {target.name!r} has family {target.family!r}, which has no bundle recipe", f"bundles exist for families {', '.join(_FAMILY_BACKENDS)}"
        )
    if target.arch not in _ARCH_PLATFORM:
        raise MetaedgeError(f"target {target.name!r} runs on {target.arch!r}", "bundles are built for x86_64 and aarch64 only")
    return BundleTarget(target.name, target.family, _ARCH_PLATFORM[target.arch], target.docker_base, _FAMILY_BACKENDS[target.family], target.is_gpu)
