"""The prune stage: PruningNet training -> evolutionary search -> materialise -> fine-tune.

Everything is written under ``workdir`` (PruningNet checkpoint, search log + state, fine-tune
checkpoint, plot, summary) and a re-run resumes from whatever a killed run left there.
"""

from __future__ import annotations

import copy
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch
import torch.nn as nn

from metaedge.artifacts import atomic_write_json
from metaedge.compress.cost import count_cost
from metaedge.compress.dist import barrier, dist_info
from metaedge.compress.engine import load_checkpoint, progress
from metaedge.compress.finetune import finetune
from metaedge.compress.metapruning.budget import BudgetFn, setup_pruning
from metaedge.compress.metapruning.diagnostic import rank_check
from metaedge.compress.metapruning.plot import plot_search
from metaedge.compress.metapruning.pruningnet import PruningNet
from metaedge.compress.metapruning.sampling import Band, WidthSampler
from metaedge.compress.metapruning.search import SearchConfig, evolutionary_search
from metaedge.compress.metapruning.space import DEFAULT_CHOICES
from metaedge.compress.metapruning.starts import STARTS, start_model
from metaedge.compress.metapruning.training import PNTrainConfig, recalib_batches, score_candidate, train_pruningnet
from metaedge.compress.train import TrainConfig, evaluate
from metaedge.data import DataSplits, make_loader
from metaedge.errors import MetaedgeError

__all__ = ["BudgetFn", "PRESETS", "PruneConfig", "PruneResult", "prune_model"]


@dataclass(frozen=True)
class PruneConfig:
    budget_kind: str = "macs"  # "macs" | "params" | "latency" (latency needs budget_fn)
    budget: float | None = None  # absolute (MACs, params, or the budget_fn's unit); None: half the unpruned cost
    choices: tuple[float, ...] = DEFAULT_CHOICES
    channel_multiple: int = 8
    # PruningNet
    pruningnet_epochs: int = 3
    pruningnet_lr: float = 0.02  # low: the generators start as the trained weights
    hidden: int = 32  # generator hidden size (paper: 32/64)
    init_from_model: bool = True  # generator bias = the given (trained) weights; False: from scratch (paper)
    sandwich: bool = True  # each step: largest + smallest in-band + random in-band, distilled in place
    random_widths: int = 2  # random in-band width vectors per step
    sandwich_largest: str = "full"  # the in-place teacher: the full network ("full") or the band's top ("band")
    band: tuple[float, float] | None = None  # absolute costs the PruningNet trains for; None: around the budget
    batch_size: int = 64
    # search
    population: int = 50
    generations: int = 20
    parents: int = 10
    mutation_prob: float = 0.1
    recalib_batches: int = 20
    search_floor: float = 0.95  # candidates are repaired into [floor * budget, budget] (baselines fill it alike)
    rank_check: int = 0  # structures in the PruningNet rank diagnostic (0: off; the issue asks for >= 10)
    rank_check_epochs: int = 1
    # fine-tune
    finetune_epochs: int = 10
    finetune_lr: float = 0.02
    # fine-tune start: generated, inherited (first k), l1, scratch, or best: each of best_starts fine-tuned
    # and the better kept on val (bench/results/headline.md, ResNet-20 and MobileNetV2 on Fashion-MNIST: the
    # generated start scores best before the fine-tune, the L1 one after it at 50% and 25% MACs, by 0.1-3.3 points)
    start: str = "best"
    best_starts: tuple[str, ...] = ("generated", "l1")
    distill: float = 0.5  # KD weight from the unpruned model (PruningNet training and fine-tune); 0: off
    seed: int = 0  # fine-tune (and search, unless search_seed is set)
    search_seed: int | None = None  # a search shared by several fine-tune seeds (benchmarks)
    pruningnet_seed: int = 0  # apart, so runs with several seeds can share one trained PruningNet

    def __post_init__(self) -> None:
        if self.budget_kind not in ("macs", "params", "latency"):
            raise MetaedgeError(f"unknown prune budget kind {self.budget_kind!r}", "use macs, params or latency")
        if self.budget is not None and not self.budget > 0:
            raise MetaedgeError(f"prune budget must be positive, got {self.budget}", "pass e.g. --prune-macs 0.5 or 20M")
        if not self.choices or any(not 0 < c <= 1 for c in self.choices):
            raise MetaedgeError(f"width choices must lie in (0, 1], got {self.choices}", "use ratios such as 0.1 .. 1.0")
        if self.channel_multiple < 1 or self.population < 1 or self.parents < 1 or self.generations < 0:
            raise MetaedgeError("bad prune search settings", "use channel_multiple, population, parents >= 1 and generations >= 0")
        if not 0 <= self.mutation_prob <= 1 or not 0 <= self.distill < 1:
            raise MetaedgeError("mutation_prob must lie in [0, 1] and distill in [0, 1)", "fix the prune preset")
        if self.start not in (*STARTS, "best"):
            raise MetaedgeError(f"unknown fine-tune start {self.start!r}", f"use one of {', '.join((*STARTS, 'best'))}")
        if not self.best_starts or any(k not in STARTS for k in self.best_starts):
            raise MetaedgeError(f"bad best_starts {self.best_starts!r}", f"name one or more of {', '.join(STARTS)}")
        if self.band is not None:
            Band(*self.band)

    def finetune_config(self) -> TrainConfig:
        """The fine-tune every method ends with (MetaPruning, VIB, uniform, L1, Tucker): same epochs, lr, batch, KD."""
        return TrainConfig(epochs=self.finetune_epochs, batch_size=self.batch_size, lr=self.finetune_lr, distill_alpha=self.distill, seed=self.seed)


