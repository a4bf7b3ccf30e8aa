"""``metaedge targets``: list the deployment targets (built-in and from a TOML file)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

__all__ = ["add_parser", "run"]


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "targets",
        help="list deployment targets",
        description="List the built-in deployment targets and those defined in a TOML file (--file, or the METAEDGE_TARGETS environment variable).",
    )
    p.add_argument("--file", type=Path, default=None, help="TOML file with [targets.<name>] tables to add")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    return p


def run(args: argparse.Namespace) -> int:
    from metaedge.targets.registry import list_targets, load_targets_toml

    if args.file is not None:
        load_targets_toml(args.file)
    targets = list_targets()
    if args.json:
        print(json.dumps([t.to_dict() for t in targets], indent=2))
        return 0
    from rich.table import Table

    from metaedge.cli._common import console

    table = Table(title="metaedge targets", show_lines=False)
    for col in ("name", "family", "arch", "backends", "measure", "tvm target", "description"):
        table.add_column(col, overflow="fold")
    for t in targets:
        tvm = t.tvm_target if isinstance(t.tvm_target, str) else ", ".join(f"{k}={v}" for k, v in t.tvm_target.items())
        table.add_row(t.name, t.family, t.arch, " > ".join(t.backends), t.measurement, tvm, t.description)
    console().print(table)
    return 0
