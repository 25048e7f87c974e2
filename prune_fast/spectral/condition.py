"""cond(W) = σ_max/σ_min of a weight, where it is cheap to get exactly.

No top-k method gives σ_min; the eigenvalues of the short side's float64 Gram matrix give both ends
at once, which for a test-model weight (512×128) costs under a millisecond. Larger weights would
need a full SVD, so they get ``None``.
"""
from __future__ import annotations

import math

import torch

__all__ = ["cheap_cond"]

_CHEAP_COND_WORK = 1 << 25


def cheap_cond(weight: torch.Tensor) -> float | None:
    """σ_max/σ_min from eigvalsh of the float64 Gram matrix of the short side, for small weights only.

    The Gram route loses σ_min's accuracy only for cond ≳ 1e7 (relative error ≈ ε₆₄·cond²); beyond
    that, or for a singular weight, the result is ``inf``.
    """
    m, n = weight.shape
    if m * n * min(m, n) > _CHEAP_COND_WORK or weight.numel() == 0:
        return None
    w = weight.detach().to(torch.float64)
    lam = torch.linalg.eigvalsh(w.T @ w if m >= n else w @ w.T)
    lo, hi = float(lam[0]), float(lam[-1])
    if hi <= 0.0:
        return None
    return math.sqrt(hi / lo) if lo > hi * 1e-14 else math.inf
