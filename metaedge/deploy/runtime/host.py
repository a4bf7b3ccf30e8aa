"""What this machine can run: its CPU architecture, whether an NVIDIA GPU is visible, and the
architecture a shared library was built for (read from its ELF header, so nothing is dlopen'ed).

Stdlib only: the device runtime must not import ``metaedge.targets`` (not shipped in bundles).
"""

from __future__ import annotations

import platform
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Optional, Tuple

__all__ = ["Host", "elf_arch", "normalize_arch", "target_facts"]

# uname spellings of the same ISA (macOS and Windows say arm64 / AMD64).
_ARCH_ALIASES = {"amd64": "x86_64", "x64": "x86_64", "x86-64": "x86_64", "arm64": "aarch64"}
# ELF e_machine -> platform.machine() name.
_ELF_MACHINES = {3: "i686", 40: "armv7l", 62: "x86_64", 183: "aarch64", 243: "riscv64"}
_GPU_NODES = ("/dev/nvidia0", "/dev/nvhost-ctrl", "/dev/nvhost-ctrl-gpu", "/dev/nvgpu")
# Built-in target names -> (arch, GPU) for manifests written before compile recorded the arch.
_BUILTIN_TARGETS = {"x86": ("x86_64", False), "arm64": ("aarch64", False), "rpi4": ("aarch64", False), "cuda": ("x86_64", True)}


def normalize_arch(name: str) -> str:
    name = (name or "").strip().lower()
    return _ARCH_ALIASES.get(name, name)


@dataclass(frozen=True)
class Host:
    """The machine the runner is on; tests build one to stand in for another board."""

    arch: str
    gpu: bool = False

    @classmethod
    def detect(cls) -> "Host":
        return cls(normalize_arch(platform.machine()), any(Path(p).exists() for p in _GPU_NODES))

    def runs(self, arch: Optional[str], gpu: bool) -> bool:
        """True when code built for (arch, gpu) executes here; an unknown arch never matches."""
        return arch is not None and normalize_arch(arch) == self.arch and (self.gpu or not gpu)


def target_facts(name: str, entry: Mapping[str, Any]) -> Tuple[Optional[str], bool]:
    """(arch, needs GPU) of a compiled target: what compile recorded, else the built-in name's."""
    if isinstance(entry.get("arch"), str):
        return normalize_arch(entry["arch"]), bool(entry.get("gpu", False))
    if name.startswith("cuda:"):
        return "x86_64", True
    if name.startswith("jetson"):
        return "aarch64", True
    return _BUILTIN_TARGETS.get(name, (None, False))


def elf_arch(path: Path) -> Optional[str]:
    """The architecture of an ELF file, or None when it is not ELF (or unreadable)."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(20)
    except OSError:
        return None
    if len(head) < 20 or head[:4] != b"\x7fELF" or head[5] not in (1, 2):
        return None
    machine = int.from_bytes(head[18:20], "little" if head[5] == 1 else "big")
    return _ELF_MACHINES.get(machine, f"elf-machine-{machine}")
