"""MEND's editor network: maps each token's gradient factors ``(u_t, δ_t)`` to ``(ũ_t, δ̃_t)``.

The fine-tuning gradient of a weight ``W`` (math layout ``(d_out, d_in)``) on one example is a
sum of rank-one terms, one per token: ``∇W L = Σ_t δ_t u_tᵀ`` with ``u_t`` the layer's input and
``δ_t = ∂L/∂(W u_t)`` the gradient at its output.  MEND (Mitchell et al., *Fast Model Editing at
Scale*, ICLR 2022) edits with

    x_t        = [ (u_t − μ_u) / σ_u ; (δ_t − μ_δ) / σ_δ ]        per-feature running statistics
    x_t        ← x_t + act( ((B A x_t + b) ⊙ (1 + s_m)) + h_m )   per residual layer (rank r)
    [ũ_t; δ̃_t] = x_t
    ΔW         = −η_m Σ_t δ̃_t ũ_tᵀ                                 η_m learned, one per edited weight

One network is shared by all edited weights of the same shape; ``m`` indexes the weight within
its shape group (its scale ``s_m`` and shift ``h_m`` are learned, zero at start).  ``B`` starts at
zero, so before training the network is the identity; with the statistics at their initial values
(μ = 0, σ = 1) the update is then exactly the gradient step ``−η ∇W L``.  Hidden residual layers
use a ReLU, the last one is linear (so the output is not confined to ``x`` plus a non-negative
term).

The statistics are Welford running means over every token seen while training (``training``
mode); at edit time (``eval`` mode) they are frozen.

Example::

    net = MENDNetwork({"h.0.mlp.c_proj.weight": (512, 128)}, rank=64, n_hidden=1, edit_lr=1e-3)
    u_t, d_t = net.transform("h.0.mlp.c_proj.weight", u, delta)     # (T, 512), (T, 128)
    step = net.step_size("h.0.mlp.c_proj.weight")                    # ΔW = −step · Σ_t d_t u_tᵀ
"""
from __future__ import annotations

import math
from collections.abc import Mapping

import torch
from torch import nn

from ..errors import EditorError

__all__ = ["RunningNorm", "LowRankResidual", "GradientMapper", "MENDNetwork", "shape_key"]


def shape_key(d_in: int, d_out: int) -> str:
    """Name of the shared network of weights with input width ``d_in`` and output width ``d_out``."""
    return f"{d_in}x{d_out}"


