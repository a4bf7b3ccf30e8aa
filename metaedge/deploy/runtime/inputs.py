"""Decode inputs: ``.npy`` bytes/files and images (resized and normalized per the manifest)."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np

from metaedge.deploy.runtime.errors import InputError, UnsupportedContentType
from metaedge.deploy.runtime.spec import ModelSpec

__all__ = ["IMAGE_SUFFIXES", "IMAGE_TYPES", "NPY_TYPES", "decode_request", "load_image", "load_input_file", "npy_from_bytes"]

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".ppm", ".pgm")
NPY_TYPES = ("application/x-npy", "application/octet-stream")
IMAGE_TYPES = ("image/png", "image/jpeg", "image/bmp", "image/webp")


def npy_from_bytes(data: bytes, spec: ModelSpec) -> np.ndarray:
    """Raw ``.npy`` bytes -> validated batch. ``allow_pickle=False``: a request must never run code."""
    if not data:
        raise InputError("empty body; send a .npy array")
    try:
        arr = np.load(io.BytesIO(data), allow_pickle=False)
    except Exception as exc:  # numpy raises ValueError/OSError/EOFError/UnpicklingError for junk
        raise InputError(f"body is not a valid .npy array ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})") from None
    return spec.validate(arr)


def load_image(source: str | Path | bytes, spec: ModelSpec) -> np.ndarray:
    """Image -> [1, C, H, W] float32: grayscale when C == 1, resized to H x W, scaled to [0, 1],
    then normalized with the manifest's mean/std (the same preprocessing as training)."""
    try:
        from PIL import Image, UnidentifiedImageError
    except ImportError as exc:  # pragma: no cover - Pillow is a runtime requirement
        raise InputError("image inputs need Pillow; pip install pillow, or send .npy") from exc
    c, h, w = spec.chw
    if c not in (1, 3):
        raise InputError(f"images can only feed 1- or 3-channel models, this one takes {c} channels; send .npy")
    try:
        img: Image.Image = Image.open(io.BytesIO(source) if isinstance(source, bytes) else source)
        # Image.BILINEAR is set at import (setattr), so the stubs miss it; Image.Resampling needs Pillow >= 9.1 (distribution Pillow is older)
        img = img.convert("L" if c == 1 else "RGB").resize((w, h), Image.BILINEAR)  # type: ignore[attr-defined]
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise InputError(f"cannot read image ({exc})") from None
    arr = np.asarray(img, dtype=np.float32) / 255.0
    arr = arr[None] if c == 1 else arr.transpose(2, 0, 1)
    mean = np.asarray(spec.mean, dtype=np.float32).reshape(c, 1, 1)
    std = np.asarray(spec.std, dtype=np.float32).reshape(c, 1, 1)
    return spec.validate(((arr - mean) / std).astype(np.float32)[None])


def load_input_file(path: str | Path, spec: ModelSpec) -> np.ndarray:
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path} does not exist")
    if path.suffix.lower() == ".npy":
        return npy_from_bytes(path.read_bytes(), spec)
    if path.suffix.lower() in IMAGE_SUFFIXES:
        return load_image(path, spec)
    raise InputError(f"{path}: unsupported input type {path.suffix!r}; use .npy or an image ({', '.join(IMAGE_SUFFIXES)})")


def decode_request(data: bytes, content_type: str, spec: ModelSpec) -> np.ndarray:
    """An ``/infer`` body -> validated batch: JSON ``{"input": nested list}``, ``.npy`` bytes or an image."""
    if content_type in NPY_TYPES:
        return npy_from_bytes(data, spec)
    if content_type in IMAGE_TYPES:
        return load_image(data, spec)
    if content_type == "application/json":
        try:
            payload = json.loads(data)
        except ValueError as exc:  # bad JSON, bad UTF-8, an integer past Python's 4300-digit limit
            raise InputError(f"body is not valid JSON ({str(exc)[:200]})") from None
        except RecursionError:  # "[[[[...]]]]" nested thousands deep
            raise InputError("body is not valid JSON (nested too deeply)") from None
        if not isinstance(payload, dict) or "input" not in payload:
            raise InputError('JSON body must be an object {"input": [[[[...]]]]}')
        return spec.from_nested_list(payload["input"])
    raise UnsupportedContentType(f"unsupported Content-Type {content_type!r}; use application/json or application/x-npy")
