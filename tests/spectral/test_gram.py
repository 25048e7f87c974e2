"""The short side's Gram matrix, σ_max through it, and the switch that sends clustered tops there."""
from __future__ import annotations

import math

import pytest
import torch

import prune_fast.restrain as restrain_mod
from prune_fast.restrain import sigma_max
from prune_fast.spectral.gram import columns_gram, gram_route_blocks, sigma_max_by_gram
from prune_fast.spectral.krylov import topk_svd
from spectral_cases import orthonormal


def _sigma_max64(a: torch.Tensor) -> float:
    return float(torch.linalg.matrix_norm(a.double(), 2))


def _with_top(m: int, n: int, top: torch.Tensor, rest: int, g: torch.Generator, rest_scale: float = 0.5) -> torch.Tensor:
    """A float64 m×n matrix whose largest singular values are ``top``; ``rest`` more lie in [0, rest_scale·top[-1]]."""
    s = torch.cat([top.double(), rest_scale * float(top[-1]) * torch.rand(rest, dtype=torch.float64, generator=g)])
    return (orthonormal(m, s.numel(), g) * s) @ orthonormal(n, s.numel(), g).T


@pytest.mark.parametrize("n_cols", [300, 511, 512, 777])
@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-13), (torch.float32, 2e-6)])
def test_columns_gram_against_float64(n_cols, dtype, tol, rng):
    """Every entry (blocked above 512 columns: both triangles written), symmetric exactly."""
    b64 = torch.randn(1000, n_cols, generator=rng, dtype=torch.float64)
    g = columns_gram(b64.to(dtype))
    assert g.dtype == dtype and g.shape == (n_cols, n_cols)
    assert torch.equal(g, g.T)
    assert bool(torch.isfinite(g).all())
    want = b64.T @ b64
    scale = float(want.diagonal().max())
    assert float((g.double() - want).abs().max()) <= tol * scale


@pytest.mark.parametrize("shape", [(576, 1536), (1536, 576), (300, 900)], ids=["wide", "tall", "small"])
@pytest.mark.parametrize("kind", ["gaussian", "repeated-top", "rank-3", "rank-40", "separated"])
def test_sigma_max_by_gram_against_float64(shape, kind, rng):
    """Clustered (Gaussian), exactly repeated, rank below the Lanczos block, and separated tops:
    within 1e-6 of the float64 σ_max, with a small explicit residual."""
    m, n = shape
    if kind == "gaussian":
        a = torch.randn(m, n, generator=rng, dtype=torch.float64) / math.sqrt(max(m, n))
    elif kind == "repeated-top":
        a = _with_top(m, n, torch.full((5,), 2.0), 100, rng, rest_scale=0.99)
    elif kind == "rank-3":  # fewer directions than the Lanczos block
        a = _with_top(m, n, torch.tensor([3.0, 2.9, 1.0]), 0, rng)
    elif kind == "rank-40":  # the Krylov space runs out of directions after a few blocks
        a = _with_top(m, n, torch.linspace(1.0, 0.1, 40), 0, rng)
    else:
        a = _with_top(m, n, torch.tensor([5.0, 2.0]), 200, rng)
    want = _sigma_max64(a)
    got, residual = sigma_max_by_gram(a.float(), 8 * torch.finfo(torch.float32).eps, rng)
    assert abs(got - want) <= 1e-6 * want, (got, want)
    assert residual <= 1e-2


def test_sigma_max_by_gram_in_float64(rng):
    a = torch.randn(400, 1000, generator=rng, dtype=torch.float64) / 40
    got, _ = sigma_max_by_gram(a, 8 * torch.finfo(torch.float64).eps, rng)
    assert abs(got - _sigma_max64(a)) <= 1e-10 * _sigma_max64(a)


def test_sigma_max_by_gram_of_zero_is_zero(rng):
    assert sigma_max_by_gram(torch.zeros(300, 700), 1e-6, rng) == (0.0, 0.0)


def _spy_gram(monkeypatch) -> list:
    calls = []
    real = restrain_mod.sigma_max_by_gram

    def spy(*args, **kwargs):
        calls.append(args[0].shape)
        return real(*args, **kwargs)

    monkeypatch.setattr(restrain_mod, "sigma_max_by_gram", spy)
    return calls


@pytest.mark.parametrize("shape", [(576, 1536), (1536, 576)], ids=["wide", "tall"])
def test_sigma_max_takes_the_gram_route_for_a_clustered_top(shape, monkeypatch, rng):
    """A Gaussian W0 (top values within ~1 %): Krylov gives up after a few blocks, the Gram route answers."""
    calls = _spy_gram(monkeypatch)
    a = torch.randn(*shape, generator=rng, dtype=torch.float64) / math.sqrt(max(shape))
    got, _ = sigma_max(a.float(), generator=rng)
    assert calls == [shape]
    assert abs(got - _sigma_max64(a)) <= 1e-6 * _sigma_max64(a)


def test_sigma_max_stays_on_krylov_for_a_separated_top(monkeypatch, rng):
    """A trained-like W0 (a few separated directions over a bulk) converges in a few Krylov blocks."""
    calls = _spy_gram(monkeypatch)
    a = _with_top(576, 1536, torch.tensor([8.0, 6.0, 5.0, 4.0]), 300, rng, rest_scale=0.3)
    got, _ = sigma_max(a.float(), generator=rng)
    assert calls == []
    assert abs(got - _sigma_max64(a)) <= 1e-6 * _sigma_max64(a)


@pytest.mark.parametrize("scale", [1e-20, 1e20])
def test_sigma_max_outside_the_gram_range_stays_on_krylov(scale, monkeypatch, rng):
    """Squares of 1e±20 leave fp32's comfortable range: a clustered top is then solved by Krylov alone."""
    calls = _spy_gram(monkeypatch)
    a = torch.randn(576, 1536, generator=rng, dtype=torch.float64) * (scale / math.sqrt(1536))
    got, _ = sigma_max(a.float(), generator=rng)
    assert calls == []
    want = _sigma_max64(a.float())
    assert abs(got - want) <= 1e-6 * want


def test_sigma_max_route_is_deterministic_and_leaves_the_global_rng(rng):
    a = torch.randn(576, 1536, generator=rng) / 40
    state = torch.get_rng_state()
    first, second = sigma_max(a), sigma_max(a)
    assert first == second
    assert torch.equal(state, torch.get_rng_state())


def test_give_up_blocks_is_for_top_k_only(rng):
    a = torch.randn(200, 300, generator=rng)
    with pytest.raises(ValueError, match="give_up_blocks"):
        topk_svd(a, threshold=1.0, give_up_blocks=3)
    t = topk_svd(a, k=1, block=16, value_tol=5e-7, give_up_blocks=0.5)
    assert t.s.numel() == 1  # an unconverged estimate, flagged, or a converged one
    if not t.converged:
        assert float(t.s[0]) <= _sigma_max64(a) * (1 + 1e-6)


def test_gram_route_cost_model_grows_with_the_short_side():
    assert gram_route_blocks(1600, 6400, 16) > gram_route_blocks(576, 1536, 16) > 1
    assert gram_route_blocks(1600, 6400, 16) == gram_route_blocks(6400, 1600, 16)
