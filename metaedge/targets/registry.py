"""Deployment targets: what a compiled model is built for and how it is measured.

A :class:`Target` names a device class (the x86 box, a Raspberry Pi 4, a Jetson), the TVM target
to compile for, how to build shared objects for it (host triple, cross compiler), which backends
make sense there (best first), the Docker base image its runtime bundle starts from and whether
latency is measured here (``local``) or on the device through TVM RPC (``rpc``).

Built-ins cover the usual edge devices; users add their own in a TOML file (see
:func:`load_targets_toml`, or point ``METAEDGE_TARGETS`` at the file). TVM is imported only by
:meth:`Target.tvm` so listing targets stays cheap.
"""

from __future__ import annotations

import os
import platform
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Mapping

import tomllib

from metaedge.errors import MetaedgeError

__all__ = [
    "FAMILIES",
    "MEASUREMENTS",
    "Target",
    "builtin_targets",
    "get_target",
    "list_targets",
    "load_targets_toml",
    "register_target",
]

FAMILIES = ("x86", "arm64", "cuda", "jetson")
MEASUREMENTS = ("local", "rpc")
KNOWN_BACKENDS = ("onnxruntime", "tvm", "tensorrt")
DEFAULT_CUDA_ARCH = "sm_80"  # desktop/datacenter Ampere; override with `cuda:sm_90` or TOML

_AARCH64_TRIPLE = "aarch64-linux-gnu"
_AARCH64_CXX = "aarch64-linux-gnu-g++"


@dataclass(frozen=True)
class Target:
    """One deployment target. ``tvm_target`` is a TVM tag (``"raspberry-pi/4b-aarch64"``) or a
    TVM target dict (``{"kind": "llvm", "mtriple": ...}``); ``tvm_host`` is the host-side target
    for GPU targets whose tag carries none."""

    name: str
    family: str
    description: str
    tvm_target: str | Mapping[str, Any] = field(hash=False)
    host_triple: str = "x86_64-linux-gnu"
    cross_compiler: str | None = None
    backends: tuple[str, ...] = ("onnxruntime", "tvm")
    docker_base: str = "python:3.11-slim-bookworm"
    measurement: str = "local"
    tvm_host: Mapping[str, Any] | None = field(default=None, hash=False)

    def __post_init__(self) -> None:
        where = f"target {self.name!r}"
        if self.family not in FAMILIES:
            raise MetaedgeError(f"{where} has family {self.family!r}", f"use one of: {', '.join(FAMILIES)}")
        if self.measurement not in MEASUREMENTS:
            raise MetaedgeError(f"{where} has measurement {self.measurement!r}", f"use one of: {', '.join(MEASUREMENTS)}")
        bad = [b for b in self.backends if b not in KNOWN_BACKENDS]
        if bad or not self.backends:
            raise MetaedgeError(f"{where} lists backends {list(self.backends)!r}", f"choose from: {', '.join(KNOWN_BACKENDS)}")
        if not isinstance(self.tvm_target, (str, Mapping)) or not self.tvm_target:
            raise MetaedgeError(f"{where} has no usable tvm_target", "give a TVM tag string or a table with at least `kind`")
        if isinstance(self.tvm_target, Mapping) and "kind" not in self.tvm_target:
            raise MetaedgeError(f"{where}: tvm_target table has no `kind`", 'add kind = "llvm" (CPU) or kind = "cuda" (GPU)')

    # --- derived facts -------------------------------------------------------------------------
    @property
    def is_gpu(self) -> bool:
        return self.family in ("cuda", "jetson")

    @property
    def arch(self) -> str:
        """The machine the model runs on: ``x86_64`` or ``aarch64``."""
        return self.host_triple.split("-", 1)[0]

    def runs_here(self) -> bool:
        """True when code built for this target can execute on this machine (same CPU arch and,
        for GPU targets, a visible NVIDIA GPU)."""
        if self.arch != platform.machine():
            return False
        if self.is_gpu:
            return Path("/dev/nvidia0").exists() or Path("/dev/nvhost-ctrl").exists()
        return True

    def tvm(self):  # -> tvm.target.Target
        """The TVM target object (imports TVM)."""
        from tvm.target import Target as TvmTarget

        spec: Any = self.tvm_target
        if isinstance(spec, Mapping):
            spec = {k: (list(v) if isinstance(v, tuple) else v) for k, v in spec.items()}
            if spec.get("kind") == "llvm" and spec.get("mcpu") == "native":
                spec["mcpu"] = _host_cpu()
        if self.tvm_host is not None:
            host = dict(self.tvm_host)
            if host.get("mcpu") == "native":
                host["mcpu"] = _host_cpu()
            return TvmTarget(spec, host=host)
        return TvmTarget(spec)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["backends"] = list(self.backends)
        d["tvm_target"] = self.tvm_target if isinstance(self.tvm_target, str) else dict(self.tvm_target)
        d["tvm_host"] = None if self.tvm_host is None else dict(self.tvm_host)
        return d


