"""spectral/condition.py: cond(W) from the short side's float64 Gram matrix, against float64 SVD."""
from __future__ import annotations

import math

import pytest
import torch

from prune_fast.spectral.condition import cheap_cond


@pytest.mark.parametrize("shape", [(512, 128), (128, 512), (64, 64), (1, 50)], ids=str)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64], ids=str)
def test_cond_matches_the_svd(shape, dtype, rng):
    w = torch.randn(*shape, generator=rng, dtype=torch.float64).to(dtype)
    sv = torch.linalg.svdvals(w.double())
    assert cheap_cond(w) == pytest.approx(float(sv[0] / sv[-1]), rel=1e-7)


@pytest.mark.parametrize("scale", [1e-30, 1e30], ids=str)
def test_cond_at_extreme_scales(scale, rng):
    """A float64 Gram of a 1e±30 fp32 matrix neither under- nor overflows (1e±60 fits float64)."""
    w = torch.randn(100, 40, generator=rng, dtype=torch.float64)
    sv = torch.linalg.svdvals(w)
    assert cheap_cond((w * scale).float()) == pytest.approx(float(sv[0] / sv[-1]), rel=1e-5)


def test_ill_conditioned_singular_and_zero(rng):
    u, _ = torch.linalg.qr(torch.randn(80, 30, generator=rng, dtype=torch.float64))
    v, _ = torch.linalg.qr(torch.randn(30, 30, generator=rng, dtype=torch.float64))
    s = torch.logspace(0, -6, 30, dtype=torch.float64)          # cond 1e6: Gram error ε₆₄·1e12 ≈ 2e-4
    assert cheap_cond((u * s) @ v.T) == pytest.approx(1e6, rel=1e-3)
    s[-1] = 0.0                                                 # singular: inf, not a huge finite number
    assert cheap_cond((u * s) @ v.T) == math.inf
    assert cheap_cond(torch.zeros(20, 10)) is None
    assert cheap_cond(torch.zeros(0, 10)) is None


def test_large_weights_get_none(rng):
    """Past 2²⁵ multiply-adds of the Gram (e.g. 700×300) the answer would cost a full SVD: None."""
    assert cheap_cond(torch.randn(700, 300, generator=rng)) is None
    assert cheap_cond(torch.randn(256, 512, generator=rng)) is not None   # 256·512·256 = 2²⁵
