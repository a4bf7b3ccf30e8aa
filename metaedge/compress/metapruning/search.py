"""Evolutionary search over width vectors (MetaPruning, section 3.3), budgeted and resumable.

Each generation: the top-``parents`` candidates seen so far breed ``mutations`` mutants (each gene
re-drawn with ``mutation_prob``) and ``crossovers`` uniform crossovers; random candidates fill
the population. Candidates over budget are rejected *before* evaluation and redrawn; unlike the
paper, every proposal is first *repaired* towards ``[floor * budget, budget]`` (random genes
narrowed / widened), because with small populations random widths rarely use the budget. Every
evaluated candidate is appended (and flushed) to a JSON-lines log; a restarted search re-reads it,
replays the seeded RNG and re-evaluates nothing it already scored.
"""

from __future__ import annotations

import json
import random
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

from metaedge.artifacts import atomic_write_json
from metaedge.compress.metapruning.space import WidthSpace, repair
from metaedge.errors import MetaedgeError

__all__ = ["SearchConfig", "SearchResult", "evolutionary_search", "read_log"]


@dataclass(frozen=True)
class SearchConfig:
    population: int = 50
    generations: int = 20
    parents: int = 10
    mutation_prob: float = 0.1
    mutations: int | None = None  # default: population // 2
    crossovers: int | None = None  # default: population // 2
    max_tries: int = 200  # per wanted candidate, before giving up on a budget-feasible one
    floor: float = 0.9  # proposals are repaired towards [floor * budget, budget]; 0: plain rejection
    seed: int = 0


@dataclass
class SearchResult:
    genes: tuple[int, ...]
    widths: dict[str, int]
    accuracy: float
    cost: float
    records: list[dict] = field(default_factory=list)
    evaluated: int = 0  # candidates scored by this call (not taken from the log)


def _rank(rec: dict) -> tuple:
    return (-rec["accuracy"], rec.get("loss", 0.0), -rec["cost"])  # best first


def read_log(path: Path) -> list[dict]:
    """The log's complete lines (a line cut by a kill is ignored)."""
    out = []
    if path.exists():
        for line in path.read_text().splitlines():
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return out


def evolutionary_search(
    space: WidthSpace,
    cost_fn: Callable[[dict[str, int]], float],
    budget: float,
    evaluate: Callable[[dict[str, int]], float | dict],
    log_path: Path,
    cfg: SearchConfig = SearchConfig(),
    describe: Callable[[dict[str, int]], dict] | None = None,
    write: bool = True,
    on_generation: Callable[[int, list[dict]], None] | None = None,
) -> SearchResult:
    """Find the width vector of best ``evaluate`` score with ``cost_fn(widths) <= budget``.

    ``evaluate`` returns the accuracy, or a dict with ``accuracy`` and optionally ``loss`` (ties in
    accuracy -- common on small validation sets -- go to the lower loss) plus anything to log."""
    rng = random.Random(cfg.seed)
    if cost_fn(space.widths(space.smallest())) > budget:
        raise MetaedgeError(
            f"the budget {budget:.4g} is below the cost of the narrowest network ({cost_fn(space.widths(space.smallest())):.4g})",
            "raise the budget, or lower the smallest width choice / the channel multiple",
        )
    cache: dict[tuple[int, ...], dict] = {}
    for rec in read_log(log_path):
        cache[tuple(rec["genes"])] = rec
    records: list[dict] = []  # this run's view, in evaluation order
    seen: set[tuple[int, ...]] = set()
    evaluated = 0
    fh = open(log_path, "a") if write else None
    if fh is not None and log_path.stat().st_size and not log_path.read_text().endswith("\n"):
        fh.write("\n")  # a killed run may have left half a line

    def feasible(genes: tuple[int, ...]) -> bool:
        return genes not in seen and cost_fn(space.widths(genes)) <= budget

    def score(genes: tuple[int, ...], gen: int) -> None:
        nonlocal evaluated
        seen.add(genes)
        if genes in cache:
            records.append(cache[genes])
            return
        widths = space.widths(genes)
        t = time.perf_counter()
        out = evaluate(widths)
        extra = out if isinstance(out, dict) else {"accuracy": float(out)}
        rec = {
            "generation": gen,
            "genes": list(genes),
            "widths": widths,
            "cost": cost_fn(widths),
            **extra,
            **(describe(widths) if describe else {}),
            "seconds": round(time.perf_counter() - t, 3),
        }
        evaluated += 1
        cache[genes] = rec
        records.append(rec)
        if fh is not None:
            fh.write(json.dumps(rec) + "\n")
            fh.flush()

    def draw(make: Callable[[], tuple[int, ...]], n: int, gen: int) -> None:
        for _ in range(n):
            for _ in range(cfg.max_tries):
                drawn = make()
                genes = repair(drawn, space, cost_fn, cfg.floor * budget, budget, rng) if cfg.floor > 0 else drawn
                if genes is not None and feasible(genes):
                    score(genes, gen)
                    break

    try:
        for gen in range(cfg.generations):
            top = sorted(records, key=_rank)[: cfg.parents]
            parents = [tuple(r["genes"]) for r in top]
            before = len(records)
            if parents:
                # parents bound as defaults: the closures run within this generation, and say so
                def mutate(parents: list[tuple[int, ...]] = parents) -> tuple[int, ...]:
                    p = rng.choice(parents)
                    return tuple(rng.randrange(len(o)) if rng.random() < cfg.mutation_prob else g for g, o in zip(p, space.options, strict=True))

                def cross(parents: list[tuple[int, ...]] = parents) -> tuple[int, ...]:
                    a, b = rng.choice(parents), rng.choice(parents)
                    return tuple(x if rng.random() < 0.5 else y for x, y in zip(a, b, strict=True))

                draw(mutate, cfg.mutations if cfg.mutations is not None else cfg.population // 2, gen)
                draw(cross, cfg.crossovers if cfg.crossovers is not None else cfg.population // 2, gen)
            draw(lambda: space.sample(rng), max(0, cfg.population - (len(records) - before)), gen)
            if write:
                leaders = sorted(records, key=_rank)[: cfg.parents]
                atomic_write_json(
                    log_path.with_name(log_path.stem + "_state.json"),
                    {"generation": gen + 1, "config": asdict(cfg), "budget": budget, "evaluated": len(records), "top": leaders},
                )
            if on_generation is not None:
                on_generation(gen, records)
    finally:
        if fh is not None:
            fh.close()
    if not records:
        raise MetaedgeError("the search found no width vector within the budget", "raise the budget or add smaller width choices")
    best = min(records, key=_rank)
    return SearchResult(tuple(best["genes"]), {k: int(v) for k, v in best["widths"].items()}, best["accuracy"], best["cost"], records, evaluated)
