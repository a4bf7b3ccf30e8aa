"""Runs the points of a sweep through ``run_pipeline``, resumably, and writes the summary.

Each point is a normal ``metaedge compress`` artifact folder under ``<sweep>/points/<name>/``. A
point whose folder holds a finished manifest written with the same settings is reused as it is; any
other folder of that name is removed and the point recomputed (its long stages still resume from
their checkpoints in the cache). ``sweep.json`` at the sweep's root is rewritten atomically after
every point, so a sweep killed anywhere leaves a summary of the points that finished.

Order: the baseline point (trains or reuses the cached baseline), then the first MetaPruning group
(trains the PruningNet every MetaPruning point shares), then the remaining groups, ``jobs`` at a
time in parallel processes; the points of one group always run one after another (they share the
prune stage's cache).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import asdict, dataclass
from multiprocessing import get_context
from pathlib import Path
from typing import Any

from metaedge.artifacts import MANIFEST_NAME, atomic_write_json
from metaedge.config import PipelineConfig
from metaedge.sweep.config import SweepConfig
from metaedge.sweep.frontier import FrontierRow, pareto_front, plot_frontier, point_row, write_csv
from metaedge.sweep.plan import SweepPoint, plan_points, point_config, point_groups

__all__ = ["FRONTIER_CSV", "FRONTIER_PNG", "SUMMARY_NAME", "SweepResult", "finished_manifest", "frontier_title", "run_sweep"]

SUMMARY_NAME = "sweep.json"
FRONTIER_CSV, FRONTIER_PNG = "frontier.csv", "frontier.png"
Log = Callable[[str], None]


@dataclass
class SweepResult:
    root: Path
    rows: list[FrontierRow]
    summary: dict[str, Any]


def _config_json(cfg: PipelineConfig) -> dict[str, Any]:
    return json.loads(json.dumps(cfg.to_dict(), default=str))  # as run_pipeline writes it into the manifest


def finished_manifest(cfg: PipelineConfig) -> dict[str, Any] | None:
    """The manifest of ``cfg.out`` if that run finished with exactly these settings, else None."""
    path = Path(cfg.out) / MANIFEST_NAME
    try:
        manifest = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    finished = bool((manifest.get("run") or {}).get("finished_utc"))
    return manifest if finished and manifest.get("config") == _config_json(cfg) else None


def _run_point(cfg: PipelineConfig, name: str, quiet: bool) -> dict[str, Any]:
    """One point, in this process or a worker: a fresh folder, the whole pipeline, its manifest."""
    import shutil

    from metaedge.pipeline import run_pipeline

    shutil.rmtree(cfg.out, ignore_errors=True)  # half-written or stale: nothing in it is reused
    res = run_pipeline(cfg, log=lambda m: print(f"[{name}] {m}", flush=True), quiet=quiet)
    return json.loads((res.out_dir / MANIFEST_NAME).read_text())  # as written (with files), like a reused point's


def _worker_init(threads: int) -> None:
    import torch

    torch.set_num_threads(threads)  # a worker per core: more threads each would oversubscribe them


class _Summary:
    """sweep.json: settings, every point's state and frontier row, the shared PruningNet(s)."""

    def __init__(self, cfg: SweepConfig, root: Path, points: list[SweepPoint]) -> None:
        self.cfg, self.root, self.points = cfg, root, points
        self.manifests: dict[str, dict[str, Any]] = {}
        self.state: dict[str, str] = {p.name: "pending" for p in points}

    def done(self, point: SweepPoint, manifest: dict[str, Any], state: str) -> None:
        self.manifests[point.name], self.state[point.name] = manifest, state
        self.write()

    def rows(self) -> list[FrontierRow]:
        return pareto_front([point_row(p, self.manifests[p.name], self.cfg.frontier_target) for p in self.points if p.name in self.manifests])

    def write(self) -> dict[str, Any]:
        rows = {r.point: asdict(r) for r in self.rows()}
        pns = sorted({m["stages"]["prune"]["pruningnet"] for m in self.manifests.values() if "pruningnet" in m.get("stages", {}).get("prune", {})})
        summary = {
            "schema_version": 1,
            "kind": "sweep",
            "settings": {
                "budget_kind": self.cfg.budget_kind,
                "budgets": list(self.cfg.budgets),
                "quants": list(self.cfg.quants),
                "pruners": list(self.cfg.pruners),
                "frontier_target": self.cfg.frontier_target,
                "base": _config_json(self.cfg.base),
            },
            "pruningnets": pns,
            "points": {
                p.name: {"state": self.state[p.name], "folder": f"points/{p.name}", "group": p.group, "series": p.series, "frontier": rows.get(p.name)}
                for p in self.points
            },
            "updated_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        atomic_write_json(self.root / SUMMARY_NAME, summary)
        return summary


def _ordered_groups(points: list[SweepPoint]) -> list[list[SweepPoint]]:
    groups = point_groups(points)  # baseline first (plan order)
    first_mp = next((i for i, g in enumerate(groups) if g[0].pruner == "metapruning"), None)
    if first_mp is not None:
        groups.insert(1, groups.pop(first_mp))
    return groups


def run_sweep(cfg: SweepConfig, log: Log = print, quiet: bool = False) -> SweepResult:
    root = Path(cfg.base.out)
    points = plan_points(cfg)
    configs = {p.name: point_config(cfg, p, root) for p in points}
    check_budgets(configs.values())
    root.mkdir(parents=True, exist_ok=True)
    summary = _Summary(cfg, root, points)
    todo: list[list[SweepPoint]] = []
    ordered = _ordered_groups(points)
    for group in ordered:
        left = []
        for p in group:
            manifest = finished_manifest(configs[p.name])
            if manifest is not None:
                log(f"{p.name}: reused (finished manifest in {configs[p.name].out})")
                summary.done(p, manifest, "reused")
            else:
                left.append(p)
        if left:
            todo.append(left)
    summary.write()
    # The baseline and the PruningNet are built once, in this process, before anything runs in parallel.
    shared_keys = {g[0].group for g in ordered[:2] if g[0].pruner in (None, "metapruning")}
    serial = todo if cfg.jobs == 1 else [g for g in todo if g[0].group in shared_keys]
    for group in serial:
        for p in group:
            log(f"{p.name}: running ({configs[p.name].out})")
            summary.done(p, _run_point(configs[p.name], p.name, quiet), "computed")
    parallel = [g for g in todo if g not in serial]
    if parallel:
        _run_parallel(parallel, configs, summary, min(cfg.jobs, len(parallel)), cfg.base.timing.threads, log, quiet)
    rows = summary.rows()
    write_csv(rows, root / FRONTIER_CSV)
    plot_frontier(rows, root / FRONTIER_PNG, frontier_title(cfg))
    return SweepResult(root, rows, summary.write())


def check_budgets(configs: Iterable[PipelineConfig]) -> None:
    """Every point's model and MACs budget checked before anything trains (one data load): a budget
    the width space cannot reach fails in seconds, not after the points before it have run."""
    from metaedge.data import load_data
    from metaedge.pipeline import check_model_and_budget

    todo = list({(str(c.prune_macs), c.pruner): c for c in configs}.values())
    data = load_data(todo[0].data)  # every point shares the base's data settings
    for c in todo:
        check_model_and_budget(c, data)


def frontier_title(cfg: SweepConfig) -> str:
    where = f"{cfg.frontier_target}" + (f" via {cfg.base.device}" if cfg.base.device else "") if cfg.frontier_target else "ONNX Runtime here"
    return f"{cfg.base.model} on {cfg.base.data.source}: test accuracy vs measured latency on {where}"


def _run_parallel(
    groups: list[list[SweepPoint]], configs: dict[str, PipelineConfig], summary: _Summary, jobs: int, threads: int, log: Log, quiet: bool
) -> None:
    queue = [list(g) for g in groups]
    with ProcessPoolExecutor(jobs, mp_context=get_context("spawn"), initializer=_worker_init, initargs=(threads,)) as pool:
        running: dict[Any, tuple[list[SweepPoint], SweepPoint]] = {}

        def submit(group: list[SweepPoint]) -> None:
            p = group.pop(0)
            log(f"{p.name}: running in a worker ({configs[p.name].out})")
            running[pool.submit(_run_point, configs[p.name], p.name, quiet)] = (group, p)

        for _ in range(jobs):
            submit(queue.pop(0))
        while running:
            finished, _ = wait(running, return_when=FIRST_COMPLETED)
            for fut in finished:
                group, p = running.pop(fut)
                summary.done(p, fut.result(), "computed")
                if group:
                    submit(group)  # the group's next point, on the cache its previous one left
                elif queue:
                    submit(queue.pop(0))
