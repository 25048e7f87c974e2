"""Matrices seen only through products, for the Krylov solver.

An operator ``A`` of shape (m, n) offers ``matmul(X) = A X`` (X: n×b) and ``rmatmul(Y) = Aᵀ Y``
(Y: m×b). The solver never needs A's entries, so Δ = W − W0 is never materialised for products.
"""
from __future__ import annotations

from typing import Protocol

import torch


class MatrixOperator(Protocol):
    shape: tuple[int, int]
    dtype: torch.dtype
    device: torch.device

    def matmul(self, x: torch.Tensor) -> torch.Tensor: ...

    def rmatmul(self, y: torch.Tensor) -> torch.Tensor: ...


class DenseOperator:
    """A held in memory (any stride order), products in ``dtype``."""

    def __init__(self, a: torch.Tensor, dtype: torch.dtype | None = None):
        self.a = a if dtype is None or a.dtype == dtype else a.to(dtype)
        self.shape = (a.shape[0], a.shape[1])
        self.dtype = self.a.dtype
        self.device = a.device

    def matmul(self, x: torch.Tensor) -> torch.Tensor:
        return self.a @ x

    def rmatmul(self, y: torch.Tensor) -> torch.Tensor:
        return self.a.T @ y


class DifferenceOperator:
    """A = W − D without forming it: two products instead of one full-size temporary."""

    def __init__(self, w: torch.Tensor, d: torch.Tensor):
        self.w, self.d = w, d
        self.shape = (w.shape[0], w.shape[1])
        self.dtype = w.dtype
        self.device = w.device

    def matmul(self, x: torch.Tensor) -> torch.Tensor:
        return self.w @ x - self.d @ x

    def rmatmul(self, y: torch.Tensor) -> torch.Tensor:
        return self.w.T @ y - self.d.T @ y


class TransposedOperator:
    """Aᵀ, so the solver can always work on the tall orientation (as torch's ``_lowrank`` does)."""

    def __init__(self, op: MatrixOperator):
        self.op = op
        self.shape = (op.shape[1], op.shape[0])
        self.dtype = op.dtype
        self.device = op.device

    def matmul(self, x: torch.Tensor) -> torch.Tensor:
        return self.op.rmatmul(x)

    def rmatmul(self, y: torch.Tensor) -> torch.Tensor:
        return self.op.matmul(y)
