"""Errors a client caused (bad input): the server answers them with HTTP 4xx, never a crash."""

from __future__ import annotations

__all__ = ["InputError", "UnsupportedContentType"]


class InputError(ValueError):
    """The request's input cannot be run: wrong shape, dtype, encoding or values (HTTP 400)."""


class UnsupportedContentType(InputError):
    """The body's Content-Type is not one the runner decodes (HTTP 415)."""