PRESETS: dict[str, PruneConfig] = {
    # CPU demo: the whole stage on MobileNetV2 / digits 16x16 in about 2 minutes.
    "demo": PruneConfig(pruningnet_epochs=3, hidden=32, random_widths=1, population=12, generations=3, parents=4, recalib_batches=4, finetune_epochs=4),
    # bench/pruning.py on Fashion-MNIST (CPU-sized: one PruningNet per network serves every budget).
    "bench": PruneConfig(pruningnet_epochs=6, hidden=64, random_widths=2, population=20, generations=6, parents=6, recalib_batches=16, finetune_epochs=6),
    # The paper's search: population 50, 20 generations, top-10 parents, 31 width choices, 100 recalibration batches.
    "full": PruneConfig(
        pruningnet_epochs=32, hidden=64, population=50, generations=20, parents=10, recalib_batches=100, finetune_epochs=60, pruningnet_lr=0.05
    ),
}


@dataclass
class PruneResult:
    model: nn.Module
    widths: dict[str, int]
    macs: int
    params: int
    base_macs: int
    base_params: int
    val_accuracy: float
    search_log: Path
    plot: Path | None
    seconds: dict[str, float] = field(default_factory=dict)
    budget: float = 0.0
    search_accuracy: float = 0.0  # the winner's score with generated weights, before fine-tune
    init: str = "generated"  # which weights the fine-tune started from
    start_accuracy: dict[str, float] = field(default_factory=dict)  # val top-1 of each start, before fine-tune
    rank_check: dict | None = None  # the PruningNet's rank diagnostic (diagnostic.RankCheck.summary())
    finetuned_accuracy: dict[str, float] = field(default_factory=dict)  # val top-1 of each start after the fine-tune (start "best" picks on it)

    def summary(self) -> dict:
        d = {k: v for k, v in asdict(self).items() if k != "model"}
        d["search_log"] = str(self.search_log)
        d["plot"] = str(self.plot) if self.plot else None
        return d


def _signature(analysis) -> dict:
    return {g: [grp.size, grp.prunable] for g, grp in analysis.groups.items()}


