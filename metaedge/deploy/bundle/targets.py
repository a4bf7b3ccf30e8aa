"""Which Dockerfile, platform, base image and backend a deployment target gets.

The target registry (``metaedge.targets.registry``) is the source of truth for a target's family,
CPU architecture and Docker base image; this module only adds what the bundle needs on top. A small
private table keeps ``metaedge deploy`` working for the built-in names if the registry is missing.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from metaedge.errors import MetaedgeError

__all__ = ["BUNDLE_TARGETS", "CUDA_TENSORRT_BASE", "BundleTarget", "resolve_target"]

# name -> (family, arch, base image). Used only when metaedge.targets.registry cannot be imported.
_FALLBACK: dict[str, tuple[str, str, str]] = {
    "x86": ("x86", "x86_64", "python:3.11-slim-bookworm"),
    "arm64": ("arm64", "aarch64", "arm64v8/python:3.11-slim-bookworm"),
    "rpi4": ("arm64", "aarch64", "arm64v8/python:3.11-slim-bookworm"),
    "cuda": ("cuda", "x86_64", "nvcr.io/nvidia/cuda:12.6.3-cudnn-runtime-ubuntu22.04"),
    "jetson-nano": ("jetson", "aarch64", "nvcr.io/nvidia/l4t-base:r32.7.1"),
    "jetson-orin-nano": ("jetson", "aarch64", "nvcr.io/nvidia/l4t-jetpack:r36.4.0"),
    "jetson-xavier": ("jetson", "aarch64", "nvcr.io/nvidia/l4t-jetpack:r35.4.1"),
}
BUNDLE_TARGETS = tuple(_FALLBACK)

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


def _from_registry(name: str) -> Any | None:
    try:
        from metaedge.targets.registry import get_target
    except ImportError:
        return None
    try:
        return get_target(name)
    except MetaedgeError:
        return None


def resolve_target(name: str) -> BundleTarget:
    reg = _from_registry(name)
    if reg is not None:
        family = str(getattr(reg, "family", ""))
        arch = str(getattr(reg, "arch", "") or str(getattr(reg, "host_triple", "x86_64")).split("-", 1)[0])
        base = str(getattr(reg, "docker_base", "") or "")
        name = str(getattr(reg, "name", name))
    elif name in _FALLBACK:
        family, arch, base = _FALLBACK[name]
    else:
        raise MetaedgeError(f"unknown deploy target {name!r}", f"choose one of: {', '.join(BUNDLE_TARGETS)}")
    if family not in _FAMILY_BACKENDS:
        raise MetaedgeError(f"target {name!r} has family {family!r}, which has no bundle recipe",
                            f"bundles exist for families {', '.join(_FAMILY_BACKENDS)}")
    if arch not in _ARCH_PLATFORM:
        raise MetaedgeError(f"target {name!r} runs on {arch!r}", "bundles are built for x86_64 and aarch64 only")
    if not base:
        base = next(b for n, (f, _, b) in _FALLBACK.items() if f == family)
    return BundleTarget(name, family, _ARCH_PLATFORM[arch], base, _FAMILY_BACKENDS[family], family in ("cuda", "jetson"))
