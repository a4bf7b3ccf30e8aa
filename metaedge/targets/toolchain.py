"""How to link a shared library for a target whose CPU is not this machine's.

Two toolchains, best first: the distribution's cross g++ (``g++-aarch64-linux-gnu``, installed by
``tools/setup_cross.sh`` where it runs as root) and zig's C compiler from the ``ziglang`` wheel
(``pip install ziglang``: no root, no system packages; zig ships the aarch64 glibc stubs and
links with lld). :func:`cross_linker` returns a callable in TVM's ``fcompile`` form, or raises
:class:`ToolchainMissing` naming what to install -- which the compile stage reports as a
``skipped`` row, not as a failure.
"""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
import sys
from dataclasses import dataclass
from typing import Callable, Sequence

from metaedge.errors import MetaedgeError

__all__ = ["CrossLinker", "ToolchainMissing", "cross_linker"]

# glibc 2.31 is Debian 11 / Ubuntu 20.04, the oldest Raspberry Pi OS and JetPack 5 bases we target.
_ZIG_TRIPLES = {"aarch64-linux-gnu": "aarch64-linux-gnu.2.31"}


class ToolchainMissing(MetaedgeError):
    """No cross toolchain for the target is installed here."""


@dataclass(frozen=True)
class CrossLinker:
    """A named toolchain and the ``fcompile(output, objects, options)`` callable TVM's
    ``export_library`` takes."""

    name: str
    fcompile: Callable


def _zig_fcompile(zig_triple: str) -> Callable:
    def fcompile(output: str, objects: Sequence[str], options: Sequence[str] | None = None) -> None:
        cmd = [
            sys.executable,
            "-m",
            "ziglang",
            "cc",
            "-target",
            zig_triple,
            "-shared",
            "-fPIC",
            "-o",
            output,
            *objects,
            *[o for o in (options or []) if o not in ("-shared", "-fPIC")],
        ]
        r = subprocess.run(cmd, capture_output=True, text=True)
        if r.returncode != 0:
            raise MetaedgeError(
                f"zig cc failed linking {output}: {(r.stderr or r.stdout).strip().splitlines()[-1][:300]}",
                "install the distro cross compiler instead (sudo bash tools/setup_cross.sh)",
            )

    fcompile.output_format = "so"  # type: ignore[attr-defined]
    return fcompile


def cross_linker(host_triple: str, cross_compiler: str | None) -> CrossLinker:
    """The toolchain that links objects for ``host_triple`` (e.g. ``aarch64-linux-gnu``)."""
    if cross_compiler and shutil.which(cross_compiler):
        from tvm.support import cc

        return CrossLinker(cross_compiler, cc.cross_compiler(cross_compiler))
    zig_triple = _ZIG_TRIPLES.get(host_triple)
    if zig_triple and importlib.util.find_spec("ziglang") is not None:
        return CrossLinker("zig cc (ziglang wheel)", _zig_fcompile(zig_triple))
    what = cross_compiler or f"a {host_triple} cross compiler"
    raise ToolchainMissing(
        f"no cross toolchain for {host_triple}: {what} is not installed and the ziglang wheel is missing",
        "run `bash tools/setup_cross.sh` (apt as root, else pip installs ziglang into the venv)",
    )
