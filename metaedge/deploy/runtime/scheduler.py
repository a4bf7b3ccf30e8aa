"""A fixed pool of inference threads fed from one queue, with optional dynamic batching.

With ``max_batch > 1`` a worker that takes a request waits up to ``timeout_ms`` for more, and runs
every request it gathered (up to ``max_batch`` samples) as one engine call, then splits the logits
back. One worker gathers at a time while the others run their batches, so gathering overlaps
inference. Callers get a :class:`concurrent.futures.Future` (``asyncio.wrap_future`` awaits it).
The queue itself is unbounded: the server bounds it by admitting at most ``queue_limit`` requests.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Callable, Deque, List, Optional, Tuple

import numpy as np

__all__ = ["Result", "Scheduler"]


@dataclass(frozen=True)
class Result:
    logits: np.ndarray  # this request's rows only
    queue_ms: float  # submitted -> its batch started
    infer_ms: float  # the engine call that ran it (shared by the batch)
    batch: int  # samples in that engine call


@dataclass
class _Item:
    x: np.ndarray
    future: "Future[Result]"
    t_submit: float


class Scheduler:
    def __init__(
        self,
        infer: Callable[[np.ndarray], Tuple[np.ndarray, float]],
        workers: int = 1,
        max_batch: int = 1,
        timeout_ms: float = 0.0,
        on_batch: Optional[Callable[[int, int], None]] = None,
    ) -> None:
        self._infer = infer
        self.max_batch = max(1, max_batch)
        self._timeout_s = max(0.0, timeout_ms) / 1e3
        self._on_batch = on_batch
        self._queue: Deque[_Item] = deque()
        self._cv = threading.Condition()
        self._gather_lock = threading.Lock()
        self._stopping = False
        self.max_depth = 0
        self._threads = [threading.Thread(target=self._work, name=f"metaedge-infer-{i}", daemon=True) for i in range(max(1, workers))]
        for t in self._threads:
            t.start()

    @property
    def depth(self) -> int:
        return len(self._queue)

    def submit(self, x: np.ndarray) -> "Future[Result]":
        fut: "Future[Result]" = Future()
        with self._cv:
            if self._stopping:
                raise RuntimeError("the inference pool is shut down")
            self._queue.append(_Item(x, fut, time.perf_counter()))
            self.max_depth = max(self.max_depth, len(self._queue))
            self._cv.notify()
        return fut

    def stop(self, timeout: float = 5.0) -> None:
        """Finish what is queued, then end the workers."""
        with self._cv:
            self._stopping = True
            self._cv.notify_all()
        end = time.monotonic() + timeout
        for t in self._threads:
            t.join(max(0.0, end - time.monotonic()))

    def _work(self) -> None:
        while True:
            items = self._gather()
            if not items:
                return
            self._run(items)

    def _gather(self) -> List[_Item]:
        with self._gather_lock, self._cv:
            while not self._queue and not self._stopping:
                self._cv.wait()
            if not self._queue:
                return []
            items = [self._queue.popleft()]
            n = items[0].x.shape[0]
            deadline = time.perf_counter() + self._timeout_s
            while n < self.max_batch:
                while self._queue and n + self._queue[0].x.shape[0] <= self.max_batch:
                    item = self._queue.popleft()
                    items.append(item)
                    n += item.x.shape[0]
                remaining = deadline - time.perf_counter()
                if n >= self.max_batch or self._queue or remaining <= 0 or self._stopping:
                    break  # full, the next request would overflow it, or waited long enough
                self._cv.wait(remaining)
            return items

    def _run(self, items: List[_Item]) -> None:
        t0 = time.perf_counter()
        try:
            x = items[0].x if len(items) == 1 else np.concatenate([it.x for it in items], axis=0)
            logits, infer_ms = self._infer(x)
        except BaseException as exc:  # the callers report it; the worker keeps serving
            for it in items:
                _settle(it.future, exc=exc)
            return
        if self._on_batch is not None:
            self._on_batch(int(x.shape[0]), len(items))
        start = 0
        for it in items:
            n = it.x.shape[0]
            _settle(it.future, Result(logits[start : start + n], (t0 - it.t_submit) * 1e3, infer_ms, int(x.shape[0])))
            start += n


def _settle(fut: "Future[Result]", result: Optional[Result] = None, exc: Optional[BaseException] = None) -> None:
    if not fut.set_running_or_notify_cancel():
        return  # the caller gave up (client disconnected)
    try:
        if exc is not None:
            fut.set_exception(exc)
        else:
            fut.set_result(result)  # type: ignore[arg-type]
    except RuntimeError:  # the event loop awaiting it closed during a forced shutdown
        pass
