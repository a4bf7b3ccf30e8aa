"""The model registry (timm style): ``@register_model`` on a factory, ``create_model(name, **kw)``."""

from __future__ import annotations

import difflib
from typing import Callable

import torch.nn as nn

from metaedge.errors import MetaedgeError

__all__ = ["create_model", "list_models", "register_model"]

_MODELS: dict[str, Callable[..., nn.Module]] = {}


def register_model(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
    name = fn.__name__
    if name in _MODELS:
        raise ValueError(f"model {name!r} registered twice")
    _MODELS[name] = fn
    return fn


def list_models() -> list[str]:
    return sorted(_MODELS)


def create_model(name: str, **kwargs) -> nn.Module:
    """Build a registered model. Common kwargs: num_classes, in_chans, input_size, width_mult."""
    if name not in _MODELS:
        close = difflib.get_close_matches(name, _MODELS, n=1)
        hint = f"did you mean {close[0]!r}? " if close else ""
        raise MetaedgeError(
            f"unknown model {name!r}",
            f"{hint}run `metaedge info --list` for the registry, or pass --model pkg.module:factory",
        )
    return _MODELS[name](**kwargs)