class RunningNorm(nn.Module):
    """Per-feature standardisation with Welford running statistics (updated in ``training`` mode).

    Buffers: ``count`` (float64 scalar), ``mean`` and ``m2`` (float64, ``(dim,)``).  With fewer than
    two samples seen, the mean is 0 and the standard deviation 1 (the identity).
    """

    def __init__(self, dim: int, eps: float = 1e-7) -> None:
        super().__init__()
        self.eps = eps
        self.register_buffer("count", torch.zeros((), dtype=torch.float64))
        self.register_buffer("mean", torch.zeros(dim, dtype=torch.float64))
        self.register_buffer("m2", torch.zeros(dim, dtype=torch.float64))

    @torch.no_grad()
    def update(self, x: torch.Tensor) -> None:
        """Add the rows of ``x`` ``(n, dim)`` to the statistics (Chan et al.'s batched Welford update)."""
        n = x.shape[0]
        if n == 0:
            return
        x = x.detach().double()
        batch_mean = x.mean(0)
        batch_m2 = ((x - batch_mean) ** 2).sum(0)
        total = self.count + n
        diff = batch_mean - self.mean
        self.mean += diff * (n / total)
        self.m2 += batch_m2 + diff ** 2 * (self.count * n / total)
        self.count.fill_(total)

    def stats(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(mean, std)`` (float64); ``(0, 1)`` until two samples were seen."""
        if self.count < 2:
            return torch.zeros_like(self.mean), torch.ones_like(self.mean)
        return self.mean, (self.m2 / (self.count - 1)).sqrt()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training:
            self.update(x)
        mean, std = self.stats()
        return (x - mean.to(x.device, x.dtype)) / (std.to(x.device, x.dtype) + self.eps)


class LowRankResidual(nn.Module):
    """``x + act(((B A x + b) ⊙ (1 + scale[m])) + shift[m])``; ``B`` zero at start (identity).

    ``A``: ``(rank, dim)`` (Kaiming-uniform), ``B``: ``(dim, rank)`` (zeros), ``b``: ``(dim,)``;
    ``scale``/``shift``: ``(n_modes, dim)`` zeros.
    """

    def __init__(self, dim: int, rank: int, n_modes: int, relu: bool) -> None:
        super().__init__()
        rank = min(rank, dim)
        self.relu = relu
        self.down = nn.Parameter(torch.empty(rank, dim))
        nn.init.kaiming_uniform_(self.down, a=math.sqrt(5))
        self.up = nn.Parameter(torch.zeros(dim, rank))
        self.bias = nn.Parameter(torch.zeros(dim))
        self.scale = nn.Parameter(torch.zeros(n_modes, dim))
        self.shift = nn.Parameter(torch.zeros(n_modes, dim))

    def forward(self, x: torch.Tensor, mode: int) -> torch.Tensor:
        pre = (x @ self.down.T) @ self.up.T + self.bias
        pre = pre * (1 + self.scale[mode]) + self.shift[mode]
        # clamp, not relu: at start pre = 0 exactly, where relu's gradient is 0 and clamp's is 1
        return x + (pre.clamp(min=0) if self.relu else pre)


class GradientMapper(nn.Module):
    """The network shared by weights of one shape: ``(u, δ, mode) → (ũ, δ̃)``, both ``(T, ·)``."""

    def __init__(self, d_in: int, d_out: int, rank: int, n_hidden: int, n_modes: int) -> None:
        super().__init__()
        self.d_in, self.d_out = d_in, d_out
        self.norm_u = RunningNorm(d_in)
        self.norm_delta = RunningNorm(d_out)
        self.layers = nn.ModuleList(LowRankResidual(d_in + d_out, rank, n_modes, relu=i < n_hidden)
                                    for i in range(n_hidden + 1))

    def forward(self, u: torch.Tensor, delta: torch.Tensor, mode: int) -> tuple[torch.Tensor, torch.Tensor]:
        x = torch.cat([self.norm_u(u), self.norm_delta(delta)], dim=-1)
        for layer in self.layers:
            x = layer(x, mode)
        return x[:, : self.d_in], x[:, self.d_in:]


class MENDNetwork(nn.Module):
    """Editor networks for a set of weights, one per shape, and one learned step size per weight.

    Args:
        shapes: parameter name → ``(d_in, d_out)`` (math widths, whatever the stored layout), in a
            fixed order (it fixes each weight's mode index within its shape group).
        rank: hidden rank of the residual layers; ``n_hidden``: ReLU layers before the linear one.
        edit_lr: initial step size η of every weight (learned as ``log η``, so it stays positive).
    """

    def __init__(self, shapes: Mapping[str, tuple[int, int]], rank: int, n_hidden: int, edit_lr: float) -> None:
        super().__init__()
        if not shapes:
            raise EditorError("MENDNetwork needs at least one weight")
        self.names = list(shapes)
        groups: dict[str, list[str]] = {}
        for name, (d_in, d_out) in shapes.items():
            groups.setdefault(shape_key(d_in, d_out), []).append(name)
        self._where = {name: (key, members.index(name)) for key, members in groups.items() for name in members}
        self.mappers = nn.ModuleDict({key: GradientMapper(*shapes[members[0]], rank, n_hidden, len(members))
                                      for key, members in groups.items()})
        self.log_lr = nn.Parameter(torch.full((len(self.names),), math.log(edit_lr)))

    def transform(self, name: str, u: torch.Tensor, delta: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(ũ, δ̃)`` for the token factors of weight ``name``: ``u (T, d_in)``, ``delta (T, d_out)``."""
        key, mode = self._where[name]
        dtype = self.log_lr.dtype  # float32, or float64 for a reference copy (``net.double()``)
        return self.mappers[key](u.to(dtype), delta.to(dtype), mode)

    def step_size(self, name: str) -> torch.Tensor:
        """η of weight ``name`` (a 0-dim tensor, differentiable)."""
        return self.log_lr[self.names.index(name)].exp()

    def step_parameters(self) -> list[nn.Parameter]:
        """The step sizes (trained with their own learning rate, as in the paper)."""
        return [self.log_lr]

    def mapper_parameters(self) -> list[nn.Parameter]:
        """Everything else that is learned: the shared networks' weights, scales and shifts."""
        return list(self.mappers.parameters())
