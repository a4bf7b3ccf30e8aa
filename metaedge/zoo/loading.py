"""Load user models safely: ``pkg.module:factory``, a state-dict ``--weights`` file, a ``.pt2`` export.

Weights are always read with ``torch.load(weights_only=True)``: a pickle that would run code while
loading is refused, never executed.
"""

from __future__ import annotations

import importlib
import pickle
import warnings
import zipfile
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from metaedge.errors import MetaedgeError
from metaedge.zoo._registry import create_model

__all__ = ["build_model", "load_state_dict_file", "load_exported_program"]


_FIX_WEIGHTS = "pass a file written by torch.save(model.state_dict(), path)"


def _check_torch_archive(path: Path) -> None:
    """Tell a file that is not a torch archive that it is not one, before torch's unpickler calls it
    a pickle that would run code. torch.save writes a zip; very old torch wrote a bare pickle."""
    with open(path, "rb") as fh:
        head = fh.read(4)
    if not head:
        raise MetaedgeError(f"weights file {path} is empty", _FIX_WEIGHTS)
    if head.startswith(b"PK"):
        if not zipfile.is_zipfile(path):
            raise MetaedgeError(f"{path} is a truncated or damaged zip, not a readable torch archive", _FIX_WEIGHTS)
        with zipfile.ZipFile(path) as zf:
            if not any(n.endswith("data.pkl") for n in zf.namelist()):
                raise MetaedgeError(f"{path} is a zip file but not a torch archive (no data.pkl inside)", _FIX_WEIGHTS)
        return
    if head[0] != 0x80:  # pickle protocol 2+ opcode: the legacy torch.save format
        raise MetaedgeError(f"{path} is not a torch archive (neither the zip torch.save writes nor a pickle)", _FIX_WEIGHTS)


def load_state_dict_file(path: Path | str) -> dict[str, torch.Tensor]:
    path = Path(path)
    if not path.is_file():
        raise MetaedgeError(f"weights file {path} does not exist", "check the --weights path")
    _check_torch_archive(path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch warns about pickle protocols before refusing
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise MetaedgeError(
            f"{path} is not a plain state dict: unpickling it would run code, refused",
            "re-save the weights with torch.save(model.state_dict(), path) from code you trust",
        ) from exc
    except (RuntimeError, EOFError, OSError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise MetaedgeError(f"{path} is not a readable torch file ({first})", _FIX_WEIGHTS) from exc
    if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
        obj = obj["state_dict"]  # common checkpoint wrapper
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise MetaedgeError(f"{path} holds a {type(obj).__name__}, not a state dict of tensors", "save model.state_dict(), not the model")
    return obj


def load_exported_program(path: Path | str) -> nn.Module:
    path = Path(path)
    if not path.is_file():
        raise MetaedgeError(f"model file {path} does not exist", "check the --model path")
    try:
        ep = torch.export.load(str(path))
    except Exception as exc:  # torch raises many types for a bad archive
        raise MetaedgeError(
            f"{path} is not a torch.export archive ({type(exc).__name__})", "write it with torch.export.save(torch.export.export(model, (x,)), path)"
        ) from exc
    return ep.module()


def _import_factory(spec: str) -> Any:
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise MetaedgeError(f"--model {spec!r} is neither a registered name nor pkg.module:factory", "run `metaedge info --list` or pass pkg.module:factory")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise MetaedgeError(f"cannot import module {module_name!r} for --model {spec!r} ({exc})", "check PYTHONPATH or install the package") from exc
    factory = getattr(module, attr, None)
    if not callable(factory):
        raise MetaedgeError(f"{module_name} has no callable {attr!r}", "pass pkg.module:factory naming a function or class that returns an nn.Module")
    return factory


def build_model(spec: str, weights: Path | str | None = None, **kwargs: Any) -> nn.Module:
    """Registered name, ``pkg.module:factory`` or a ``.pt2`` file; then optional state-dict weights."""
    if spec.endswith(".pt2"):
        model = load_exported_program(spec)
    elif ":" in spec:
        factory = _import_factory(spec)
        try:
            model = factory(**kwargs)
        except TypeError:
            try:
                model = factory()  # user factories need not take our kwargs
            except TypeError as exc:
                raise MetaedgeError(
                    f"cannot call {spec} ({exc})", "make the factory callable with no arguments or with num_classes/in_chans/input_size"
                ) from exc
    else:
        model = create_model(spec, **kwargs)
    if not isinstance(model, nn.Module):
        raise MetaedgeError(f"--model {spec!r} returned {type(model).__name__}, not an nn.Module", "make the factory return a torch.nn.Module")
    if weights is not None:
        state = load_state_dict_file(weights)
        try:
            model.load_state_dict(state)
        except RuntimeError as exc:
            first = str(exc).splitlines()[0]
            raise MetaedgeError(
                f"weights {weights} do not match model {spec!r} ({first})", "pass the weights saved from this architecture and class count"
            ) from exc
    return model
