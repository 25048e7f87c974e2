"""Low-rank updates of a weight in place, accumulated in fp32.

``apply_correction_``:   W ← W + L Rᵀ                       (L: m×k, R: n×k)
``write_restrained_``:   W ← W0 + D + L Rᵀ                  (D dense or absent; the no-drift path)

Both read and write W once. Half-precision weights are processed in row blocks converted to fp32,
so no full-size fp32 copy of W is made and the result is rounded once.
"""
from __future__ import annotations

import torch

# Rows per fp32 block for half-precision weights: large enough for BLAS, small enough to stay in cache-ish.
_ROW_BLOCK = 512


def _acc_dtype(weight: torch.Tensor) -> torch.dtype:
    return torch.float64 if weight.dtype == torch.float64 else torch.float32


def apply_correction_torch_(weight: torch.Tensor, left: torch.Tensor, right: torch.Tensor) -> torch.Tensor:
    """W ← W + left @ rightᵀ in place (torch version)."""
    acc = _acc_dtype(weight)
    left = left.to(acc)
    right_t = right.to(acc).T
    if weight.dtype == acc:
        return weight.addmm_(left, right_t)
    for start in range(0, weight.shape[0], _ROW_BLOCK):
        rows = slice(start, start + _ROW_BLOCK)
        block = weight[rows].to(acc)
        block.addmm_(left[rows], right_t)
        weight[rows].copy_(block)
    return weight


def write_restrained_torch_(weight: torch.Tensor, w0: torch.Tensor, left: torch.Tensor, right: torch.Tensor,
                            dense: torch.Tensor | None = None) -> torch.Tensor:
    """W ← W0 + dense + left @ rightᵀ, computed in fp32 (or fp64) and rounded once (torch version)."""
    acc = _acc_dtype(weight)
    left = left.to(acc)
    right_t = right.to(acc).T
    for start in range(0, weight.shape[0], _ROW_BLOCK):
        rows = slice(start, start + _ROW_BLOCK)
        block = w0[rows].to(acc, copy=True)
        if dense is not None:
            block += dense[rows]
        if left.shape[1]:
            block.addmm_(left[rows], right_t)
        weight[rows].copy_(block)
    return weight