def _host_cpu() -> str:
    from tvm.target.codegen import llvm_get_system_cpu

    return str(llvm_get_system_cpu())


def _cuda(arch: str) -> Target:
    return Target(
        name="cuda" if arch == DEFAULT_CUDA_ARCH else f"cuda:{arch}",
        family="cuda",
        description=f"desktop/server NVIDIA GPU ({arch}) on an x86-64 host",
        tvm_target={"kind": "cuda", "arch": arch},
        tvm_host={"kind": "llvm", "mcpu": "native"},
        backends=("tensorrt", "tvm", "onnxruntime"),
        docker_base="nvcr.io/nvidia/cuda:12.6.3-cudnn-runtime-ubuntu22.04",
        measurement="local",
    )


def _jetson(name: str, tag: str, desc: str, host_cpu: str, image: str) -> Target:
    return Target(
        name=name,
        family="jetson",
        description=desc,
        tvm_target=tag,
        # Some tags carry no host (jetson-nano) and one carries the wrong CPU; pin it here.
        tvm_host={"kind": "llvm", "mtriple": _AARCH64_TRIPLE, "mcpu": host_cpu},
        host_triple=_AARCH64_TRIPLE,
        cross_compiler=_AARCH64_CXX,
        # onnxruntime-gpu has no aarch64 wheel on PyPI: Jetson runs TensorRT engines or TVM CUDA code.
        backends=("tensorrt", "tvm"),
        docker_base=image,
        measurement="rpc",
    )


_BUILTINS: tuple[Target, ...] = (
    Target(
        name="x86",
        family="x86",
        description="this x86-64 edge box (host CPU, detected by LLVM)",
        tvm_target={"kind": "llvm", "mcpu": "native"},
        backends=("onnxruntime", "tvm"),
        docker_base="python:3.11-slim-bookworm",
        measurement="local",
    ),
    Target(
        name="arm64",
        family="arm64",
        description="generic 64-bit ARM Linux board (NEON), e.g. the emulated device",
        tvm_target={"kind": "llvm", "mtriple": _AARCH64_TRIPLE, "mattr": ["+neon"]},
        host_triple=_AARCH64_TRIPLE,
        cross_compiler=_AARCH64_CXX,
        backends=("onnxruntime", "tvm"),
        docker_base="arm64v8/python:3.11-slim-bookworm",
        measurement="rpc",
    ),
    Target(
        name="rpi4",
        family="arm64",
        description="Raspberry Pi 4 Model B, 64-bit OS (Cortex-A72)",
        tvm_target="raspberry-pi/4b-aarch64",
        host_triple=_AARCH64_TRIPLE,
        cross_compiler=_AARCH64_CXX,
        backends=("onnxruntime", "tvm"),
        docker_base="arm64v8/python:3.11-slim-bookworm",
        measurement="rpc",
    ),
    _cuda(DEFAULT_CUDA_ARCH),
    _jetson("jetson-nano", "nvidia/jetson-nano", "Jetson Nano (Maxwell sm_53, JetPack 4)", "cortex-a57", "nvcr.io/nvidia/l4t-base:r32.7.1"),
    _jetson("jetson-orin-nano", "nvidia/jetson-orin-nano", "Jetson Orin Nano (Ampere sm_87, JetPack 6)", "cortex-a78", "nvcr.io/nvidia/l4t-jetpack:r36.4.0"),
    _jetson("jetson-xavier", "nvidia/jetson-agx-xavier", "Jetson AGX Xavier (Volta sm_72, JetPack 5)", "carmel", "nvcr.io/nvidia/l4t-jetpack:r35.4.1"),
)

_USER: dict[str, Target] = {}
_ENV_LOADED: set[str] = set()


def register_target(target: Target) -> Target:
    """Add (or replace) a user target."""
    _USER[target.name] = target
    return target


def _load_env_file() -> None:
    path = os.environ.get("METAEDGE_TARGETS")
    if path and path not in _ENV_LOADED:
        load_targets_toml(path)
        _ENV_LOADED.add(path)


def builtin_targets() -> tuple[Target, ...]:
    """The targets metaedge ships with, in their fixed order (user overrides not applied)."""
    return _BUILTINS


