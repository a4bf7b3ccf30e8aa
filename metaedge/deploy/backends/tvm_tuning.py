"""MetaSchedule tuning for the TVM backend: one persistent database per target, warm-started.

* **One database per target** (``<cache>/tvm-tuning/<target>/``, MetaSchedule's JSON database).
  Records are keyed by the workload (the fused TIR function), so a second model that shares
  layers with the first starts with those layers tuned, and every later compile for the target
  applies whatever is there.
* **Warm start.** Before any search, each task's default schedule (``tvm_schedules``) is built,
  measured and committed as a record. The evolutionary search then starts from it, and since the
  database keeps the fastest record per workload, a tuned model is never slower than the default.
* **Budget.** ``trials`` is the model's total: measurements already in the database for this
  model's tasks count towards it, so compiling the same model again with the same budget tunes
  nothing and takes seconds.
* **Interruptible.** The JSON database appends each measurement as it is made; Ctrl-C stops the
  search and the compile goes on with what was measured.
"""

from __future__ import annotations

import contextlib
import inspect
import linecache
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Callable

from metaedge.errors import MetaedgeError
from metaedge.targets.rpc import parse_device

__all__ = ["TuneProgress", "TuneResult", "count_records", "extract_tasks", "import_tensor_intrinsics", "tune_tasks_in_database"]


@dataclass(frozen=True)
class TuneProgress:
    """One progress report: trials measured in this run (of ``budget``) and the estimated model
    latency (sum over tasks of weight x best measured time) so far."""

    trials: int
    budget: int
    best_ms: float | None


@dataclass(frozen=True)
class TuneResult:
    database: Path
    tasks: int
    trials_before: int  # records for this model's tasks found in the database
    trials_run: int  # measured in this run (default-schedule seeds included)
    seconds: float
    estimated_ms: float | None  # the database's best, summed over the model's tasks
    interrupted: bool = False
    skipped_reason: str | None = None
    seeded: int = 0
    per_task_ms: dict[str, float] = field(default_factory=dict)


@contextlib.contextmanager
def _cheap_inspect_stack():
    """``inspect.stack()`` without source lookups, while TVM's tensor intrinsics import.

    MetaSchedule's CPU rules import ``tvm.s_tir.tensor_intrin``, whose ~200 TVMScript functions
    each call ``inspect.stack()``; every call resolves every frame's module by scanning
    ``sys.modules`` (about 1,900 entries once TVM has imported torch). Measured here: 409 s for
    that import on a busy 2-core machine, 5 s with this stack (the parser only reads each frame's
    locals and first source line, which linecache gives directly)."""
    real = inspect.stack

    def stack(context: int = 1):
        frame: FrameType | None = sys._getframe(1)
        frames: list[inspect.FrameInfo] = []
        while frame is not None:
            code = frame.f_code
            line = linecache.getline(code.co_filename, frame.f_lineno, frame.f_globals) if context else ""
            frames.append(inspect.FrameInfo(frame, code.co_filename, frame.f_lineno, code.co_name, [line] if line else None, 0 if line else None))
            frame = frame.f_back
        return frames

    inspect.stack = stack
    try:
        yield
    finally:
        inspect.stack = real


def import_tensor_intrinsics() -> None:
    if "tvm.s_tir.tensor_intrin" not in sys.modules:
        with _cheap_inspect_stack():
            import tvm.s_tir.tensor_intrin  # noqa: F401


def extract_tasks(mod, tvm_target) -> list:
    """The model's distinct fused TIR functions (MetaSchedule tasks), scheduled ones excluded."""
    from tvm.s_tir import meta_schedule as ms

    return [
        t
        for t in ms.relax_integration.extract_tasks(mod, tvm_target)
        if not t.dispatched[0]["main"].attrs or not t.dispatched[0]["main"].attrs.get("tirx.is_scheduled")
    ]


def _best_secs(database, task) -> tuple[int, float | None]:
    mod = task.dispatched[0]
    if not database.has_workload(mod):
        return 0, None
    records = database.get_top_k(database.commit_workload(mod), 1 << 20)
    if not records:
        return 0, None
    return len(records), min(float(sum(r.run_secs) / len(r.run_secs)) for r in records)


def count_records(database, tasks) -> int:
    return sum(_best_secs(database, t)[0] for t in tasks)


def _estimate_ms(database, tasks) -> tuple[float | None, dict[str, float]]:
    per_task: dict[str, float] = {}
    total = 0.0
    for t in tasks:
        _, best = _best_secs(database, t)
        if best is None:
            return None, per_task
        per_task[t.task_name] = best * 1e3
        total += best * t.weight
    return total * 1e3, per_task


def _seed_defaults(tasks, tvm_target, database, builder, runner, rules) -> int:
    """Build, measure and commit the default schedule of every task without records."""
    from tvm.s_tir import meta_schedule as ms

    todo = []
    for task in tasks:
        if _best_secs(database, task)[0]:
            continue
        func = task.dispatched[0]["main"]
        for rule in rules:
            sch = rule.apply(func, tvm_target, False)
            if sch is not None:
                todo.append((task, sch, ms.arg_info.ArgInfo.from_prim_func(func)))
                break
    if not todo:
        return 0
    built = builder.build([ms.builder.BuilderInput(sch.mod, tvm_target) for _, sch, _ in todo])
    ok = [(item, b) for item, b in zip(todo, built) if b.error_msg is None]
    futures = runner.run([ms.runner.RunnerInput(b.artifact_path, "cpu" if tvm_target.kind.name == "llvm" else "cuda", args) for (_, _, args), b in ok])
    committed = 0
    for ((task, sch, args), _), fut in zip(ok, futures):
        res = fut.result()
        if res.error_msg is not None or not res.run_secs:
            continue
        workload = database.commit_workload(task.dispatched[0])
        database.commit_tuning_record(ms.database.TuningRecord(sch.trace, workload, [float(s) for s in res.run_secs], tvm_target, args))
        committed += 1
    return committed


