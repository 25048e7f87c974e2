"""Matrices seen only through products, for the Krylov solver.

An operator ``A`` of shape (m, n) offers ``matmul(X) = A X`` (X: n×b) and ``rmatmul(Y) = Aᵀ Y``
(Y: m×b). The solver never needs A's entries, so Δ = W − W0 is never materialised for products.
Operators may also offer ``magnitude()``: an estimate of ‖A‖_F within a few powers of two (a pass
over the data), which the solver asks for only when a product under- or overflowed, to wrap the
operator in a :class:`ScaledOperator`.
"""
from __future__ import annotations

import math
from typing import Protocol

import torch

from .._dtype import compute_dtype
from ..kernels.cpu_matmul import skinny_matmul_cpu
from ..kernels.orthonormalize import times_power_of_two
from ..kernels.skinny_matmul import difference_matmul, skinny_matmul


def _norm(t: torch.Tensor) -> float:
    """‖t‖_F in float64 (no fp32 under/overflow), for ``magnitude()``."""
    return float(torch.linalg.vector_norm(t.detach(), dtype=torch.float64)) if t.numel() else 0.0


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

    def magnitude(self) -> float:
        return _norm(self.a)


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

    def magnitude(self) -> float:
        return _norm(self.w) + _norm(self.d)


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

    def magnitude(self) -> float:
        return magnitude(self.op)


class ScaledOperator:
    """2^k · A, exactly, for operators whose products would under- or overflow in fp32.

    The power of two is split: the skinny input is scaled by 2^k₁ before the product (so that the
    products of huge entries stay finite and those of tiny entries stay normal) and the output by
    2^k₂ after it, k₁ + k₂ = k, |k₁| ≤ 64. Powers of two change only exponents, so nothing is rounded.
    """

    def __init__(self, op: MatrixOperator, exponent: int):
        self.op, self.exponent = op, exponent
        self._pre = max(-64, min(64, exponent))
        self._post = exponent - self._pre
        self.shape, self.dtype, self.device = op.shape, op.dtype, op.device

    def matmul(self, x: torch.Tensor) -> torch.Tensor:
        return times_power_of_two(self.op.matmul(times_power_of_two(x, self._pre)), self._post)

    def rmatmul(self, y: torch.Tensor) -> torch.Tensor:
        return times_power_of_two(self.op.rmatmul(times_power_of_two(y, self._pre)), self._post)

    def magnitude(self) -> float:
        return math.ldexp(magnitude(self.op), self.exponent)


def magnitude(op: MatrixOperator) -> float:
    """``op.magnitude()`` when the operator has one, else NaN (unknown)."""
    fn = getattr(op, "magnitude", None)
    return float(fn()) if fn is not None else math.nan


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
        self.dtype = compute_dtype(w, w0)
        self.device = w.device

    def matmul(self, x: torch.Tensor) -> torch.Tensor:
        return difference_matmul(self.w, self.w0, x, backend=self.backend)

    def rmatmul(self, y: torch.Tensor) -> torch.Tensor:
        return difference_matmul(self.w.mT, self.w0.mT, y, backend=self.backend)

    def magnitude(self) -> float:
        return _norm(self.w) + _norm(self.w0)


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
        self.dtype = compute_dtype(left, right)
        self.device = left.device

    def matmul(self, x: torch.Tensor) -> torch.Tensor:
        inner = skinny_matmul(self.right.mT, x, backend=self.backend)
        return skinny_matmul(self.left, inner, backend=self.backend)

    def rmatmul(self, y: torch.Tensor) -> torch.Tensor:
        inner = skinny_matmul(self.left.mT, y, backend=self.backend)
        return skinny_matmul(self.right, inner, backend=self.backend)

    def magnitude(self) -> float:
        return _norm(self.left) * _norm(self.right)
