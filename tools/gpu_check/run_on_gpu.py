"""Run the prepared GPU check on a machine with an NVIDIA GPU (see prepare.py).

    pip install --target /tmp/site .gpu/wheels/*.whl && tar -C /tmp/site -xzf .gpu/tvm-runtime.tar.gz
    PYTHONPATH=/tmp/site:. python3 tools/gpu_check/run_on_gpu.py .gpu

For each prepared model: load the TVM library (runtime-only TVM; CUDA source compiled at load by
nvcc), run it on the GPU, compare with ONNX Runtime CPU outputs computed when it was prepared, and
time it (TVM ``time_evaluator``) against PyTorch CUDA eager on the same input and weights. Prints a
table and writes gpu_check.json into $OUT (or the current directory).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TVM_USE_RUNTIME_LIB", "1")

import numpy as np  # noqa: E402


def _register_nvcc(arch: str) -> None:
    import tvm_ffi

    @tvm_ffi.register_global_func("tvm_callback_cuda_compile", override=True)
    def _compile(code, *rest):  # TVM hands over CUDA C source; return a fatbin
        with tempfile.TemporaryDirectory() as tmp:
            src, out = Path(tmp) / "k.cu", Path(tmp) / "k.fatbin"
            src.write_text(code)
            subprocess.run(["nvcc", "--fatbin", "-O3", f"-arch={arch}", "-o", str(out), str(src)], check=True)
            return bytearray(out.read_bytes())


def _percentiles(samples_ms):
    s = np.sort(np.asarray(samples_ms))
    return {"p50_ms": float(np.percentile(s, 50)), "p90_ms": float(np.percentile(s, 90)), "p99_ms": float(np.percentile(s, 99)), "repeats": len(s)}


def _time_torch(fn, repeats=200, warmup=20):
    import torch

    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    samples = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        samples.append(start.elapsed_time(end))
    return _percentiles(samples)


def main() -> None:
    root = Path(sys.argv[1] if len(sys.argv) > 1 else ".gpu")
    check = json.loads((root / "check.json").read_text())
    import torch
    import tvm

    # After `import tvm`: it registers its own hook (NVRTC by default), which ours overrides.
    _register_nvcc(check["arch"])
    # Runtime-only TVM skips the backend autoload that loads the CUDA runtime sidecar library
    # (it registers the loader for CUDA modules): load it as TVM's CUDA backend would.
    from tvm.base import _LOADED_LIBS
    from tvm_ffi.libinfo import load_lib_ctypes

    if "tvm_runtime_cuda" not in _LOADED_LIBS:
        runtime_dir = Path(_LOADED_LIBS["tvm_runtime"]._name).resolve().parent
        _LOADED_LIBS["tvm_runtime_cuda"] = load_lib_ctypes(package="tvm", target_name="tvm_runtime_cuda", extra_lib_paths=[runtime_dir], mode="RTLD_LOCAL")
    from tvm.runtime.vm import VirtualMachine

    from metaedge.zoo import create_model

    results = {"gpu": torch.cuda.get_device_name(0), "torch": torch.__version__, "tvm": tvm.__version__, "cases": {}}
    dev = tvm.cuda(0)
    for case, spec in check["cases"].items():
        row: dict = {}
        x = np.load(root / "models" / f"{case}.input.npy")
        ref = np.load(root / "models" / f"{case}.ort_cpu.npy")
        try:
            t0 = time.perf_counter()
            vm = VirtualMachine(tvm.runtime.load_module(str(root / spec["lib"])), dev)
            xt = tvm.runtime.tensor(x, dev)
            out = vm["main"](xt)
            out = out[0] if isinstance(out, (list, tuple)) or type(out).__name__ == "Array" else out
            y = out.numpy()
            row["tvm_load_and_first_run_s"] = time.perf_counter() - t0
            row["parity_vs_ort_cpu"] = {"max_abs_err": float(np.abs(y - ref).max()), "top1_agree": bool((y.argmax(-1) == ref.argmax(-1)).all())}
            timer = vm.time_evaluator("main", dev, number=10, repeat=50, min_repeat_ms=0)
            res = timer(xt)
            row["tvm_cuda"] = _percentiles(np.asarray(res.results) * 1e3)
        except Exception as exc:  # keep going: the other rows still mean something
            row["tvm_error"] = f"{type(exc).__name__}: {str(exc)[:400]}"
        torch.manual_seed(0)  # same seed as prepare.py: the parity row below checks the weights agree
        model = create_model(spec["model"], **spec["kwargs"]).eval().cuda()
        xc = torch.from_numpy(x).cuda()
        with torch.inference_mode():
            y_torch = model(xc).float().cpu().numpy()
            row["parity_torch_cuda_vs_ort_cpu"] = float(np.abs(y_torch - ref).max())
            row["torch_cuda_eager"] = _time_torch(lambda model=model, xc=xc: model(xc))
            torch.backends.cudnn.benchmark = True
            mcl = model.to(memory_format=torch.channels_last)
            xcl = xc.contiguous(memory_format=torch.channels_last)
            row["torch_cuda_eager_channels_last"] = _time_torch(lambda mcl=mcl, xcl=xcl: mcl(xcl))
        results["cases"][case] = row
    out_dir = Path(os.environ.get("OUT", "."))
    (out_dir / "gpu_check.json").write_text(json.dumps(results, indent=2))
    print(f"GPU: {results['gpu']}  torch {results['torch']}  tvm {results['tvm']} (runtime only)")
    print(f"{'model':<20}{'TVM p50 ms':>12}{'eager p50 ms':>14}{'eager NHWC':>12}{'eager/TVM':>11}{'max|TVM-ORT|':>14}")
    for case, row in results["cases"].items():
        tv = row.get("tvm_cuda", {}).get("p50_ms")
        ea = row["torch_cuda_eager"]["p50_ms"]
        err = row.get("parity_vs_ort_cpu", {}).get("max_abs_err")
        print(
            f"{case:<20}{(f'{tv:.3f}' if tv else 'ERR'):>12}{ea:>14.3f}{row['torch_cuda_eager_channels_last']['p50_ms']:>12.3f}{(f'{ea / tv:.2f}x' if tv else '-'):>11}{(f'{err:.2e}' if err is not None else '-'):>14}"
        )
        if "tvm_error" in row:
            print("   ", row["tvm_error"])


if __name__ == "__main__":
    main()
