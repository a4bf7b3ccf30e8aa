"""``metaedge info MODEL``: MACs and parameters, or the registry with ``--list``."""

from __future__ import annotations

import argparse

from metaedge.cli._common import console, positive_int

__all__ = ["add_parser", "run"]


def add_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser("info", help="MACs and parameters of a model", description="Print MACs and parameters of a registered or user model at an input size.")
    p.add_argument("model", nargs="?", help="registered name, pkg.module:factory or .pt2 file")
    p.add_argument("--list", action="store_true", help="list registered models")
    p.add_argument("--weights", help="state dict to load (checked with weights_only=True)")
    p.add_argument("--input-size", type=positive_int, default=224)
    p.add_argument("--in-chans", type=positive_int, default=3)
    p.add_argument("--num-classes", type=positive_int, default=1000)
    p.add_argument("--width-mult", type=float)
    p.add_argument("--layers", action="store_true", help="per-layer table")
    return p


def run(args: argparse.Namespace) -> int:
    from rich.table import Table

    from metaedge.compress.cost import count_cost, format_count, layer_specs
    from metaedge.errors import MetaedgeError
    from metaedge.zoo import build_model, list_models

    con = console()
    if args.list or not args.model:
        for name in list_models():
            con.print(name)
        return 0
    kw = {"num_classes": args.num_classes, "in_chans": args.in_chans, "input_size": args.input_size}
    if args.width_mult is not None:
        kw["width_mult"] = args.width_mult
    model = build_model(args.model, args.weights, **kw)
    shape = (1, args.in_chans, args.input_size, args.input_size)
    try:
        cost = count_cost(model, shape)
    except RuntimeError as exc:
        raise MetaedgeError(
            f"{args.model} does not accept input of shape {shape} ({str(exc).splitlines()[0][:120]})", "pass --in-chans/--input-size that match the model"
        ) from exc
    if args.layers:
        t = Table(title=f"{args.model} layers")
        for c in ("layer", "kind", "in", "out", "kernel", "stride", "groups", "out hw", "MACs"):
            t.add_column(c)
        for s in layer_specs(model, shape):
            if s.kind in ("conv", "linear"):
                t.add_row(
                    s.name,
                    s.kind,
                    str(s.in_channels),
                    str(s.out_channels),
                    f"{s.kernel[0]}x{s.kernel[1]}",
                    str(s.stride[0]),
                    str(s.groups),
                    f"{s.out_hw[0]}x{s.out_hw[1]}",
                    format_count(s.macs),
                )
        con.print(t)
    con.print(
        f"{args.model} @ {'x'.join(map(str, shape[1:]))}: {format_count(cost.macs)} MACs ({cost.macs}), {format_count(cost.params)} params ({cost.params}), {format_count(cost.elementwise_ops)} element-wise ops"
    )
    return 0
