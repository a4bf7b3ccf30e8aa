"""Measuring compiled TVM libraries on remote devices through TVM RPC (:class:`RpcRunner`).

The library is uploaded, loaded by the device's Relax VM and timed there with TVM's
``time_evaluator``, so network round trips are not part of the numbers. Every remote step runs
under a deadline (:func:`metaedge.targets.rpc.call_with_deadline`). Several devices behind one
tracker key are measured in parallel, one worker thread (and one RPC session) per free device,
pulling inputs from a shared queue; results come back in input order.
"""

from __future__ import annotations

import functools
import queue
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from metaedge.deploy.measure.base import MeasureInput, MeasureResult, NotMeasurable, Runner, samples_of
from metaedge.errors import MetaedgeError
from metaedge.latency import TimingConfig
from metaedge.targets.rpc import DeviceSpec, call_with_deadline, connect, free_servers, parse_device

__all__ = ["RpcRunner", "RpcRunnerConfig"]


@dataclass(frozen=True)
class RpcRunnerConfig:
    device: DeviceSpec
    timing: TimingConfig = TimingConfig()
    connect_timeout_s: float = 120.0
    step_timeout_s: float = 300.0  # each upload / load / run / timing step
    max_devices: int | None = None  # cap on parallel devices (None: every free one)

    @classmethod
    def for_device(cls, device: str | DeviceSpec, timing: TimingConfig = TimingConfig(), **kw) -> "RpcRunnerConfig":
        return cls(parse_device(device), timing, **kw)


class RpcRunner(Runner):
    def __init__(self, config: RpcRunnerConfig) -> None:
        self.config = config

    def run(self, inputs: Sequence[MeasureInput]) -> list[MeasureResult]:
        for inp in inputs:  # before any connection: a wrong artifact is the caller's error, not the device's
            _check(inp)
        if not inputs:
            return []
        cfg = self.config
        spec = cfg.device
        n_dev = free_servers(spec) if spec.via_tracker else 1
        n_workers = max(1, min(len(inputs), n_dev or 1, cfg.max_devices or len(inputs)))
        todo: queue.Queue[int] = queue.Queue()
        for i in range(len(inputs)):
            todo.put(i)
        results: list[MeasureResult | None] = [None] * len(inputs)
        errors: list[BaseException] = []

        def worker() -> None:
            try:
                sess = connect(spec, timeout_s=cfg.connect_timeout_s)
                while not errors:
                    try:
                        i = todo.get_nowait()
                    except queue.Empty:
                        return
                    results[i] = self.measure_in(sess, inputs[i])
            except BaseException as exc:  # noqa: BLE001 - re-raised below in the caller's thread
                errors.append(exc)

        if n_workers == 1:
            worker()
        else:
            threads = [threading.Thread(target=worker, name=f"rpc-worker-{k}", daemon=True) for k in range(n_workers)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
        if errors and any(r is None for r in results):
            err = errors[0]
            if isinstance(err, MetaedgeError):
                raise err
            raise MetaedgeError(f"remote measurement on {spec} failed: {err}", "check the devices behind the tracker") from err
        return results  # type: ignore[return-value]

    def measure_in(self, sess, inp: MeasureInput) -> MeasureResult:
        """Upload, load, run the inputs for their outputs, time -- in an open session."""
        import tvm
        from tvm import relax

        from metaedge.deploy.backends.tvm import first_output, time_vm

        _check(inp)
        cfg, spec, art = self.config, self.config.device, inp.artifact
        assert art is not None
        step = cfg.step_timeout_s
        t0 = time.perf_counter()
        lib_path = Path(art.path)
        # A unique remote name: sessions reuse a work dir only per session, but be safe anyway.
        remote_name = f"me_{uuid.uuid4().hex[:8]}_{lib_path.name}"
        call_with_deadline(lambda: sess.upload(str(lib_path), remote_name), step, "uploading the library", spec)
        rlib = call_with_deadline(lambda: sess.load_module(remote_name), step, "loading the library", spec)
        dev = sess.cuda(0) if art.extra.get("device", "cpu") == "cuda" else sess.cpu(0)
        vm = call_with_deadline(lambda: relax.VirtualMachine(rlib, dev), step, "creating the VM", spec)
        xts = [call_with_deadline(functools.partial(tvm.runtime.tensor, s, dev), step, "sending the input", spec) for s in samples_of(inp)]

        def run_main(t: Any) -> np.ndarray:
            return first_output(vm["main"](t))

        outputs = None
        if inp.inputs is not None:
            outputs = np.stack([call_with_deadline(functools.partial(run_main, t), step, "running the model", spec) for t in xts])
        latency = call_with_deadline(lambda: time_vm(vm, dev, xts[0], cfg.timing), step, "timing the model", spec)
        return MeasureResult(latency, outputs, str(spec), time.perf_counter() - t0, inp.tag)


def _check(inp: MeasureInput) -> None:
    if inp.artifact is None or inp.artifact.backend != "tvm":
        what = inp.artifact.backend if inp.artifact is not None else "a model without an artifact"
        raise NotMeasurable(f"{what} cannot be measured over TVM RPC", "measure it with the device runner (metaedge deploy, then metaedge profile --url)")
    if not Path(inp.artifact.path).is_file():
        raise MetaedgeError(f"{inp.artifact.path} does not exist", "compile the model first (metaedge compile --target ... )")
