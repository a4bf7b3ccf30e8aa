"""``metaedge export``: a model (zoo, user factory, .pt2) plus weights to ONNX, parity-gated."""

from __future__ import annotations

import argparse

from metaedge.cli._common import console, positive_int

__all__ = ["add_parser", "run"]


def add_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "export",
        help="export a model to ONNX with a parity gate",
        description="Export to ONNX (dynamo exporter, dynamic batch) and check ONNX Runtime against PyTorch on random and, for digits-sized models, real inputs.",
    )
    p.add_argument("model", help="registered name, pkg.module:factory or .pt2 file")
    p.add_argument("--weights", help="state dict (.pt), loaded with weights_only=True")
    p.add_argument("--input-size", type=positive_int, default=224)
    p.add_argument("--in-chans", type=positive_int, default=3)
    p.add_argument("--num-classes", type=positive_int, default=1000)
    p.add_argument("--width-mult", type=float)
    p.add_argument("--data", help="check parity on this data source ('digits', folder, .npz) instead of random inputs")
    p.add_argument("--parity-atol", type=float, default=1e-3)
    p.add_argument("-o", "--output", default="model.onnx")
    return p


def run(args: argparse.Namespace) -> int:
    import torch

    from metaedge.data import DataConfig, load_data
    from metaedge.deploy.export import ExportConfig, check_parity, export_onnx
    from metaedge.errors import MetaedgeError
    from metaedge.zoo import build_model

    if args.parity_atol <= 0:
        raise MetaedgeError(f"--parity-atol {args.parity_atol} must be positive", "pass e.g. 1e-3")
    kw = {"num_classes": args.num_classes, "in_chans": args.in_chans, "input_size": args.input_size}
    if args.width_mult is not None:
        kw["width_mult"] = args.width_mult
    model = build_model(args.model, args.weights, **kw).eval()
    if args.data:
        inputs = load_data(DataConfig(source=args.data, input_size=args.input_size, in_chans=args.in_chans)).val.tensors[0]
    else:
        inputs = torch.randn(32, args.in_chans, args.input_size, args.input_size, generator=torch.Generator().manual_seed(0))
    try:
        with torch.no_grad():
            model(inputs[:1])
    except RuntimeError as exc:
        raise MetaedgeError(
            f"{args.model} does not accept input of shape {tuple(inputs[:1].shape)} ({str(exc).splitlines()[0][:120]})",
            "pass --in-chans/--input-size that match the model",
        ) from exc
    cfg = ExportConfig(atol=args.parity_atol)
    path = export_onnx(model, inputs[:1], args.output, cfg)
    rep = check_parity(model, path, inputs, cfg)
    console().print(f"wrote {path}: parity max abs err {rep.max_abs_err:.2e}, top-1 agreement {rep.top1_agreement:.4f} on {rep.samples} inputs")
    return 0
