"""Every singular triplet above a threshold from one dense float64 solve (the exact route).

For matrices whose short side is small, or when a large share of the spectrum is wanted, one
eigen-decomposition of the float64 Gram matrix of the short side costs less than Krylov
iterations; the Krylov solver (``krylov.py``) also falls back to it where its certificate would
need more blocks than this solve costs. Its answer is exact to float64 rounding, so it certifies
itself (``certificate="exact"``).
"""
from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch

from .. import _scratch
from ..kernels.cpu_matmul import skinny_matmul_cpu
from .gram import columns_gram
from .triplets import Triplets

__all__ = ["direct_triplets"]

# The Gram route squares the condition number: σ_i from eigh(AᵀA) in float64 is off by about
# ε₆₄·(σ₁/σ_i)² relative, so it is used only while every wanted σ_i ≥ 1e-4·σ₁ (error ≲ 1e-8).
_GRAM_MIN_RATIO = 1e-4
# Up to this σ₁/threshold the vectors u = A v / σ of a fp32 matrix are formed by a fp32 product
# (the values and v still come from the float64 eigen-decomposition): the product's rounding,
# relative ~ε₃₂·σ₁/σ per term, stays at the level of the Krylov path's own fp32 vectors (rank-k
# part off by ~3e-7 relative at 700×900, σ₁/τ = 3.5, against 4e-8 in float64; both are returned
# in fp32), and the product runs at twice the float64 rate (91 against 201 ms at 1600×6400, 700
# vectors). Beyond it, small σ against σ₁ would amplify that rounding: float64.
_FP32_BACK_PRODUCT_MAX_RATIO = 4.0


def direct_triplets(a: torch.Tensor, threshold: float) -> Triplets:
    """Every triplet with σ ≥ threshold of a small dense matrix, in float64 (exact to rounding).

    From the eigen-decomposition of the short side's float64 Gram matrix (3× faster than an SVD
    for a 512×128 test-model weight, the per-edit cost of online PRUNE there), falling back to
    one full SVD when a wanted value is too small relative to σ₁ for the Gram route's accuracy.
    The values, the count above the threshold and the short side's vectors are float64; the long
    side's vectors u = A v / σ of a fp32 matrix come from a fp32 product while σ₁ ≤ 4·threshold
    (see ``_FP32_BACK_PRODUCT_MAX_RATIO``).
    """
    with _float64_copy(a) as a64:
        return _direct_float64(a, a64, threshold)


@contextmanager
def _float64_copy(a: torch.Tensor) -> Iterator[torch.Tensor]:
    """``a`` in float64; on the CPU written into the thread's reused buffer (``_scratch``), valid in
    the block: a fresh 82 MB float64 copy of a 1600×6400 Δ costs 18.5 ms, mostly first touch, against
    3.1 ms into memory already held (two threads; 55 against 7.8 ms with one)."""
    if a.dtype == torch.float64 or a.device.type != "cpu":
        yield a.to(torch.float64)
        return
    with _scratch.borrow(tuple(a.shape), torch.float64) as buf:
        yield buf.copy_(a)


def _direct_float64(a: torch.Tensor, a64: torch.Tensor, threshold: float) -> Triplets:
    """:func:`direct_triplets` with ``a64`` = ``a`` in float64 (read only: nothing returned aliases it)."""
    tall = a64.shape[0] >= a64.shape[1]
    short = a64 if tall else a64.T
    if short.shape[1]:
        lam, vecs = torch.linalg.eigh(columns_gram(short))
        s_all = lam.flip(0).clamp_min(0).sqrt()
        keep = int((s_all >= threshold).sum())
        if keep == 0 or threshold >= _GRAM_MIN_RATIO * float(s_all[0]):
            # eigh returns column-major vectors; made row-major here, as every product below wants them
            v = vecs[:, vecs.shape[1] - keep:].flip(1).contiguous()
            s = s_all[:keep]
            if a.dtype == torch.float32 and keep and float(s_all[0]) <= _FP32_BACK_PRODUCT_MAX_RATIO * threshold:
                u = _times_vectors(a, (v / s).to(torch.float32), tall)
            else:
                u = _times_vectors(a64, v / s, tall)
            next_value = float(s_all[keep]) if keep < s_all.numel() else 0.0
            u, v = (u, v) if tall else (v, u)
            return Triplets(u.to(a.dtype), s.clone(), v.to(a.dtype), 0.0, next_value, min(a.shape), 0, True)
    p, s, ht = torch.linalg.svd(a64, full_matrices=False)
    keep = int((s >= threshold).sum())
    next_value = float(s[keep]) if keep < s.numel() else 0.0
    return Triplets(p[:, :keep].to(a.dtype), s[:keep].clone(), ht[:keep].T.to(a.dtype), 0.0, next_value,
                    min(a.shape), 0, True)


def _times_vectors(a: torch.Tensor, x: torch.Tensor, tall: bool) -> torch.Tensor:
    """``A x`` (tall A) or ``Aᵀ x`` (wide A) for a row-major A, as a row-major result.

    The wide float64 case goes through ``skinny_matmul_cpu``, which runs it as ``(xᵀ A)ᵀ``: ``A.T @ x``
    with A's transposed view took 35 ms against 3.6 ms at 1536×576 by 576×71 (one thread), the dense
    Δ's back product in every late step of a long SmolLM2 run (bench/RESULTS.md). fp32 products take
    no such slow path, and there the transposed copy would cost more than it saves (6400×700).
    """
    if tall:
        return a @ x
    return a.T @ x if a.dtype == torch.float32 else skinny_matmul_cpu(a.T, x).contiguous()
