"""The shared training loop: one schedule on every optimizer, hook order, extra state through a resume, refusals."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn as nn
from torch.utils.data import TensorDataset

from metaedge.compress.engine import CosineSchedule, StepLoss, TrainConfig, TrainHooks, train_loop
from metaedge.data import make_loader
from metaedge.errors import MetaedgeError


def test_schedule_warms_up_linearly_then_follows_half_a_cosine_to_zero():
    s = CosineSchedule(total_steps=10, warmup_steps=4)
    assert [s.lr(0.4, i) for i in range(4)] == pytest.approx([0.1, 0.2, 0.3, 0.4])
    assert s.lr(0.4, 4) == pytest.approx(0.4)
    assert s.lr(0.4, 7) == pytest.approx(0.2)  # half-way through the cosine part
    assert s.lr(0.4, 10) == pytest.approx(0.0, abs=1e-12) and s.lr(0.4, 99) == pytest.approx(0.0, abs=1e-12)
    assert CosineSchedule(0).lr(1.0, 0) == 1.0  # no steps: no division by zero


class _Recorder(TrainHooks):
    """Least squares on a linear model; records the hook calls, each step's rates, and a counter kept as extra state."""

    def __init__(self, model: nn.Module, opts: list[torch.optim.Optimizer]) -> None:
        self.model, self.opts, self.calls, self.lrs, self.steps_seen = model, opts, [], [], 0

    def before_epoch(self, epoch):
        self.calls.append(("epoch", epoch))

    def before_step(self, step):
        self.calls.append(("before", step.global_step))
        self.lrs.append([g["lr"] for o in self.opts for g in o.param_groups])

    def loss(self, x, y, step):
        loss = (self.model(x).squeeze(1) - y).pow(2).mean()
        return StepLoss(loss, {"loss": loss})

    def after_backward(self, step):
        assert all(p.grad is not None for p in self.model.parameters())
        self.calls.append(("backward", step.global_step))

    def after_step(self, step, loss):
        self.steps_seen += 1

    def end_of_epoch(self, epoch):
        return {"steps_seen": self.steps_seen}

    def state_dict(self):
        return {"steps_seen": self.steps_seen}

    def load_state_dict(self, state):
        self.steps_seen = state["steps_seen"]


def _setup(seed: int = 0):
    torch.manual_seed(seed)
    model = nn.Linear(3, 1)
    opts = [torch.optim.SGD([model.weight], lr=0.1), torch.optim.SGD([model.bias], lr=0.01, momentum=0.9)]
    x = torch.randn(40, 3, generator=torch.Generator().manual_seed(0))  # the same data whatever the model's seed
    loader = make_loader(TensorDataset(x, x @ torch.tensor([1.0, -2.0, 0.5])), 8, shuffle=True, seed=0)
    return model, opts, loader, _Recorder(model, opts)


def test_every_optimizer_follows_the_schedule_from_its_own_rate_and_hooks_run_in_order():
    model, opts, loader, hooks = _setup()
    cfg = TrainConfig(epochs=2, lr=0.1, warmup_steps=2)
    res = train_loop(model, loader, opts, cfg, hooks, quiet=True)
    sched = CosineSchedule(2 * len(loader), 2)
    assert hooks.lrs == [[sched.lr(0.1, i), sched.lr(0.01, i)] for i in range(2 * len(loader))]
    assert hooks.calls[:3] == [("epoch", 0), ("before", 0), ("backward", 0)] and ("epoch", 1) in hooks.calls
    assert res.epochs_run == 2 and [r["epoch"] for r in res.history] == [1, 2]
    assert res.history[-1]["loss"] < res.history[0]["loss"] and math.isnan(res.val_accuracy)
    assert res.metrics == {"loss": res.history[-1]["loss"], "steps_seen": 10}


def test_stop_and_resume_matches_an_uninterrupted_run_with_extra_state(tmp_path):
    cfg = TrainConfig(epochs=3, lr=0.1)
    model, opts, loader, hooks = _setup()
    full = train_loop(model, loader, opts, cfg, hooks, quiet=True)
    ckpt = tmp_path / "run.pt"
    model_b, opts_b, loader_b, hooks_b = _setup()
    train_loop(model_b, loader_b, opts_b, cfg, hooks_b, checkpoint=ckpt, stop_after=1, quiet=True)
    model_c, opts_c, loader_c, hooks_c = _setup(seed=1)  # a fresh process: other initial weights, all restored
    res = train_loop(model_c, loader_c, opts_c, cfg, hooks_c, checkpoint=ckpt, quiet=True)
    assert res.epochs_run == 2 and res.history == full.history  # steps_seen came back from the checkpoint
    assert hooks_c.lrs[0] == hooks.lrs[len(loader)]  # the schedule continues from each group's own base rate
    for p, q in zip(model.parameters(), model_c.parameters()):
        torch.testing.assert_close(p, q)
    model_d, opts_d, loader_d, hooks_d = _setup()
    again = train_loop(model_d, loader_d, opts_d, cfg, hooks_d, checkpoint=ckpt, quiet=True)
    assert again.epochs_run == 0 and again.history == full.history and hooks_d.calls == []  # complete: nothing retrained


def test_checkpoints_of_other_settings_or_an_older_layout_are_refused(tmp_path):
    ckpt = tmp_path / "run.pt"
    model, opts, loader, hooks = _setup()
    train_loop(model, loader, opts, TrainConfig(epochs=1), hooks, checkpoint=ckpt, signature={"stage": 1}, what="toy", quiet=True)
    with pytest.raises(MetaedgeError, match="other toy settings"):
        train_loop(model, loader, opts, TrainConfig(epochs=1), hooks, checkpoint=ckpt, signature={"stage": 2}, what="toy", quiet=True)
    with pytest.raises(MetaedgeError, match="other toy settings"):
        train_loop(model, loader, opts, TrainConfig(epochs=1, lr=0.2), hooks, checkpoint=ckpt, signature={"stage": 1}, what="toy", quiet=True)
    state = torch.load(ckpt, weights_only=True)
    torch.save({**state, "format": 1}, ckpt)
    with pytest.raises(MetaedgeError, match="another version of metaedge"):
        train_loop(model, loader, opts, TrainConfig(epochs=1), hooks, checkpoint=ckpt, signature={"stage": 1}, quiet=True)
    ckpt.write_bytes(b"not a torch archive")
    with pytest.raises(MetaedgeError, match="unreadable"):
        train_loop(model, loader, opts, TrainConfig(epochs=1), hooks, checkpoint=ckpt, quiet=True)
    assert train_loop(model, loader, opts, TrainConfig(epochs=1), hooks, checkpoint=ckpt, resume=False, quiet=True).epochs_run == 1
