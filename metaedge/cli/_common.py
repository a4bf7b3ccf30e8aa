"""Argument types and printing helpers shared by the command modules."""
from __future__ import annotations

import argparse
from pathlib import Path

from metaedge.errors import MetaedgeError

__all__ = ["check_onnx_file", "console", "existing_file", "positive_int"]


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} must be at least 1")
    return value


def existing_file(text: str) -> Path:
    path = Path(text)
    if not path.is_file():
        raise MetaedgeError(f"file {path} does not exist", "check the path")
    return path


def console():
    from rich.console import Console

    import shutil

    # Logs and CI are not terminals: rich would wrap tables at 80 columns there.
    return Console(highlight=False, width=max(shutil.get_terminal_size((140, 40)).columns, 140))


def check_onnx_file(path: Path) -> None:
    """Refuse a file that is not an ONNX model, naming it (onnx's own error is a protobuf trace)."""
    import onnx

    if path.is_dir():
        raise MetaedgeError(f"{path} is a directory, not an ONNX file", f"pass {path / 'model.onnx'} or the file itself")
    if not path.is_file():
        raise MetaedgeError(f"ONNX file {path} does not exist", "run `metaedge export` or `metaedge compress` first")
    try:
        onnx.checker.check_model(str(path))
    except Exception as exc:
        raise MetaedgeError(f"{path} is not a valid ONNX model ({type(exc).__name__})", "pass a .onnx file written by `metaedge export` or torch.onnx.export") from exc
