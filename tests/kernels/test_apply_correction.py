"""apply_correction_ (W ← W + L Rᵀ) and write_restrained_ (W ← W0 + D + L Rᵀ) against float64."""
from __future__ import annotations

import pytest
import torch

from kernel_cases import (ACCUMULATION, DTYPE_IDS, DTYPES, LAYOUTS, ROUNDING, SHAPE_IDS, SHAPES, assert_within,
                          randn, requires_triton)
from prune_fast.kernels.apply_correction import apply_correction_, write_restrained_

BACKENDS = [pytest.param("torch", id="torch"), pytest.param("triton", id="triton", marks=requires_triton)]


def _bound(want: torch.Tensor, terms: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """One rounding to dtype plus fp32 accumulation error over the summed |terms|."""
    return ROUNDING[dtype] * want.abs() + ACCUMULATION * terms


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("k", [1, 40], ids=lambda k: f"k{k}")
@pytest.mark.parametrize("order", LAYOUTS)
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("shape", SHAPES, ids=SHAPE_IDS)
def test_apply_correction(shape, dtype, order, k, backend, rng):
    m, n = shape
    w = randn(m, n, g=rng, dtype=dtype, order=order)
    left, right = randn(m, k, g=rng), randn(n, k, g=rng, order=order)
    w64, l64, r64 = w.double(), left.double(), right.double()
    want = w64 + l64 @ r64.T
    ptr, strides = w.data_ptr(), w.stride()
    out = apply_correction_(w, left, right, backend=backend)
    assert out.data_ptr() == ptr and out.stride() == strides, "must update W in place, keeping its layout"
    assert_within(w, want, _bound(want, w64.abs() + l64.abs() @ r64.abs().T, dtype), f"{backend} {dtype} W + L Rᵀ")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dense", [False, True], ids=["no_dense", "dense"])
@pytest.mark.parametrize("k", [0, 3], ids=lambda k: f"k{k}")
@pytest.mark.parametrize("order", LAYOUTS)
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("shape", SHAPES, ids=SHAPE_IDS)
def test_write_restrained(shape, dtype, order, k, dense, backend, rng):
    m, n = shape
    w = randn(m, n, g=rng, dtype=dtype, order=order).fill_(float("nan"))  # every element must be written
    w0 = randn(m, n, g=rng, dtype=dtype, order="col" if order == "row" else "row")
    d = randn(m, n, g=rng, order=order) if dense else None
    left, right = randn(m, k, g=rng), randn(n, k, g=rng)
    l64, r64 = left.double(), right.double()
    want = w0.double() + (0 if d is None else d.double()) + l64 @ r64.T
    terms = w0.double().abs() + (0 if d is None else d.double().abs()) + l64.abs() @ r64.abs().T
    write_restrained_(w, w0, left, right, d, backend=backend)
    assert_within(w, want, _bound(want, terms, dtype), f"{backend} {dtype} W0 + D + L Rᵀ")


@requires_triton
def test_triton_matches_torch_bitwise_for_fp32_rank0(rng):
    """With k = 0 and no D the kernel is a copy: W0 must come back bit-exact."""
    w0 = randn(17, 33, g=rng)
    w = torch.full_like(w0, float("nan"))
    empty = torch.zeros(17, 0, device=w0.device), torch.zeros(33, 0, device=w0.device)
    write_restrained_(w, w0, *empty, backend="triton")
    assert torch.equal(w, w0)


def test_shape_mismatch_is_refused(rng):
    w = randn(4, 5, g=rng)
    with pytest.raises(ValueError, match="left m×k and right n×k"):
        apply_correction_(w, randn(4, 2, g=rng), randn(4, 2, g=rng))
