"""Run by test_prune_ddp under torchrun: a few data-parallel PruningNet steps + one candidate score."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
from torch.utils.data import TensorDataset

sys.path.insert(0, str(Path(__file__).parent))
from _prune_models import ALL  # noqa: E402
from metaedge.compress.dist import dist_info  # noqa: E402
from metaedge.compress.graph import analyze_channels  # noqa: E402
from metaedge.compress.metapruning import PruningNet, WidthSpace  # noqa: E402
from metaedge.compress.metapruning.training import PNTrainConfig, recalib_batches, score_candidate, train_pruningnet  # noqa: E402
from metaedge.compress.train import TrainConfig  # noqa: E402

out = Path(sys.argv[1])
torch.set_num_threads(1)
info = dist_info()
torch.manual_seed(0)
model = ALL["residual"]()
g = torch.Generator().manual_seed(0)
x = torch.randn(128, 3, 8, 8, generator=g)
y = torch.randint(0, 5, (128,), generator=g)
ds = TensorDataset(x, y)
a = analyze_channels(model, x[:1])
space = WidthSpace(a, multiple=4)
pn = PruningNet(model, a, hidden=4)
seen_widths = []
orig = pn.set_widths
pn.set_widths = lambda w: (seen_widths.append(dict(w)), orig(w))[1]  # record what each rank trains
hist = train_pruningnet(pn, space, ds, PNTrainConfig(TrainConfig(epochs=2, batch_size=16, weight_decay=0.0)), out / "pn.pt", info=info, quiet=True).history
acc = score_candidate(pn, space.widths(space.smallest()), recalib_batches(ds, 16, 2, 0, info), ds, info)
digest = float(sum(p.double().sum() for p in pn.parameters()))

# the whole prune stage under torchrun: same search on every rank, files from rank 0 only
from dataclasses import replace  # noqa: E402

from metaedge.compress.metapruning import PRESETS, prune_model  # noqa: E402
from metaedge.data import DataSplits  # noqa: E402

data = DataSplits("tiny", TensorDataset(x[:96], y[:96]), TensorDataset(x[96:], y[96:]), TensorDataset(x[96:], y[96:]), 5, 3, 8, [0.0] * 3, [1.0] * 3)
cfg = replace(
    PRESETS["demo"],
    budget=0.5 * 1e9,
    channel_multiple=4,
    pruningnet_epochs=1,
    population=4,
    generations=2,
    parents=2,
    recalib_batches=2,
    finetune_epochs=1,
    batch_size=16,
)
from metaedge.compress.cost import count_cost  # noqa: E402

cfg = replace(cfg, budget=0.4 * count_cost(model, (1, 3, 8, 8)).macs)
res = prune_model(model, data, cfg, out / "prune", quiet=True)
(out / f"rank{info.rank}.json").write_text(
    json.dumps({"world": info.world, "widths": seen_widths, "digest": digest, "acc": acc, "loss": hist[-1]["loss"], "pruned": res.widths, "macs": res.macs})
)
