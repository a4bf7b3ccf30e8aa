"""VIB channel pruning (Dai, Zhu, Guo, Wipf, ICML 2018) on the shared channel groups, budget and fine-tune.

Entry point: ``vib_prune(model, data, PruneConfig(budget=...), VIB PRESETS["demo"], workdir)``.
"""

from metaedge.compress.vib.api import vib_prune
from metaedge.compress.vib.config import PRESETS, VIBConfig
from metaedge.compress.vib.gates import ChannelGates, consumers, fold_gates, gated
from metaedge.compress.vib.select import keep_by_information, ranked
from metaedge.compress.vib.train import train_gates

__all__ = ["ChannelGates", "PRESETS", "VIBConfig", "consumers", "fold_gates", "gated", "keep_by_information", "ranked", "train_gates", "vib_prune"]
