"""Prepare the GPU check on this (GPU-less) machine; run ``run_on_gpu.py`` on the GPU machine.

    .venv/bin/python tools/gpu_check/prepare.py [--arch sm_90] [--dest .gpu]

The full TVM wheel (compiler included) is ~100 MB, more than can travel to the lent GPU machine,
and compiling needs no GPU. So the models are compiled here for ``cuda:<arch>`` with metaedge's
TVM backend, and only what running needs travels: the compiled libraries, the ONNX files, the
PyTorch weights, fixed inputs with ONNX Runtime CPU reference outputs, a runtime-only copy of the
``tvm`` package (no ``libtvm_compiler.so``) and the ``apache-tvm-ffi`` wheel for the GPU machine's
Python. TVM 0.27 stores CUDA *source* in the library and compiles it at load time through the
``tvm_callback_cuda_compile`` hook, which ``run_on_gpu.py`` serves with the machine's nvcc.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

import numpy as np
import torch

from metaedge.deploy.backends.base import get_backend
from metaedge.deploy.backends.onnxruntime import OrtRunner
from metaedge.deploy.export import check_parity, export_onnx
from metaedge.zoo import create_model

CASES = {
    "mobilenetv2_224": ("mobilenetv2_100", dict(num_classes=1000), (1, 3, 224, 224)),
    "resnet56_32": ("resnet56", dict(num_classes=10), (1, 3, 32, 32)),
    "mobilenetv2_digits": ("mobilenetv2_100", dict(num_classes=10, in_chans=1, input_size=16), (1, 1, 16, 16)),
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--arch", default="sm_90")
    ap.add_argument("--dest", default=".gpu")
    ap.add_argument("--python-version", default="3.12", help="Python of the GPU machine (for the tvm-ffi wheel)")
    ap.add_argument("--cases", nargs="*", default=list(CASES), choices=list(CASES))
    args = ap.parse_args()
    dest = Path(args.dest)
    if dest.exists():
        shutil.rmtree(dest)
    (dest / "models").mkdir(parents=True)
    manifest = {"arch": args.arch, "cases": {}}
    tmp = tempfile.TemporaryDirectory()
    for case in args.cases:
        name, kw, shape = CASES[case]
        torch.manual_seed(0)
        model = create_model(name, **kw).eval()
        x = torch.randn(8, *shape[1:], generator=torch.Generator().manual_seed(1))
        onnx_path = Path(tmp.name) / f"{case}.onnx"  # not shipped: the library embeds the weights
        export_onnx(model, x[:1], onnx_path)
        check_parity(model, onnx_path, x)
        compiled = get_backend("tvm").compile(onnx_path, f"cuda:{args.arch}", dest / "models" / case)
        ref = OrtRunner(onnx_path, threads=1).run(x[:1].numpy())
        np.save(dest / "models" / f"{case}.input.npy", x[:1].numpy())
        np.save(dest / "models" / f"{case}.ort_cpu.npy", ref)
        # No weights travel for PyTorch (the transfer is capped at 64 MiB): the GPU side rebuilds the
        # model from the same seed, and its parity against these ORT outputs proves the weights match.
        manifest["cases"][case] = {"model": name, "kwargs": kw, "shape": list(shape), "lib": str(compiled.path.relative_to(dest))}
        print(f"compiled {case} for cuda:{args.arch}: {compiled.path} ({compiled.path.stat().st_size / 1e6:.1f} MB)")
    # Runtime-only tvm: everything but the compiler library and the bundled third-party headers.
    import tvm

    src = Path(tvm.__file__).parent
    skip = shutil.ignore_patterns("libtvm_compiler.so", "3rdparty", "__pycache__", "src")
    shutil.copytree(src, Path(tmp.name) / "tvm", ignore=skip)
    with tarfile.open(dest / "tvm-runtime.tar.gz", "w:gz") as tar:
        tar.add(Path(tmp.name) / "tvm", arcname="tvm")
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "download",
            "-q",
            "--no-deps",
            "--only-binary=:all:",
            "--python-version",
            args.python_version,
            "--implementation",
            "cp",
            "--platform",
            "manylinux_2_28_x86_64",
            "--platform",
            "manylinux_2_24_x86_64",
            "--platform",
            "manylinux_2_17_x86_64",
            "-d",
            str(dest / "wheels"),
            "apache-tvm-ffi==0.1.14.post1",
        ],
        check=True,
    )
    (dest / "check.json").write_text(json.dumps(manifest, indent=2))
    size = sum(p.stat().st_size for p in dest.rglob("*") if p.is_file())
    print(f"prepared {dest}/ ({size / 2**20:.1f} MiB); run on the GPU machine: python3 tools/gpu_check/run_on_gpu.py {dest}")


if __name__ == "__main__":
    main()
