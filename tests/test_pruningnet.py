"""PruningNet: generator shapes and cropping, training reduces the loss, checkpoint + resume."""

from __future__ import annotations

import torch
from _prune_models import ALL
from torch.utils.data import TensorDataset

from metaedge.compress.graph import analyze_channels
from metaedge.compress.metapruning import PruningNet, WidthSpace
from metaedge.compress.metapruning.pruningnet import GenLayer
from metaedge.compress.metapruning.training import PNTrainConfig, train_pruningnet
from metaedge.compress.train import TrainConfig

X = torch.randn(2, 3, 8, 8)


def _setup(name="residual", init=True):
    torch.manual_seed(0)
    model = ALL[name]()
    a = analyze_channels(model, X)
    return model, a, WidthSpace(a, multiple=4), PruningNet(model, a, hidden=8, init_from_model=init)


def test_generator_shapes_and_cropping():
    model, a, space, pn = _setup()
    gen = pn.gen_layers()["a1.0"]
    assert isinstance(gen, GenLayer)
    assert gen.fc1.in_features == 2 and gen.fc2.out_features == 32 * 16 * 3 * 3  # [in ratio, out ratio] -> full kernel
    g_in, g_out = a.layers["a1.0"].in_layout.groups[0], a.layers["a1.0"].out_layout.groups[0]
    pn.set_widths({g_in: 8, g_out: 12})
    w, b = gen.cropped()
    assert w.shape == (12, 8, 3, 3)
    torch.testing.assert_close(w, gen.full_weight()[:12, :8])  # w[:out, :in]
    assert pn(X).shape == (2, 5)
    # initialised from the model: at any width the generated weight is the model's weight, cropped
    torch.testing.assert_close(w, model.a1[0].weight[:12, :8])


def test_depthwise_generator_uses_channel_groups():
    _, a, space, pn = _setup("depthwise")
    g = a.layers["dw.0"].out_layout.groups[0]
    pn.set_widths({g: 8})
    w, _ = pn.gen_layers()["dw.0"].cropped()
    assert w.shape == (8, 1, 3, 3)
    assert pn(X).shape == (2, 5)


def test_widths_change_generated_weights_after_training_and_loss_drops(tmp_path):
    torch.manual_seed(0)
    xs = torch.randn(128, 3, 8, 8)
    ys = (xs[:, 0].mean((1, 2)) > 0).long() + 2 * (xs[:, 1].mean((1, 2)) > 0).long()
    ds = TensorDataset(xs, ys)
    _, a, space, pn = _setup(init=False)
    cfg = PNTrainConfig(TrainConfig(epochs=6, batch_size=32, lr=0.05, weight_decay=0.0))
    hist = train_pruningnet(pn, space, ds, cfg, checkpoint=tmp_path / "pn.pt", quiet=True).history
    assert len(hist) == 6 and hist[-1]["loss"] < hist[0]["loss"]
    assert (tmp_path / "pn.pt").exists()


def test_checkpoint_resume_matches_uninterrupted(tmp_path):
    torch.manual_seed(0)
    ds = TensorDataset(torch.randn(64, 3, 8, 8), torch.randint(0, 5, (64,)))
    cfg2 = PNTrainConfig(TrainConfig(epochs=2, batch_size=32, weight_decay=0.0))
    _, _, space, pn_a = _setup()
    train_pruningnet(pn_a, space, ds, cfg2, checkpoint=tmp_path / "a.pt", quiet=True)
    _, _, space, pn_b = _setup()  # stopped ("killed") after epoch 1, then resumed by a fresh process
    train_pruningnet(pn_b, space, ds, cfg2, checkpoint=tmp_path / "b.pt", quiet=True, stop_after=1)
    assert torch.load(tmp_path / "b.pt", weights_only=True)["epoch"] == 1
    _, _, space, pn_c = _setup()
    res = train_pruningnet(pn_c, space, ds, cfg2, checkpoint=tmp_path / "b.pt", quiet=True)
    assert [h["epoch"] for h in res.history] == [1, 2] and res.epochs_run == 1
    for (n, p), (_, q) in zip(pn_a.state_dict().items(), pn_c.state_dict().items()):
        torch.testing.assert_close(p, q, msg=n)
