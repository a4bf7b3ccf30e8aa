"""Errors a client caused (bad input): the server answers them with HTTP 400, never a crash."""
from __future__ import annotations

__all__ = ["InputError"]


class InputError(ValueError):
    """The request's input cannot be run: wrong shape, dtype, encoding or values."""