def list_targets() -> list[Target]:
    """Built-ins first (in their fixed order), then user targets by name."""
    _load_env_file()
    builtin_names = {t.name for t in _BUILTINS}
    out = [_USER.get(t.name, t) for t in _BUILTINS]
    out += [t for n, t in sorted(_USER.items()) if n not in builtin_names]
    return out


def get_target(name: str | Target, *, arch: str | None = None) -> Target:
    """Look a target up by name. ``cuda:sm_90`` (or ``arch="sm_90"``) retargets the CUDA GPU."""
    if isinstance(name, Target):
        return name
    _load_env_file()
    base, _, suffix = name.partition(":")
    arch = arch or (suffix or None)
    if base == "cuda" and name not in _USER:
        if arch is not None and not (arch.startswith("sm_") and arch[3:].isdigit()):
            raise MetaedgeError(f"bad CUDA arch {arch!r} in target {name!r}", "write it like cuda:sm_90")
        return _cuda(arch or DEFAULT_CUDA_ARCH)
    table = {t.name: t for t in list_targets()}
    if name not in table:
        raise MetaedgeError(
            f"unknown target {name!r}",
            f"choose one of: {', '.join(table)} (or define it in a TOML file given by METAEDGE_TARGETS)",
        )
    return table[name]


# --- TOML ------------------------------------------------------------------------------------
_FIELDS = {"family", "description", "tvm_target", "tvm_host", "host_triple", "cross_compiler", "backends", "docker_base", "measurement", "based_on"}
_EXAMPLE = (
    'write one table per target, e.g. [targets.my-pi] with based_on = "rpi4" and description = "lab Pi" '
    "(keys: based_on, family, description, tvm_target, tvm_host, host_triple, cross_compiler, backends, "
    "docker_base, measurement)"
)


def load_targets_toml(path: Path | str, *, register: bool = True) -> list[Target]:
    """Read user targets from ``[targets.<name>]`` tables; ``based_on = "<builtin>"`` copies a
    target and overrides the keys given. Raises :class:`MetaedgeError` naming the file and fix."""
    path = Path(path)
    if not path.is_file():
        raise MetaedgeError(f"targets file {path} does not exist", "fix the path (or unset METAEDGE_TARGETS)")
    try:
        data = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise MetaedgeError(f"targets file {path} is not valid TOML ({exc})", "fix the syntax; " + _EXAMPLE) from exc
    except UnicodeDecodeError as exc:
        raise MetaedgeError(f"targets file {path} is not UTF-8 text", "save it as UTF-8 TOML") from exc
    tables = data.get("targets")
    if not isinstance(tables, dict) or not tables:
        raise MetaedgeError(f"targets file {path} has no [targets.<name>] tables", _EXAMPLE)
    builtins = {t.name: t for t in _BUILTINS}
    out: list[Target] = []
    for name, spec in tables.items():
        where = f"{path}: [targets.{name}]"
        if not isinstance(spec, dict):
            raise MetaedgeError(f"{where} is not a table", _EXAMPLE)
        unknown = sorted(set(spec) - _FIELDS)
        if unknown:
            raise MetaedgeError(f"{where} has unknown keys {unknown}", f"use only: {', '.join(sorted(_FIELDS))}")
        base_name = spec.get("based_on")
        kwargs = {k: v for k, v in spec.items() if k != "based_on"}
        if "backends" in kwargs:
            if not isinstance(kwargs["backends"], list):
                raise MetaedgeError(f"{where}: backends must be a list", 'write backends = ["tvm", "onnxruntime"]')
            kwargs["backends"] = tuple(kwargs["backends"])
        try:
            if base_name is not None:
                base = builtins.get(base_name) or _USER.get(base_name)
                if base is None and base_name.startswith("cuda"):
                    base = get_target(base_name)
                if base is None:
                    raise MetaedgeError(f"{where}: based_on {base_name!r} is not a known target", f"use one of: {', '.join(builtins)}")
                target = replace(base, name=name, **kwargs)
            else:
                missing = [k for k in ("family", "description", "tvm_target") if k not in kwargs]
                if missing:
                    raise MetaedgeError(f"{where} is missing {missing}", 'add them, or start from a built-in with based_on = "x86" / "rpi4" / ...')
                target = Target(name=name, **kwargs)
        except MetaedgeError as exc:
            if str(path) in exc.problem:
                raise
            raise MetaedgeError(f"{path}: {exc.problem}", exc.fix) from exc
        except TypeError as exc:  # wrong value types reaching the dataclass
            raise MetaedgeError(f"{where}: {exc}", _EXAMPLE) from exc
        out.append(target)
    if register:
        for t in out:
            register_target(t)
    return out
