"""A synthetic stream of ROME-like rank-1 updates, for the example and the benchmarks.

Real edits share key directions (ROME's C⁻¹k* vectors of different facts overlap), so the
accumulated Δ grows a few large singular values while each single update stays moderate. This
stream reproduces that shape: keys v_i mix ``n_shared`` common unit directions with private noise,
values u_i are random with norm ``scale``·σ*. The top singular values of Σ u_i v_iᵀ then grow like
√(N/n_shared)·scale·σ* and only about ``n_shared`` of them ever cross σ*.
"""
from __future__ import annotations

import math
from typing import Iterator

import torch


def rome_like_updates(m: int, n: int, count: int, sigma_star: float, *, scale: float = 0.3, n_shared: int = 8,
                      seed: int = 0, dtype: torch.dtype = torch.float32,
                      device: str | torch.device = "cpu") -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Yield ``count`` pairs ``(u: m×1, v: n×1)`` (u on the output side of an m×n weight)."""
    g = torch.Generator().manual_seed(seed)
    shared = torch.linalg.qr(torch.randn(n, n_shared, generator=g, dtype=torch.float64))[0]
    for _ in range(count):
        mix = torch.randn(n_shared, 1, generator=g, dtype=torch.float64) / math.sqrt(n_shared)
        v = shared @ mix + 0.5 * torch.randn(n, 1, generator=g, dtype=torch.float64) / math.sqrt(n)
        v /= torch.linalg.vector_norm(v)
        u = torch.randn(m, 1, generator=g, dtype=torch.float64) * (scale * sigma_star / math.sqrt(m))
        yield u.to(device, dtype), v.to(device, dtype)
