"""On-disk cache of measured latencies, keyed by (model sha256, target, backend[, variant]).

Measuring on a device costs seconds to minutes; the same bytes on the same target give the same
answer, so results are kept in one JSON file. Writes are atomic (temp file + rename) and guarded
by a lock file, so parallel measurement threads and processes never corrupt it; the last writer of
a given key wins.
"""

from __future__ import annotations

import fcntl
import json
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from metaedge.artifacts import atomic_write_json
from metaedge.latency import LatencyStats

__all__ = ["DEFAULT_CACHE", "LatencyCache", "cache_key"]

DEFAULT_CACHE = Path(".metaedge-cache") / "latency.json"


def cache_key(model_sha256: str, target: str, backend: str, variant: str = "") -> str:
    return "|".join([model_sha256, target, backend] + ([variant] if variant else []))


class LatencyCache:
    def __init__(self, path: Path | str = DEFAULT_CACHE) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()

    @contextmanager
    def _locked(self) -> Iterator[None]:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self._lock, open(self.path.with_name(self.path.name + ".lock"), "a+") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)

    def _read(self) -> dict[str, Any]:
        try:
            data = json.loads(self.path.read_text())
            return data if isinstance(data, dict) else {}
        except (FileNotFoundError, json.JSONDecodeError):
            return {}  # a missing or damaged cache is just empty: entries are re-measured

    def get(self, model_sha256: str, target: str, backend: str, variant: str = "") -> dict[str, Any] | None:
        with self._locked():
            return self._read().get(cache_key(model_sha256, target, backend, variant))

    def get_latency(self, model_sha256: str, target: str, backend: str, variant: str = "") -> LatencyStats | None:
        entry = self.get(model_sha256, target, backend, variant)
        return LatencyStats(**entry["latency"]) if entry and "latency" in entry else None

    def put(self, model_sha256: str, target: str, backend: str, latency: LatencyStats | dict[str, Any], variant: str = "", **extra: Any) -> None:
        lat = latency.to_dict() if isinstance(latency, LatencyStats) else dict(latency)
        with self._locked():
            data = self._read()
            data[cache_key(model_sha256, target, backend, variant)] = {"latency": lat, "measured_at": time.time(), **extra}
            atomic_write_json(self.path, data)

    def put_many(self, entries: dict[str, dict[str, Any]]) -> None:
        """Merge raw ``{key: entry}`` items in one write (bulk results of a latency table)."""
        with self._locked():
            data = self._read()
            data.update(entries)
            atomic_write_json(self.path, data)

    def items(self) -> dict[str, Any]:
        with self._locked():
            return self._read()
