"""Tucker-2 factorization of a kxk conv into 1x1 -> kxk -> 1x1, truncated SVD of a linear layer.

A conv kernel W [C_out, C_in, kh, kw] ~ core [r_out, r_in, kh, kw] x_0 U_out [C_out, r_out] x_1 U_in [C_in, r_in]
(TensorLy's ``partial_tucker`` on the two channel modes, HOOI from an SVD start) runs as

    conv1x1(C_in -> r_in, weight U_in^T)  ->  conv kxk(r_in -> r_out, weight core, the original stride / padding / dilation)
    ->  conv1x1(r_out -> C_out, weight U_out, the original bias)

which computes the original conv exactly at full ranks: the first 1x1 is a per-pixel linear map, so it
commutes with every padding mode. A linear layer W [out, in] ~ (U S) V^T runs as Linear(in -> r) -> Linear(r -> out).
"""

from __future__ import annotations

from typing import cast

import numpy as np
import torch
import torch.nn as nn

__all__ = ["svd_linear", "tucker2_conv", "tucker_factors"]


def tucker_factors(
    weight: torch.Tensor, rank_out: int, rank_in: int, n_iter_max: int = 100, tol: float = 1e-6
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(core [r_out, r_in, kh, kw], U_out [C_out, r_out], U_in [C_in, r_in]) of a conv kernel, in float64."""
    import tensorly as tl
    from tensorly.decomposition import partial_tucker

    w = weight.detach().cpu().double().numpy()
    with tl.backend_context("numpy"):
        (core, (u_out, u_in)), _ = partial_tucker(w, rank=[rank_out, rank_in], modes=[0, 1], init="svd", n_iter_max=n_iter_max, tol=tol)
    core_t, u_out_t, u_in_t = (torch.from_numpy(np.ascontiguousarray(a)) for a in (core, u_out, u_in))
    return core_t, u_out_t, u_in_t


@torch.no_grad()
def tucker2_conv(conv: nn.Conv2d, rank_out: int, rank_in: int, n_iter_max: int = 100) -> nn.Sequential:
    """The factorized replacement of ``conv`` (groups == 1) at ranks (``rank_out``, ``rank_in``)."""
    if conv.groups != 1:
        raise ValueError(f"Tucker-2 needs an ungrouped conv, got groups={conv.groups}")
    core, u_out, u_in = tucker_factors(conv.weight, rank_out, rank_in, n_iter_max)
    dtype, device = conv.weight.dtype, conv.weight.device
    first = nn.Conv2d(conv.in_channels, rank_in, 1, bias=False)
    # nn.Conv2d types its size tuples as tuple[int, ...]; a Conv2d's hold two ints
    kernel, stride, dilation = (cast("tuple[int, int]", t) for t in (conv.kernel_size, conv.stride, conv.dilation))
    padding = cast("str | tuple[int, int]", conv.padding)
    mid = nn.Conv2d(rank_in, rank_out, kernel, stride, padding, dilation, bias=False, padding_mode=conv.padding_mode)
    last = nn.Conv2d(rank_out, conv.out_channels, 1, bias=conv.bias is not None)
    first.weight.copy_(u_in.t()[:, :, None, None])
    mid.weight.copy_(core)
    last.weight.copy_(u_out[:, :, None, None])
    if conv.bias is not None:
        assert last.bias is not None  # built with bias=True
        last.bias.copy_(conv.bias)
    return nn.Sequential(first, mid, last).to(device, dtype)


@torch.no_grad()
def svd_linear(linear: nn.Linear, rank: int) -> nn.Sequential:
    """``linear`` as two linears through ``rank`` features (truncated SVD, singular values on the second)."""
    u, s, vh = torch.linalg.svd(linear.weight.detach().double(), full_matrices=False)
    first = nn.Linear(linear.in_features, rank, bias=False)
    last = nn.Linear(rank, linear.out_features, bias=linear.bias is not None)
    first.weight.copy_(vh[:rank])
    last.weight.copy_(u[:, :rank] * s[:rank])
    if linear.bias is not None:
        last.bias.copy_(linear.bias)
    return nn.Sequential(first, last).to(linear.weight.device, linear.weight.dtype)
