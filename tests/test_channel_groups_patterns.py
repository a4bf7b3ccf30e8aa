"""Channel splits, training-only modules and pass-through functions: analysis, PruningNet, materialise."""

from __future__ import annotations

import copy
import warnings

import pytest
import torch
import torch.fx
import torch.nn as nn
import torch.nn.functional as F

from _prune_models import cbr, randomize_bn
from metaedge.compress.graph import GraphAnalysis, analyze_channels, register_passthrough
from metaedge.compress.metapruning import PruningNet, WidthSpace, materialize

X = torch.randn(4, 3, 8, 8)


def analyze(model: nn.Module) -> tuple[GraphAnalysis, list[str]]:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        a = analyze_channels(model, X)
    return a, [str(w.message) for w in caught if "full width" in str(w.message)]


def out_group(a: GraphAnalysis, module: str) -> str:
    (g,) = a.layers[module].out_layout.groups
    return g


def check_prunes(model: nn.Module, a: GraphAnalysis, train_equal: bool = True) -> dict[str, int]:
    """At the smallest widths: PruningNet runs in train and eval mode, the materialised model runs
    with the same shapes and computes what the PruningNet computes."""
    torch.manual_seed(0)
    randomize_bn(model)
    space = WidthSpace(a)
    widths = space.widths(space.smallest())
    assert widths and all(w < a.groups[g].size for g, w in widths.items())
    pn = PruningNet(model, a, hidden=4, init_from_model=False)
    pn.set_widths(widths)
    full = copy.deepcopy(model)
    full.load_state_dict(pn.full_state_dict(model))
    small = materialize(full, a, a.crop_keep(widths))
    pn.eval(), small.eval(), model.eval()
    got, want = pn(X), small(X)
    assert got.shape == want.shape == model(X).shape
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-4)
    pn.train(), small.train()  # last: the materialised BN updates its running statistics
    got, want = pn(X), small(X)
    assert [t.shape for t in _tensors(got)] == [t.shape for t in _tensors(want)]
    if train_equal:  # batch-statistics BN on both sides
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-4)
    return widths


