"""Where the final training of a found structure starts: one rule for every method.

- ``generated``: the PruningNet's weights for these widths (MetaPruning's own start);
- ``inherited``: the given model's kept channels (first k, or the channels ``keep`` names);
- ``l1``: the given model's channels of largest filter L1 norm (Li et al., 2017) for these widths;
- ``scratch``: the structure re-initialised (the paper trains the found structure from scratch).

Every start gets its BN statistics re-estimated on the same training batches, so their validation
scores compare like with like.
"""

from __future__ import annotations

import copy
from typing import Mapping, Sequence

import torch
import torch.nn as nn

from metaedge.compress.graph import GraphAnalysis
from metaedge.compress.metapruning.materialize import l1_keep, materialize, recalibrate_bn
from metaedge.compress.metapruning.pruningnet import PruningNet

__all__ = ["STARTS", "start_model"]

STARTS = ("generated", "inherited", "l1", "scratch")


def _reinit(model: nn.Module, seed: int) -> nn.Module:
    torch.manual_seed(seed)
    for m in model.modules():
        reset = getattr(m, "reset_parameters", None)
        if m is not model and callable(reset):
            reset()
    return model


@torch.no_grad()
def start_model(
    kind: str,
    model: nn.Module,
    analysis: GraphAnalysis,
    widths: Mapping[str, int],
    recalib: Sequence[torch.Tensor],
    pn: PruningNet | None = None,
    keep: Mapping[str, torch.Tensor] | None = None,
    seed: int = 0,
) -> nn.Module:
    """The physically small network for ``widths`` with the weights of start ``kind``."""
    keep = keep if keep is not None else analysis.crop_keep(dict(widths))
    if kind == "generated":
        if pn is None:
            raise ValueError("the generated start needs the PruningNet")
        pn.set_widths(dict(widths))
        full = copy.deepcopy(model)
        full.load_state_dict(pn.full_state_dict(model))
        small = materialize(full, analysis, keep)
    elif kind == "inherited":
        small = materialize(model, analysis, keep)
    elif kind == "l1":
        small = materialize(model, analysis, l1_keep(model, analysis, dict(widths)))
    elif kind == "scratch":
        small = _reinit(materialize(model, analysis, keep), seed)
    else:
        raise ValueError(f"unknown start {kind!r}; use one of {STARTS}")
    return recalibrate_bn(small, recalib)
