"""Matrices seen only through products, for the Krylov solver.

An operator ``A`` of shape (m, n) offers ``matmul(X) = A X`` (X: n×b) and ``rmatmul(Y) = Aᵀ Y``
(Y: m×b). The solver never needs A's entries, so Δ = W − W0 is never materialised for products.
"""
from __future__ import annotations

from typing import Protocol

import torch

from .kernels.cpu_matmul import skinny_matmul_cpu
from .kernels.skinny_matmul import difference_matmul, skinny_matmul


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
        return skinny_matmul_cpu(self.a, x)

    def rmatmul(self, y: torch.Tensor) -> torch.Tensor:
        return skinny_matmul_cpu(self.a.T, y)


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


def _product_dtype(*tensors: torch.Tensor) -> torch.dtype:
    return torch.float64 if any(t.dtype == torch.float64 for t in tensors) else torch.float32


class ImplicitDifferenceOperator:
    """A = W − W0 (any float dtypes, e.g. a bf16 weight and its snapshot), never formed.

    Products run the ``difference_matmul`` kernel of ``backend`` (a resolved name): one read of W and
    W0 per product, fp32 accumulation (fp64 when either is fp64); ``dtype`` is that accumulation
    dtype, so the solver's bases are never half precision.

    Example::

        sigma_star = topk_svd(ImplicitDifferenceOperator(weight, delta, backend="triton"), k=1).s[0]
    """

    def __init__(self, w: torch.Tensor, w0: torch.Tensor, *, backend: str = "torch"):
        if w.shape != w0.shape:
            raise ValueError(f"W and W0 must have one shape, got {tuple(w.shape)} and {tuple(w0.shape)}")
        self.w, self.w0, self.backend = w, w0, backend
        self.shape = (w.shape[0], w.shape[1])
        self.dtype = _product_dtype(w, w0)
        self.device = w.device

    def matmul(self, x: torch.Tensor) -> torch.Tensor:
        return difference_matmul(self.w, self.w0, x, backend=self.backend)

    def rmatmul(self, y: torch.Tensor) -> torch.Tensor:
        return difference_matmul(self.w.mT, self.w0.mT, y, backend=self.backend)


class LowRankOperator:
    """A = L Rᵀ (L: m×r, R: n×r): A X = L (Rᵀ X), Aᵀ Y = R (Lᵀ Y): two skinny products each, no m×n temporary.

    Products run the ``skinny_matmul`` kernel of ``backend`` with fp32 accumulation (fp64 when L or
    R is fp64).
    """

    def __init__(self, left: torch.Tensor, right: torch.Tensor, *, backend: str = "torch"):
        if left.dim() != 2 or right.dim() != 2 or left.shape[1] != right.shape[1]:
            raise ValueError(f"L Rᵀ needs L: m×r and R: n×r, got {tuple(left.shape)} and {tuple(right.shape)}")
        self.left, self.right, self.backend = left, right, backend
        self.shape = (left.shape[0], right.shape[0])
        self.dtype = _product_dtype(left, right)
        self.device = left.device

    def matmul(self, x: torch.Tensor) -> torch.Tensor:
        inner = skinny_matmul(self.right.mT, x, backend=self.backend)
        return skinny_matmul(self.left, inner, backend=self.backend)

    def rmatmul(self, y: torch.Tensor) -> torch.Tensor:
        inner = skinny_matmul(self.left.mT, y, backend=self.backend)
        return skinny_matmul(self.right, inner, backend=self.backend)