def _tensors(out: torch.Tensor | tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
    return out if isinstance(out, tuple) else (out,)


# --- 1. splits along channels -------------------------------------------------------------------


class ChunkOfConcat(nn.Module):
    """cat of two groups, chunked back at the group boundary: each piece takes its group."""

    def __init__(self, how: str = "chunk") -> None:
        super().__init__()
        self.how = how
        self.stem = cbr(3, 16)
        self.left, self.right = cbr(16, 16, 1), cbr(16, 16, 3)
        self.p, self.q = cbr(16, 24, 1), cbr(16, 24, 3)
        self.fc = nn.Linear(24, 5)

    def forward(self, x):
        x = self.stem(x)
        y = torch.cat([self.left(x), self.right(x)], 1)
        a, b = y.chunk(2, dim=1) if self.how == "chunk" else torch.tensor_split(y, 2, dim=1)
        return self.fc((self.p(a) + self.q(b)).mean((2, 3)))


class ChunkOfOneGroup(nn.Module):
    """x.chunk(2, 1) of one conv output: the split cuts a group in two -> that group stays whole."""

    def __init__(self, how: str = "chunk") -> None:
        super().__init__()
        self.how = how
        self.stem = cbr(3, 32)
        self.a, self.b = cbr(16, 16, 1), cbr(16, 16, 3)
        self.fc = nn.Linear(32, 5)

    def forward(self, x):
        x = self.stem(x)
        if self.how == "chunk":
            p, q = x.chunk(2, dim=1)
        elif self.how == "split":
            p, q = torch.split(x, 16, dim=1)
        else:  # unbind: 32 single channels
            parts = x.unbind(1)
            p, q = torch.stack(parts[:16], 1), torch.stack(parts[16:], 1)
        return self.fc(torch.cat([self.a(p), self.b(q)], 1).mean((2, 3)))


class SplitConstSizes(nn.Module):
    """split([16, 16]) at the group boundary of a cat: the sizes are constants, so they cannot follow pruning."""

    def __init__(self) -> None:
        super().__init__()
        self.left, self.right = cbr(3, 16, 1), cbr(3, 16, 3)
        self.p, self.q = cbr(16, 24, 1), cbr(16, 24, 1)
        self.head = cbr(24, 16, 1)
        self.fc = nn.Linear(16, 5)

    def forward(self, x):
        a, b = torch.split(torch.cat([self.left(x), self.right(x)], 1), [16, 16], dim=1)
        return self.fc(self.head(self.p(a) + self.q(b)).mean((2, 3)))


class SpatialSplit(nn.Module):
    """Splits along H and W keep all channels in every piece."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = cbr(3, 16)
        self.top, self.bottom = cbr(16, 24, 1), cbr(16, 24, 1)
        self.fc, self.fc_row = nn.Linear(24, 5), nn.Linear(16, 5)

    def forward(self, x):
        x = self.stem(x)
        t, b = x.chunk(2, dim=2)
        left, right = torch.split(x, 4, dim=3)
        rows = x.unbind(2)
        x = x + torch.cat([left, right], 3) + torch.cat([t, b], 2)
        y = torch.cat([self.top(t), self.bottom(b)], 2)
        return self.fc(y.mean((2, 3))) + self.fc_row(rows[0].mean(2))  # rows: N x C x W


@pytest.mark.parametrize("how", ["chunk", "tensor_split"])
def test_chunk_at_group_boundaries_gives_each_piece_its_group(how):
    model = ChunkOfConcat(how)
    a, warns = analyze(model)
    assert not warns
    left, right = out_group(a, "left.0"), out_group(a, "right.0")
    assert left == right  # tied: the runtime chunk(2) stays at the boundary at every width
    assert a.layers["p.0"].in_layout.groups == a.layers["q.0"].in_layout.groups == (left,)
    assert a.groups[left].prunable
    widths = check_prunes(model, a)
    assert widths[left] < 16


@pytest.mark.parametrize("how", ["chunk", "split", "unbind"])
def test_channel_split_inside_a_group_fixes_it_with_one_warning(how):
    model = ChunkOfOneGroup(how)
    a, warns = analyze(model)
    assert len(warns) == 1 and {"chunk": "chunk", "split": "split", "unbind": "unbind"}[how] in warns[0]
    stem = out_group(a, "stem.0")
    assert not a.groups[stem].prunable
    assert stem in warns[0]
    assert a.groups[out_group(a, "a.0")].prunable and a.groups[out_group(a, "b.0")].prunable
    check_prunes(model, a)


def test_split_with_constant_sizes_fixes_its_input_even_at_group_boundaries():
    model = SplitConstSizes()
    a, warns = analyze(model)
    assert len(warns) == 1 and "split" in warns[0]
    assert not a.groups[out_group(a, "left.0")].prunable and not a.groups[out_group(a, "right.0")].prunable
    assert a.groups[out_group(a, "p.0")].prunable
    check_prunes(model, a)


def test_spatial_splits_pass_the_layout_through():
    model = SpatialSplit()
    a, warns = analyze(model)
    assert not warns
    stem = out_group(a, "stem.0")
    assert a.groups[stem].prunable
    assert a.layers["top.0"].in_layout.groups == a.layers["bottom.0"].in_layout.groups == (stem,)
    assert out_group(a, "top.0") == out_group(a, "bottom.0")  # cat along H merges them
    check_prunes(model, a)


# --- 2. modules that run only in training mode --------------------------------------------------


class AuxHead(nn.Module):
    """An auxiliary classifier on a middle feature map, run only while training (GoogLeNet-style)."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = cbr(3, 16)
        self.mid = cbr(16, 24)
        self.aux = nn.Sequential(nn.Conv2d(24, 16, 1), nn.BatchNorm2d(16), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(1), nn.Linear(16, 5))
        self.head = cbr(24, 32)
        self.fc = nn.Linear(32, 5)

    def forward(self, x):
        x = self.mid(self.stem(x))
        out = self.fc(self.head(x).mean((2, 3)))
        if self.training:
            return out, self.aux(x)
        return out


@pytest.mark.parametrize("mode", ["eval", "train"])
def test_training_only_modules_are_analysed_whatever_the_mode_at_analysis(mode):
    model = AuxHead().train(mode == "train")
    a, warns = analyze(model)
    assert not warns
    assert model.training == (mode == "train")  # the caller's mode is restored
    mid = out_group(a, "mid.0")
    assert a.groups[mid].prunable
    assert a.layers["aux.0"].in_layout.groups == (mid,)
    assert a.layers["aux.5"].in_layout.groups == (out_group(a, "aux.0"),)
    assert not a.groups[out_group(a, "aux.5")].prunable  # a model output
    assert list(a.layers)[-1].startswith("aux")  # eval-mode layers first
    widths = check_prunes(model, a)
    assert widths[mid] < 24


def test_frozen_submodule_mode_is_restored():
    model = AuxHead().train()
    model.stem[1].eval()  # e.g. frozen BN
    analyze(model)
    assert model.training and not model.stem[1].training and model.mid[1].training


# --- 3. pass-through functions and modules ------------------------------------------------------


@register_passthrough
def drop_path(x: torch.Tensor, p: float, training: bool) -> torch.Tensor:
    """Stochastic depth (per-sample), written as timm does; opaque to fx because it is wrapped."""
    if p == 0.0 or not training:
        return x
    keep = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(1 - p)
    return x * keep / (1 - p)


def channel_scale(x: torch.Tensor) -> torch.Tensor:
    """Same shape as its input, but nobody declared it channel-preserving (it could mix channels)."""
    return x * 2.0


torch.fx.wrap("drop_path")
torch.fx.wrap("channel_scale")


class DropPath(nn.Module):
    """A timm-style DropPath module, *not* registered: traced through (random mask in training mode)."""

    def __init__(self, p: float) -> None:
        super().__init__()
        self.p = p

    def forward(self, x):
        if self.p == 0.0 or not self.training:
            return x
        keep = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(1 - self.p)
        return x * keep.div_(1 - self.p)


class OpaqueDrop(nn.Module):
    """A module the tracer would look into; registered, it is a leaf and passes its layout through."""

    def forward(self, x):
        return F.dropout(x, 0.1, self.training) if self.training else x


register_passthrough(OpaqueDrop)


class Stochastic(nn.Module):
    """Residual stage whose branches go through drop path (function, module, registered module)."""

    def __init__(self, fn: str = "drop_path") -> None:
        super().__init__()
        self.fn = fn
        self.stem = cbr(3, 16)
        self.b1 = nn.Sequential(cbr(16, 24), nn.Conv2d(24, 16, 3, 1, 1), nn.BatchNorm2d(16))
        self.b2 = nn.Sequential(cbr(16, 24), nn.Conv2d(24, 16, 3, 1, 1), nn.BatchNorm2d(16))
        self.dp, self.od = DropPath(0.2), OpaqueDrop()
        self.fc = nn.Linear(16, 5)

    def forward(self, x):
        x = self.stem(x)
        wrapped = drop_path if self.fn == "drop_path" else channel_scale
        x = x + (wrapped(self.b1(x), 0.2, self.training) if self.fn == "drop_path" else wrapped(self.b1(x)))
        x = x + self.od(self.dp(self.b2(x)))
        return self.fc(x.mean((2, 3)))


def test_registered_drop_path_keeps_the_residual_stage_prunable():
    model = Stochastic()
    a, warns = analyze(model)
    assert not warns
    stage = out_group(a, "stem.0")
    assert a.groups[stage].prunable
    assert out_group(a, "b1.2") == out_group(a, "b2.2") == stage
    assert a.layers["od"].kind == "other" and a.layers["od"].in_layout.groups == (stage,)  # traced as a leaf
    widths = check_prunes(model, a, train_equal=False)  # drop path is random while training
    assert widths[stage] < 16


def test_unregistered_same_shape_function_stays_fixed_and_names_register_passthrough():
    model = Stochastic("channel_scale")
    a, warns = analyze(model)
    assert len(warns) == 1
    assert "channel_scale" in warns[0] and "register_passthrough" in warns[0]
    assert not a.groups[out_group(a, "stem.0")].prunable
    assert a.groups[out_group(a, "b1.0.0")].prunable
    check_prunes(model, a, train_equal=False)


def test_register_passthrough_rejects_non_callables_and_instances():
    with pytest.raises(TypeError):
        register_passthrough(int)
    with pytest.raises(TypeError):
        register_passthrough(nn.ReLU())
    with pytest.raises(TypeError):
        register_passthrough(3)


class ScaledDrop(nn.Module):
    """Registered by mistake although it holds a per-channel parameter: still treated as unknown."""

    def __init__(self) -> None:
        super().__init__()
        self.gamma = nn.Parameter(torch.ones(16, 1, 1))

    def forward(self, x):
        return x * self.gamma


register_passthrough(ScaledDrop)


class WithScaledDrop(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = cbr(3, 16)
        self.s = ScaledDrop()
        self.head = cbr(16, 24)
        self.fc = nn.Linear(24, 5)

    def forward(self, x):
        return self.fc(self.head(self.s(self.stem(x))).mean((2, 3)))


def test_registered_module_with_parameters_is_not_passed_through():
    model = WithScaledDrop()
    a, warns = analyze(model)
    assert len(warns) == 1 and "ScaledDrop" in warns[0]
    assert not a.groups[out_group(a, "stem.0")].prunable
    check_prunes(model, a)


# --- a module called twice (and, the same way, a module seen in both traces) --------------------


class SharedConv(nn.Module):
    """One conv applied to two different branches: both of its inputs must keep the same channels."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = cbr(3, 16), cbr(3, 16, 1)
        self.shared = nn.Conv2d(16, 24, 3, 1, 1)
        self.fc = nn.Linear(24, 5)

    def forward(self, x):
        return self.fc((self.shared(self.a(x)) + self.shared(self.b(x))).mean((2, 3)))


def test_module_called_twice_ties_its_inputs():
    model = SharedConv()
    a, warns = analyze(model)
    assert not warns
    assert out_group(a, "a.0") == out_group(a, "b.0") == a.layers["shared"].in_layout.groups[0]
    assert a.groups[out_group(a, "a.0")].prunable
    check_prunes(model, a)
