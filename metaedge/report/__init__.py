"""Reports: figures (and later tables) built from measurement results. matplotlib is imported lazily."""

from __future__ import annotations

__all__: list[str] = []
