"""Argument types and printing helpers shared by the command modules."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TextIO

from metaedge.errors import MetaedgeError

__all__ = ["NON_TERMINAL_WIDTH", "check_onnx_file", "console", "existing_file", "nonnegative_int", "positive_int"]

# Table width when stdout is not a terminal: wide enough for the widest table the CLI prints.
NON_TERMINAL_WIDTH = 200


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} must be at least 1")
    return value


def nonnegative_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"{value} is negative")
    return value


def existing_file(text: str) -> Path:
    path = Path(text)
    if not path.is_file():
        raise MetaedgeError(f"file {path} does not exist", "check the path")
    return path


def console(file: TextIO | None = None):
    """The one rich console every command prints through.

    On a terminal rich wraps to its width, as users expect. Piped or redirected (``| tee log``,
    ``> file``, CI) rich would fall back to 80 columns and split result lines mid-sentence, which
    breaks grep and log parsers; there, text lines are never wrapped (``soft_wrap``) and tables get a
    fixed, wide width so their rules stay intact.
    """
    from rich.console import Console

    stream = file if file is not None else sys.stdout
    if stream.isatty():
        return Console(file=stream, highlight=False)
    return Console(file=stream, highlight=False, soft_wrap=True, width=NON_TERMINAL_WIDTH)


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
        raise MetaedgeError(
            f"{path} is not a valid ONNX model ({type(exc).__name__})", "pass a .onnx file written by `metaedge export` or torch.onnx.export"
        ) from exc
