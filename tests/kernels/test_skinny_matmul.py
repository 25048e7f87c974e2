"""Skinny products with an implicit Δ (W − W0 or L Rᵀ) and the operators built on them, vs float64."""
from __future__ import annotations

import pytest
import torch

from kernel_cases import (ACCUMULATION, DTYPE_IDS, DTYPES, LAYOUTS, SHAPE_IDS, SHAPES, assert_within,
                          randn, requires_triton)
from prune_fast.kernels.settings import launch_config
from prune_fast.kernels.skinny_matmul import difference_matmul, skinny_matmul
from prune_fast.spectral.operators import ImplicitDifferenceOperator, LowRankOperator

BACKENDS = [pytest.param("torch", id="torch"), pytest.param("triton", id="triton", marks=requires_triton)]


def _check(got, a, a0, x, what):
    diff = a.double() - (0 if a0 is None else a0.double())
    want = diff @ x.double()
    assert got.dtype == torch.float32 and got.shape == want.shape, (got.dtype, got.shape)
    assert_within(got, want, ACCUMULATION * (diff.abs() @ x.double().abs()) + 1e-30, what)


@pytest.mark.usefixtures("poison_empty")
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("b", [1, 20], ids=lambda b: f"b{b}")
@pytest.mark.parametrize("order", LAYOUTS)
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("shape", SHAPES, ids=SHAPE_IDS)
def test_difference_matmul_both_sides(shape, dtype, order, b, backend, rng):
    """Y = (W − W0) Ω and Z = (W − W0)ᵀ Q, W and W0 in different dtypes/layouts."""
    m, n = shape
    w = randn(m, n, g=rng, dtype=dtype, order=order)
    w0 = randn(m, n, g=rng, dtype=torch.float32, order="col" if order == "row" else "row")
    omega, q = randn(n, b, g=rng, dtype=dtype), randn(m, b, g=rng)
    _check(difference_matmul(w, w0, omega, backend=backend), w, w0, omega, f"{backend} (W−W0)Ω")
    _check(difference_matmul(w.mT, w0.mT, q, backend=backend), w.mT, w0.mT, q, f"{backend} (W−W0)ᵀQ")


@pytest.mark.usefixtures("poison_empty")
@pytest.mark.parametrize("backend", BACKENDS)
def test_split_reduction(backend, rng):
    """A reduction long enough to be split across programs (partials summed) stays exact."""
    a, x = randn(5, 2100, g=rng, dtype=torch.bfloat16), randn(2100, 3, g=rng)
    assert launch_config("skinny_matmul", m=5, n=2100, b=3).split > 1
    _check(skinny_matmul(a, x, backend=backend), a, None, x, f"{backend} split A X")


@pytest.mark.parametrize("backend", BACKENDS)
def test_operators(backend, rng):
    m, n, r = 33, 17, 3
    w, w0 = randn(m, n, g=rng, dtype=torch.bfloat16), randn(m, n, g=rng, dtype=torch.bfloat16)
    left, right = randn(m, r, g=rng), randn(n, r, g=rng, order="col")
    x, y = randn(n, 4, g=rng), randn(m, 4, g=rng)
    op = ImplicitDifferenceOperator(w, w0, backend=backend)
    assert op.dtype == torch.float32 and op.shape == (m, n)
    _check(op.matmul(x), w, w0, x, "ImplicitDifferenceOperator.matmul")
    _check(op.rmatmul(y), w.mT, w0.mT, y, "ImplicitDifferenceOperator.rmatmul")
    lr = LowRankOperator(left, right, backend=backend)
    dense = left.double() @ right.double().T
    # Two products in sequence: bound the rounding of the inner one as well.
    bound = 4 * ACCUMULATION * (left.double().abs() @ (right.double().abs().T @ x.double().abs()))
    assert_within(lr.matmul(x), dense @ x.double(), bound, "LowRankOperator.matmul")
    bound = 4 * ACCUMULATION * (right.double().abs() @ (left.double().abs().T @ y.double().abs()))
    assert_within(lr.rmatmul(y), dense.T @ y.double(), bound, "LowRankOperator.rmatmul")


def test_mismatched_shapes_are_refused(rng):
    with pytest.raises(ValueError, match="one shape"):
        difference_matmul(randn(3, 4, g=rng), randn(4, 3, g=rng), randn(4, 1, g=rng))
    with pytest.raises(ValueError, match="m×n and x: n×b"):
        skinny_matmul(randn(3, 4, g=rng), randn(3, 1, g=rng))