def prune_model(
    model: nn.Module,
    data: DataSplits,
    cfg: PruneConfig = PRESETS["demo"],
    workdir: Path | str = Path("metaedge-out/prune"),
    budget_fn: BudgetFn | None = None,
    quiet: bool = False,
    pruningnet_checkpoint: Path | str | None = None,
) -> PruneResult:
    """Prune ``model`` (taken as trained) to ``cfg.budget`` with MetaPruning; returns the fine-tuned small model.

    ``pruningnet_checkpoint``: where the PruningNet is trained to / reused from (default
    ``workdir/pruningnet.pt``); a sweep passes one path for all its budgets, with ``cfg.band`` covering them."""
    workdir = Path(workdir)
    info = dist_info()
    if info.is_main:
        workdir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(cfg.seed)
    seconds: dict[str, float] = {}
    setup = setup_pruning(model, data.train.tensors[0][:1], cfg.budget_kind, cfg.budget, cfg.choices, cfg.channel_multiple, budget_fn)
    model, analysis, space, pricer, cost_fn, budget = setup.model, setup.analysis, setup.space, setup.pricer, setup.cost, setup.budget
    device = torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else torch.device("cpu")

    # 1. PruningNet
    t = time.perf_counter()
    pn = PruningNet(model, analysis, hidden=cfg.hidden, init_from_model=cfg.init_from_model).to(device)
    teacher = copy.deepcopy(model).to(device).eval() if cfg.distill > 0 else None
    pn_cfg = PNTrainConfig(
        TrainConfig(
            epochs=cfg.pruningnet_epochs, batch_size=cfg.batch_size, lr=cfg.pruningnet_lr, weight_decay=0.0, distill_alpha=cfg.distill, seed=cfg.pruningnet_seed
        )
    )
    band = Band(*cfg.band) if cfg.band is not None else Band.around([budget])
    sampler = WidthSampler(space, cost_fn, band, cfg.random_widths, cfg.sandwich, largest=cfg.sandwich_largest)
    pn_ckpt = Path(pruningnet_checkpoint) if pruningnet_checkpoint is not None else workdir / "pruningnet.pt"
    search_log = workdir / "search.jsonl"
    sig = {
        "groups": _signature(analysis),
        "choices": list(space.choices),
        "multiple": cfg.channel_multiple,
        "hidden": cfg.hidden,
        "init_from_model": cfg.init_from_model,
        "sandwich": cfg.sandwich,
        "random_widths": cfg.random_widths,
        "largest": cfg.sandwich_largest,
        "band": [band.lo, band.hi],
        "budget_kind": cfg.budget_kind,
    }
    finished = False
    if pn_ckpt.exists():
        finished = int(load_checkpoint(pn_ckpt).get("epoch", 0)) >= cfg.pruningnet_epochs
    if not finished and info.is_main:
        for stale in (search_log, search_log.with_name("search_state.json"), *workdir.glob("finetune*.pt")):
            stale.unlink(missing_ok=True)  # scores of an older PruningNet are meaningless
    barrier(info)
    train_pruningnet(pn, space, data.train, pn_cfg, pn_ckpt, teacher=teacher, info=info, quiet=quiet, signature=sig, sampler=sampler)
    seconds["pruningnet"] = round(time.perf_counter() - t, 2)
    recalib = recalib_batches(data.train, cfg.batch_size, cfg.recalib_batches, cfg.seed, info)
    ft = cfg.finetune_config()
    start_kind = "generated" if cfg.start == "best" else cfg.start
    check = None
    if cfg.rank_check > 0 and info.is_main:
        t = time.perf_counter()
        check = rank_check(
            pn,
            model,
            analysis,
            space,
            cost_fn,
            budget,
            data,
            recalib,
            replace(ft, epochs=cfg.rank_check_epochs),
            n=cfg.rank_check,
            start=start_kind,
            teacher=teacher,
            floor=cfg.search_floor,
            seed=cfg.seed,
        ).summary()
        seconds["rank_check"] = round(time.perf_counter() - t, 2)

    # 2. search
    t = time.perf_counter()
    describe = lambda w: {"macs": pricer.macs(w), "params": pricer.params(w)}  # noqa: E731
    scfg = SearchConfig(
        population=cfg.population,
        generations=cfg.generations,
        parents=cfg.parents,
        mutation_prob=cfg.mutation_prob,
        floor=cfg.search_floor,
        seed=cfg.seed if cfg.search_seed is None else cfg.search_seed,
    )

    with progress(quiet or not info.is_main) as bar:
        task = bar.add_task("search", total=cfg.generations, info="")

        def on_gen(gen: int, records: list[dict]) -> None:
            best = max(r["accuracy"] for r in records) if records else float("nan")
            bar.update(task, advance=1, info=f"{len(records)} candidates, best {best:.3f}")

        def score(w: dict[str, int], pn: PruningNet = pn) -> dict:
            return score_candidate(pn, w, recalib, data.val, info)

        res = evolutionary_search(space, cost_fn, budget, score, search_log, scfg, describe=describe, write=info.is_main, on_generation=on_gen)
    seconds["search"] = round(time.perf_counter() - t, 2)

    # 3. materialise the winner and fine-tune it. "best": every start of best_starts is fine-tuned and the
    # one with the better val top-1 AFTER the fine-tune is kept: scores right after BN recalibration
    # favour the generated weights (trained for exactly these widths) and do not predict which start
    # ends ahead. The structure is the search's either way.
    t = time.perf_counter()
    val_loader = make_loader(data.val, 256, shuffle=False)
    kinds = tuple(cfg.best_starts) if cfg.start == "best" else (cfg.start,)
    candidates = {k: start_model(k, model, analysis, res.widths, recalib, pn=pn, seed=cfg.seed) for k in kinds}
    del pn
    starts = {k: evaluate(m, val_loader) for k, m in candidates.items()}
    finetuned: dict[str, float] = {}
    for k, m in candidates.items():
        # one checkpoint per structure and start: a re-run with another budget or start must not load this one
        key = [res.widths, cfg.seed] if k == "generated" else [res.widths, cfg.seed, k]
        finetuned[k] = finetune(
            m, data, ft, workdir if info.is_main else None, key, teacher=teacher, quiet=quiet or not info.is_main, desc=f"fine-tune ({k} start)"
        )
    init = max(kinds, key=lambda k: (finetuned[k], k == "generated"))
    small, val_acc = candidates[init], finetuned[init]
    del candidates
    seconds["finetune"] = round(time.perf_counter() - t, 2)
    cost = count_cost(small, setup.input_shape)
    plot = None
    if info.is_main:
        chosen = next(r for r in res.records if tuple(r["genes"]) == res.genes)
        plot = plot_search(res.records, chosen, workdir / "search.png", budget if cfg.budget_kind == "macs" else None)
    result = PruneResult(
        small,
        res.widths,
        cost.macs,
        cost.params,
        pricer.base_macs,
        pricer.base_params,
        val_acc,
        search_log,
        plot,
        seconds,
        budget,
        res.accuracy,
        init,
        starts,
        check,
        finetuned,
    )
    if info.is_main:
        atomic_write_json(workdir / "prune_result.json", result.summary())
    return result
