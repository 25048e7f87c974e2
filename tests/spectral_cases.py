"""Test matrices with a controlled spectrum and their exact float64 restraint.

W0 = P diag(s0) Qᵀ and Δ = U diag(σ) Vᵀ are built from orthonormal factors, so σ* = s0[0] and the
restrained weight W0 + U diag(F(σ)) Vᵀ are known exactly without any SVD.
"""
from __future__ import annotations

import torch

from prune_fast.spectral.restraint_fn import resolve_fn


def orthonormal(rows: int, cols: int, g: torch.Generator) -> torch.Tensor:
    q, _ = torch.linalg.qr(torch.randn(rows, cols, dtype=torch.float64, generator=g))
    return q


def make_w0(m: int, n: int, g: torch.Generator, sigma_star: float = 1.0) -> torch.Tensor:
    k = min(m, n)
    s0 = torch.linspace(sigma_star, 0.05 * sigma_star, k, dtype=torch.float64)
    return (orthonormal(m, k, g) * s0) @ orthonormal(n, k, g).T


def make_delta(m: int, n: int, sigmas: torch.Tensor, g: torch.Generator) -> tuple[torch.Tensor, tuple]:
    r = sigmas.numel()
    u, v = orthonormal(m, r, g), orthonormal(n, r, g)
    return (u * sigmas) @ v.T, (u, sigmas, v)


def spectrum(n_above: int, rank: int, g: torch.Generator, sigma_star: float = 1.0) -> torch.Tensor:
    """``rank`` singular values, ``n_above`` of them in [1.2σ*, 8σ*], the rest in [0, 0.8σ*]."""
    above = sigma_star * (1.2 + 6.8 * torch.rand(n_above, dtype=torch.float64, generator=g))
    below = sigma_star * 0.8 * torch.rand(rank - n_above, dtype=torch.float64, generator=g)
    return torch.sort(torch.cat([above, below]), descending=True).values


def exact_restrained(w0: torch.Tensor, factors: tuple, sigma_star: float, fn="log", alpha=2.718281828459045):
    u, s, v = factors
    return w0 + (u * resolve_fn(fn, alpha)(s, sigma_star)) @ v.T


def rel_err(got: torch.Tensor, want: torch.Tensor) -> float:
    return float(torch.linalg.norm(got.double() - want) / torch.linalg.norm(want))