def _progress_callback(budget: int, report: Callable[[TuneProgress], None], tasks, database):
    from tvm.ir.utils import derived_object
    from tvm.s_tir.meta_schedule.measure_callback import PyMeasureCallback

    @derived_object
    class _Progress(PyMeasureCallback):
        def __init__(self) -> None:
            super().__init__()
            self.trials = 0

        def apply(self, task_scheduler, task_id, measure_candidates, builder_results, runner_results) -> None:
            self.trials += len(runner_results)
            report(TuneProgress(self.trials, budget, _estimate_ms(database, tasks)[0]))

    return _Progress()


def tune_tasks_in_database(
    mod,
    tvm_target,
    db_dir: Path,
    trials: int,
    *,
    rules: list,
    device: str | None = None,
    build_timeout_s: float = 180.0,
    runner_timeout_s: float = 60.0,
    report: Callable[[TuneProgress], None] | None = None,
) -> TuneResult:
    """Tune the fused module ``mod`` (legalized, layout-converted) into the database at ``db_dir``
    until it holds ``trials`` measurements for this model's tasks."""
    from tvm.s_tir import meta_schedule as ms

    t0 = time.perf_counter()
    db_dir = Path(db_dir)
    db_dir.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("TVM_NUM_THREADS", "1")  # measurement workers inherit it: one-thread latency
    import_tensor_intrinsics()
    database = ms.database.JSONDatabase(work_dir=str(db_dir))
    tasks = extract_tasks(mod, tvm_target)
    before = count_records(database, tasks)
    if trials <= before:
        est, per_task = _estimate_ms(database, tasks)
        return TuneResult(
            db_dir,
            len(tasks),
            before,
            0,
            time.perf_counter() - t0,
            est,
            skipped_reason=f"the database already holds {before} measurements for these {len(tasks)} tasks",
            per_task_ms=per_task,
        )
    cross = str(tvm_target.attrs.get("mtriple", "")) if "mtriple" in tvm_target.attrs else ""
    # Candidates for another CPU are linked here with the cross toolchain, then timed on the device.
    f_export = _export_aarch64 if cross.startswith("aarch64") else None
    builder = ms.builder.LocalBuilder(f_build=_fast_build, f_export=f_export, timeout_sec=build_timeout_s)
    if device:
        spec = parse_device(device)
        if spec.key is None:  # MetaSchedule's RPC runner asks a tracker for servers
            raise MetaedgeError(f"tuning device {device!r} has no key", "write it as tracker-host:port/key")
        runner = ms.runner.RPCRunner(ms.runner.RPCConfig(tracker_host=spec.host, tracker_port=spec.port, tracker_key=spec.key, session_timeout_sec=600))
    else:
        runner = ms.runner.LocalRunner(timeout_sec=runner_timeout_s)
    interrupted = False
    seeded = 0
    try:
        seeded = _seed_defaults(tasks, tvm_target, database, builder, runner, rules)
        remaining = trials - before - seeded
        if remaining > 0:
            contexts, weights = ms.relax_integration.extracted_tasks_to_tune_contexts(tasks, str(db_dir), num_threads=1)
            callbacks = ms.measure_callback.MeasureCallback.create("default")
            if report is not None:
                callbacks = list(callbacks) + [_progress_callback(remaining, report, tasks, database)]
            ms.tune.tune_tasks(
                tasks=contexts,
                task_weights=weights,
                work_dir=str(db_dir),
                max_trials_global=remaining,
                num_trials_per_iter=min(64, max(16, remaining // max(1, len(tasks)))),
                builder=builder,
                runner=runner,
                database=database,
                measure_callbacks=callbacks,
            )
    except KeyboardInterrupt:
        interrupted = True  # every measurement so far is already in the JSON files
    est, per_task = _estimate_ms(database, tasks)
    after = count_records(database, tasks)
    return TuneResult(db_dir, len(tasks), before, after - before, time.perf_counter() - t0, est, interrupted=interrupted, seeded=seeded, per_task_ms=per_task)


def _fast_build(mod, target, _params):  # runs inside builder worker processes
    # The stock builder imports tvm.s_tir.tensor_intrin first (~45 s on this class of machine),
    # which blows its timeout for every candidate; plain tvm.compile is enough for CPU/GPU code.
    from tvm.driver import build as tvm_build
    from tvm.s_tir.transform import RemoveWeightLayoutRewriteBlock

    # Same as MetaSchedule's default_build, minus that import.
    return tvm_build(RemoveWeightLayoutRewriteBlock(skip_tensor_rewrite=True)(mod), target=target)


def _export_aarch64(mod) -> str:  # runs inside builder worker processes
    import tempfile

    from metaedge.targets.toolchain import cross_linker

    path = os.path.join(tempfile.mkdtemp(), "tvm_tmp_mod.so")
    mod.export_library(path, fcompile=cross_linker("aarch64-linux-gnu", "aarch64-linux-gnu-g++").fcompile)
    return path
