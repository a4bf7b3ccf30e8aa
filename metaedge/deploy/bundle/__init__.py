"""Deployment bundles: a Docker build context per target (runtime image + artifact + README)."""

from __future__ import annotations

from metaedge.deploy.bundle.builder import Bundle, BundleConfig, build_bundle, docker_reachable, write_bundle
from metaedge.deploy.bundle.targets import BUNDLE_TARGETS, BundleTarget, resolve_target

__all__ = [
    "BUNDLE_TARGETS",
    "Bundle",
    "BundleConfig",
    "BundleTarget",
    "build_bundle",
    "docker_reachable",
    "resolve_target",
    "write_bundle",
]
