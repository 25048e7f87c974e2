"""spectral/operators.py: every operator's products against the dense float64 matrix it stands for."""
from __future__ import annotations

import math

import pytest
import torch

from prune_fast.spectral.operators import (DenseOperator, DifferenceOperator, ImplicitDifferenceOperator,
                                           LowRankOperator, ScaledOperator, TransposedOperator, magnitude)

SHAPES = [(1, 1), (17, 33), (130, 70)]
SHAPE_IDS = [f"{m}x{n}" for m, n in SHAPES]


def _check(op, dense64: torch.Tensor, rng: torch.Generator, size64: torch.Tensor | None = None) -> None:
    """``op @ X`` and ``opᵀ @ Y`` against ``dense64`` (float64, of the operator's own rounded inputs), every
    element within the dtype's accumulation bound ``8·n·eps·(|A| |x|)``; ``size64`` replaces |A| where the
    operator's own rounding is of larger terms (W − D as two products: |W| + |D|, which matters when
    W ≈ D cancels)."""
    m, n = dense64.shape
    size64 = dense64.abs() if size64 is None else size64
    assert op.shape == (m, n)
    eps = torch.finfo(op.dtype).eps
    x = torch.randn(n, 5, dtype=torch.float64, generator=rng).to(op.dtype)
    y = torch.randn(m, 3, dtype=torch.float64, generator=rng).to(op.dtype)
    for got, a, size, z in ((op.matmul(x), dense64, size64, x.double()), (op.rmatmul(y), dense64.T, size64.T, y.double())):
        want = a @ z
        bound = 8 * a.shape[1] * eps * (size @ z.abs()) + 1e-300
        assert got.shape == want.shape and bool(torch.isfinite(got).all()), "an output element was not written"
        ratio = ((got.double() - want).abs() / bound).max()
        assert float(ratio) <= 1, f"{type(op).__name__}: error {float(ratio):.3g} × its bound"


@pytest.mark.parametrize("shape", SHAPES, ids=SHAPE_IDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["fp32", "fp64"])
def test_dense_difference_transposed(shape, dtype, rng):
    w = torch.randn(*shape, dtype=torch.float64, generator=rng).to(dtype)
    d = torch.randn(*shape, dtype=torch.float64, generator=rng).to(dtype)
    _check(DenseOperator(w), w.double(), rng)
    _check(DenseOperator(w.T.contiguous().T), w.double(), rng)  # the other stride order
    _check(DifferenceOperator(w, d), w.double() - d.double(), rng, w.double().abs() + d.double().abs())
    _check(TransposedOperator(DenseOperator(w)), w.double().T, rng)


@pytest.mark.parametrize("shape", SHAPES, ids=SHAPE_IDS)
@pytest.mark.parametrize("wdtype", [torch.float32, torch.bfloat16, torch.float64], ids=["fp32", "bf16", "fp64"])
def test_implicit_difference_accumulates_in_the_compute_dtype(shape, wdtype, rng):
    w = torch.randn(*shape, generator=rng).to(wdtype)
    w0 = torch.randn(*shape, generator=rng).to(wdtype)
    op = ImplicitDifferenceOperator(w, w0)
    assert op.dtype == (torch.float64 if wdtype == torch.float64 else torch.float32)
    _check(op, w.double() - w0.double(), rng)


@pytest.mark.parametrize("shape", SHAPES, ids=SHAPE_IDS)
def test_low_rank(shape, rng):
    m, n = shape
    left = torch.randn(m, 4, dtype=torch.float64, generator=rng).float()
    right = torch.randn(n, 4, dtype=torch.float64, generator=rng).float()
    # two products: the bound of the dense product of the rounded factors, doubled
    dense = left.double() @ right.double().T
    op = LowRankOperator(left, right)
    x = torch.randn(n, 3, generator=rng)
    bound = 2 * 8 * n * torch.finfo(torch.float32).eps * (left.double().abs() @ (right.double().abs().T @ x.double().abs()))
    assert bool(((op.matmul(x).double() - dense @ x.double()).abs() <= bound).all())
    with pytest.raises(ValueError, match="L: m×r and R: n×r"):
        LowRankOperator(left, right[:, :3])


def test_scaled_is_exact_beyond_the_fp32_range(rng):
    """2^k A for k near fp32's exponent limits: the same bits as A's product scaled by 2^k (only exponents change)."""
    a = torch.randn(40, 30, generator=rng)
    x = torch.randn(30, 2, generator=rng)
    for k in (-100, -3, 0, 90):
        op = ScaledOperator(DenseOperator(a), k)
        got = op.matmul(x)
        want = torch.ldexp(DenseOperator(a).matmul(x).double(), torch.tensor(k, dtype=torch.float64))
        assert bool(torch.isfinite(got).all())
        assert torch.equal(got.double(), want), f"k={k}: not exact"
        assert magnitude(op) == pytest.approx(math.ldexp(magnitude(op.op), k), rel=1e-12)


def test_magnitude_is_the_frobenius_scale(rng):
    w = torch.randn(20, 10, dtype=torch.float64, generator=rng)
    assert magnitude(DenseOperator(w)) == pytest.approx(float(torch.linalg.norm(w)), rel=1e-12)

    class Bare:  # an operator without magnitude(): unknown, not zero
        shape, dtype, device = (2, 2), torch.float32, torch.device("cpu")
    assert math.isnan(magnitude(Bare()))
