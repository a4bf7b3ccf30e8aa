"""The shared training loop: it learns, checkpoints every epoch and resumes after a kill."""

import pytest
import torch

from metaedge.compress.train import TrainConfig, fit
from metaedge.data import make_loader
from metaedge.errors import MetaedgeError
from metaedge.zoo import create_model


class _KilledLoader:
    """Yields the wrapped loader's batches, then dies mid-epoch like a killed process."""

    def __init__(self, loader, die_after: int):
        self.loader, self.die_after, self.generator = loader, die_after, loader.generator
        self.seen = 0

    def __len__(self):
        return len(self.loader)

    def __iter__(self):
        for batch in self.loader:
            if self.seen == self.die_after:
                raise KeyboardInterrupt
            self.seen += 1
            yield batch


def _model():
    torch.manual_seed(0)
    return create_model("resnet20", num_classes=10, in_chans=1, width_mult=0.25, input_size=8)


def test_learns_digits(digits_small):
    model = _model()
    cfg = TrainConfig(epochs=4, batch_size=32, lr=0.1, channels_last=False)
    res = fit(model, make_loader(digits_small.train, 32, True), make_loader(digits_small.val, 256, False), cfg, quiet=True)
    assert res.val_accuracy > 0.6  # chance is 0.1
    assert res.history[-1]["loss"] < res.history[0]["loss"]


def test_resume_after_kill(digits_small, tmp_path):
    cfg = TrainConfig(epochs=2, batch_size=64, lr=0.05, channels_last=False)
    ckpt = tmp_path / "ckpt.pt"
    train = make_loader(digits_small.train, 64, True)
    val = make_loader(digits_small.val, 256, False)
    model = _model()
    with pytest.raises(KeyboardInterrupt):
        fit(model, _KilledLoader(train, die_after=len(train) + 3), val, cfg, checkpoint=ckpt, quiet=True)
    state = torch.load(ckpt, weights_only=True)
    assert state["epoch"] == 1  # epoch 1 finished and was saved; epoch 2 died half-way
    resumed = _model()
    res = fit(resumed, train, val, cfg, checkpoint=ckpt, quiet=True)
    assert res.epochs_run == 1 and [h["epoch"] for h in res.history] == [1, 2]
    assert res.history[0] == state["history"][0]
    assert torch.load(ckpt, weights_only=True)["epoch"] == 2


def test_resume_with_other_settings_refused(digits_small, tmp_path):
    ckpt = tmp_path / "ckpt.pt"
    loader = make_loader(digits_small.val, 256, False)
    fit(_model(), loader, loader, TrainConfig(epochs=1, channels_last=False), checkpoint=ckpt, quiet=True)
    with pytest.raises(MetaedgeError, match="other training settings"):
        fit(_model(), loader, loader, TrainConfig(epochs=2, channels_last=False), checkpoint=ckpt, quiet=True)
