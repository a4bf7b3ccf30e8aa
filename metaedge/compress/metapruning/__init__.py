"""MetaPruning for any CNN: PruningNet, evolutionary search, materialisation, fine-tune.

Entry point for the pipeline: ``prune_model(model, data, PRESETS["demo"], workdir)``.
"""

from metaedge.compress.metapruning.api import PRESETS, PruneConfig, PruneResult, prune_model
from metaedge.compress.metapruning.materialize import l1_keep, materialize, recalibrate_bn
from metaedge.compress.metapruning.pruningnet import PruningNet
from metaedge.compress.metapruning.search import SearchConfig, SearchResult, evolutionary_search
from metaedge.compress.metapruning.space import DEFAULT_CHOICES, Pricer, WidthSpace, round_width

__all__ = [
    "DEFAULT_CHOICES",
    "PRESETS",
    "Pricer",
    "PruneConfig",
    "PruneResult",
    "PruningNet",
    "SearchConfig",
    "SearchResult",
    "WidthSpace",
    "evolutionary_search",
    "l1_keep",
    "materialize",
    "prune_model",
    "recalibrate_bn",
    "round_width",
]
