"""PyTorch eager vs ONNX Runtime fp32 latency for the zoo models at batch 1, one thread.

    .venv/bin/python bench/eager_vs_ort.py [--repeats 200]

Both runtimes time the same input in the same process, one after the other, so the ratio is
measured side by side. Prints a table (and writes bench/results/eager_vs_ort.json).
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch

from metaedge.artifacts import atomic_write_json
from metaedge.compress.cost import count_cost, format_count
from metaedge.deploy.export import check_parity, export_onnx
from metaedge.deploy.measure.local import time_onnxruntime, time_torch_eager
from metaedge.latency import TimingConfig
from metaedge.zoo import create_model

CASES = [
    ("mobilenetv2_100", dict(num_classes=10, in_chans=1, input_size=16), (1, 1, 16, 16), "digits default"),
    ("mobilenetv2_100", dict(num_classes=10, in_chans=3, input_size=32), (1, 3, 32, 32), "CIFAR-size"),
    ("mobilenetv2_100", dict(num_classes=1000), (1, 3, 224, 224), "ImageNet-size"),
    ("mobilenetv2_050", dict(num_classes=10, in_chans=3, input_size=32), (1, 3, 32, 32), "CIFAR-size"),
    ("resnet20", dict(num_classes=10), (1, 3, 32, 32), "CIFAR-size"),
    ("resnet56", dict(num_classes=10), (1, 3, 32, 32), "CIFAR-size"),
]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=100)
    ap.add_argument("--warmup", type=int, default=20)
    args = ap.parse_args()
    timing = TimingConfig(warmup=args.warmup, repeats=args.repeats, threads=1)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, kw, shape, note in CASES:
            torch.manual_seed(0)
            model = create_model(name, **kw).eval()
            x = torch.randn(shape)
            path = Path(tmp) / f"{name}.onnx"
            export_onnx(model, x, path)
            check_parity(model, path, torch.randn(8, *shape[1:]))
            cost = count_cost(model, shape)
            eager = time_torch_eager(model, x, timing)
            ort = time_onnxruntime(path, x.numpy(), timing)
            rows.append(
                {
                    "model": name,
                    "input": "x".join(map(str, shape[1:])),
                    "note": note,
                    "macs": cost.macs,
                    "params": cost.params,
                    "eager_p50_ms": eager.p50_ms,
                    "eager_p90_ms": eager.p90_ms,
                    "ort_p50_ms": ort.p50_ms,
                    "ort_p90_ms": ort.p90_ms,
                    "eager_over_ort": eager.p50_ms / ort.p50_ms,
                }
            )
    header = f"{'model':<17}{'input':<11}{'MACs':>9}{'params':>9}{'eager p50':>11}{'ORT p50':>10}{'eager/ORT':>11}"
    print(f"PyTorch eager vs ONNX Runtime fp32, batch 1, 1 thread, p50 of {args.repeats} runs (ms)")
    print(header)
    print("-" * len(header))
    for r in rows:
        print(
            f"{r['model']:<17}{r['input']:<11}{format_count(r['macs']):>9}{format_count(r['params']):>9}{r['eager_p50_ms']:>11.3f}{r['ort_p50_ms']:>10.3f}{r['eager_over_ort']:>10.2f}x"
        )
    out = Path(__file__).parent / "results" / "eager_vs_ort.json"
    atomic_write_json(out, {"timing": vars(args), "torch": torch.__version__, "rows": rows})
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
