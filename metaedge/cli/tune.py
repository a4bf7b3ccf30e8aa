"""``metaedge tune``: MetaSchedule-tune a model's TVM tasks into the target's tuning database."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

from metaedge.cli._common import check_onnx_file
from metaedge.errors import MetaedgeError

if TYPE_CHECKING:
    from rich.progress import Progress, TaskID

__all__ = ["add_parser", "run"]


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "tune",
        help="tune the model's TVM kernels for a target (MetaSchedule); later compiles apply the records",
        description="Tune every fused kernel of SOURCE's model.onnx (or an .onnx file) for --target with "
        "MetaSchedule. Records go to the target's database (.metaedge-cache/tvm-tuning/<target>/ "
        "unless --tuning-dir), keyed by kernel, so every later `metaedge compile`/`compress` for "
        "the target applies them and a second model with the same layers starts tuned. --trials "
        "is the model's total: measurements already in the database count. Ctrl-C keeps what "
        "was measured. With --device, candidates are built here and timed on the device.",
    )
    p.add_argument("source", type=Path, nargs="?", default=Path("metaedge-out"), help="artifact directory (default metaedge-out) or an .onnx file")
    p.add_argument("--target", required=True, help="target name (see `metaedge targets`), e.g. x86, rpi4")
    p.add_argument("--trials", type=int, default=500, help="MetaSchedule trials for this model (default 500)")
    p.add_argument("--device", default=None, help="time candidates on a device: tracker-host:port/key")
    p.add_argument("--tuning-dir", type=Path, default=None, help="database folder (default: the target's under the cache)")
    p.add_argument("--cache-dir", type=Path, default=Path(".metaedge-cache"))
    p.add_argument("--threads", type=int, default=1, help="threads the model will run with (default 1)")
    p.add_argument("--targets-file", type=Path, default=None, help="TOML file with extra targets")
    return p


def _resolve_onnx(src: Path) -> Path:
    onnx_path = src / "model.onnx" if src.is_dir() else src
    if src.is_file() and src.suffix != ".onnx":
        raise MetaedgeError(f"{src} is neither an artifact directory nor an .onnx file", "pass the folder written by `metaedge compress` or a model.onnx")
    if not onnx_path.is_file():
        raise MetaedgeError(f"{onnx_path} does not exist", "run `metaedge compress` (or export) first")
    check_onnx_file(onnx_path)
    return onnx_path


def run(args: argparse.Namespace) -> int:
    from metaedge.targets.registry import get_target, load_targets_toml

    if args.trials < 1:
        raise MetaedgeError(f"--trials {args.trials} is below 1", "pass a trial count such as 500")
    if args.threads < 1:
        raise MetaedgeError(f"--threads {args.threads} is below 1", "pass --threads 1 or more")
    if args.targets_file is not None:
        load_targets_toml(args.targets_file)
    target = get_target(args.target)
    if target.is_gpu:
        raise MetaedgeError(
            f"tuning for GPU target {target.name} is not supported here", "compile it untuned (dlight default schedules) with `metaedge compile`"
        )
    if target.measurement == "rpc" and args.device is None:
        raise MetaedgeError(
            f"{target.name} is measured on the device, and no --device was given",
            "pass --device tracker-host:port/key (see `metaedge profile --help` for the tracker)",
        )
    onnx_path = _resolve_onnx(args.source)
    if args.device is not None:
        from metaedge.targets.rpc import parse_device

        if parse_device(args.device).key is None:
            raise MetaedgeError(f"--device {args.device} has no key", "tuning goes through a tracker: tracker-host:port/key")

    from metaedge.deploy.backends.tvm import build_relax_module, tune_module, tuning_dir_for
    from metaedge.onnx_graph import onnx_input_spec

    db = args.tuning_dir or tuning_dir_for(target.name, args.cache_dir)
    name, shape, _ = onnx_input_spec(onnx_path)
    mod = build_relax_module(onnx_path, name, (1,) + tuple(shape[1:]))
    with _Progress(args.trials) as progress:
        res = tune_module(mod, target.tvm(), db, args.trials, device=args.device, threads=args.threads, report=progress.update)
    _print(res, target.name, onnx_path)
    return 130 if res.interrupted else 0


class _Progress:
    """A rich progress bar on a terminal; a line a minute otherwise (CI logs, nohup)."""

    def __init__(self, budget: int) -> None:
        self.budget, self.last = budget, 0.0
        self.bar: Progress | None = None
        self.task: TaskID | None = None

    def __enter__(self) -> "_Progress":
        if sys.stderr.isatty():
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

            self.bar = Progress(TextColumn("tuning"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[best]}"), TimeElapsedColumn(), transient=True)
            self.bar.__enter__()
            self.task = self.bar.add_task("tune", total=self.budget, best="")
        return self

    def update(self, p) -> None:
        best = "" if p.best_ms is None else f"best {p.best_ms:.3f} ms"
        if self.bar is not None:
            assert self.task is not None  # added with the bar
            self.bar.update(self.task, completed=p.trials, total=p.budget, best=best)
        elif time.time() - self.last > 60:
            self.last = time.time()
            print(f"tuning: {p.trials}/{p.budget} trials {best}", file=sys.stderr, flush=True)

    def __exit__(self, *exc) -> None:
        if self.bar is not None:
            self.bar.__exit__(*exc)


def _print(res, target: str, onnx_path: Path) -> None:
    from metaedge.cli._common import console

    c = console()
    est = "unknown" if res.estimated_ms is None else f"{res.estimated_ms:.3f} ms"
    if res.skipped_reason:
        c.print(f"tuning: nothing to do ({res.skipped_reason}); estimated {est}")
    else:
        state = "interrupted, kept" if res.interrupted else "measured"
        c.print(
            f"tuning: {state} {res.trials_run} candidates over {res.tasks} kernels in {res.seconds:.0f} s ({res.seeded} default schedules); estimated {est}"
        )
    c.print(f"database: {res.database}")
    c.print(f"next: metaedge compile --target {target} {onnx_path.parent if onnx_path.name == 'model.onnx' else onnx_path}")
