"""Certified restraint (issue 15): no singular value ≥ σ* is ever missed, at any count or multiplicity,
at any scale, and the caller's random stream is left alone.

Every case is built from orthonormal float64 factors with a known spectrum, so the exact restrained
weight W0 + U F(σ) Vᵀ is known without an SVD (large shapes), or compared with the float64 full-SVD
reference on the fp32 inputs actually passed in (``restrain_reference``). Fresh inputs every run.
"""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import prune_fast
from prune_fast.errors import InvalidInputError
from prune_fast.spectral.certificate import frobenius_sq_bound
from prune_fast.spectral import krylov
from prune_fast.spectral.krylov import topk_svd
from prune_fast.spectral.lanczos import Chain
from prune_fast.spectral.reference import restrain_reference
from prune_fast.spectral.restraint_fn import resolve_fn
from spectral_cases import orthonormal, rel_err

NEAR_TOPS = [1.001, 1.01, 1.05, 1.1, 1.5]
BELOW = [0.9 - 0.08 * i for i in range(10)]


def _low_rank(m: int, n: int, sigmas: list[float] | torch.Tensor, g: torch.Generator):
    s = torch.as_tensor(sigmas, dtype=torch.float64)
    u, v = orthonormal(m, s.numel(), g), orthonormal(n, s.numel(), g)
    return (u * s) @ v.T, (u, s, v)


def _exact(w0: torch.Tensor, factors, sigma_star: float, fn: str = "log") -> torch.Tensor:
    """W0 + U F(σ) Vᵀ with F changing only σ ≥ σ* (the restraint of the constructed Δ)."""
    u, s, v = factors
    return w0 + (u * resolve_fn(fn)(s, sigma_star)) @ v.T


def _restrain_and_check(w0: torch.Tensor, delta64: torch.Tensor, factors, sigma_star: float, want: int,
                        tol: float = 1e-5, **kwargs):
    d = delta64.float()
    weight = (w0 + delta64).float()
    res = prune_fast.restrain_(weight, d, sigma_star=sigma_star, **kwargs)
    assert res.n_restrained == want, f"restrained {res.n_restrained}, want {want} (top σ {res.sigma_before[:3]})"
    err = rel_err(weight, _exact(w0, factors, sigma_star))
    assert err <= tol, f"relative error {err:.3g}"
    return res


# -- near-threshold sweeps: the common case of a sequential run crossing σ* gradually ---------------
@pytest.mark.parametrize("shape,seeds", [((128, 384), 12), ((576, 1536), 3)], ids=["128x384", "576x1536"])
@pytest.mark.parametrize("top", NEAR_TOPS)
def test_one_value_just_above_ten_below_is_never_missed(shape, seeds, top, rng):
    m, n = shape
    for _ in range(seeds):
        delta, factors = _low_rank(m, n, [top] + BELOW, rng)
        w0 = 0.01 * torch.randn(m, n, generator=rng, dtype=torch.float64)
        _restrain_and_check(w0, delta, factors, 1.0, want=1)


@pytest.mark.parametrize("top", NEAR_TOPS)
def test_near_threshold_at_gpt2_xl_shape(top, rng):
    m, n = 1600, 6400
    delta, factors = _low_rank(m, n, [top] + BELOW, rng)
    w0 = 0.01 * torch.randn(m, n, generator=rng, dtype=torch.float64)
    _restrain_and_check(w0, delta, factors, 1.0, want=1)


@pytest.mark.parametrize("shape", [(128, 384), (576, 1536)], ids=["128x384", "576x1536"])
@pytest.mark.parametrize("top", [1.001, 1.05, 1.5])
def test_near_threshold_over_a_dense_bulk(shape, top, rng):
    """The same top values over full-rank noise reaching ~0.75σ*: the Frobenius tail is large, so only
    the randomized bound or a direct solve can certify. Against the float64 SVD of the fp32 input."""
    m, n = shape
    delta, _ = _low_rank(m, n, [top] + BELOW, rng)
    noise = torch.randn(m, n, generator=rng, dtype=torch.float64) * (0.7 / (math.sqrt(m) + math.sqrt(n)))
    d = (delta + noise).float()
    w0 = 0.01 * torch.randn(m, n, generator=rng)
    weight = w0 + d
    want, info = restrain_reference(weight.double() - d.double(), d.double(), sigma_star=1.0)
    res = prune_fast.restrain_(weight, d, sigma_star=1.0)
    assert res.n_restrained == info["n_restrained"] >= 1
    assert rel_err(weight, want) <= 1e-5


# -- any multiplicity, clusters straddling σ*, any count ---------------------------------------------
@pytest.mark.parametrize("mult", [2, 20, 40, 64, 130])
def test_repeated_values_above_threshold_are_all_restrained(mult, rng):
    m, n = 576, 1536
    delta, factors = _low_rank(m, n, [3.0] * mult + BELOW, rng)
    w0 = 0.01 * torch.randn(m, n, generator=rng, dtype=torch.float64)
    res = _restrain_and_check(w0, delta, factors, 1.0, want=mult)
    assert torch.allclose(torch.tensor(res.sigma_before, dtype=torch.float64), torch.full((mult,), 3.0,
                          dtype=torch.float64), rtol=1e-5, atol=0)


@pytest.mark.parametrize("mult", [20, 40])
def test_repeated_values_at_gpt2_xl_shape(mult, rng):
    m, n = 1600, 6400
    delta, factors = _low_rank(m, n, [3.0] * mult + BELOW, rng)
    _restrain_and_check(torch.zeros(m, n, dtype=torch.float64), delta, factors, 1.0, want=mult)


def test_cluster_straddling_the_threshold(rng):
    """Twelve values within 2 % of σ* on both sides (closest 4e-4 away), plus ten below."""
    above = [1.02, 1.01, 1.005, 1.003, 1.002, 1.0004]
    below = [0.9996, 0.998, 0.997, 0.995, 0.99, 0.98]
    for shape in [(128, 384), (576, 1536)]:
        m, n = shape
        for _ in range(3):
            delta, factors = _low_rank(m, n, sorted(above + below, reverse=True) + BELOW, rng)
            w0 = 0.01 * torch.randn(m, n, generator=rng, dtype=torch.float64)
            _restrain_and_check(w0, delta, factors, 1.0, want=len(above))


@pytest.mark.parametrize("count", [1, 50, 200])
def test_counts_above_threshold_low_rank(count, rng):
    m, n = 576, 1536
    s = torch.cat([1.2 + 3.8 * torch.rand(count, generator=rng, dtype=torch.float64),
                   0.8 * torch.rand(20, generator=rng, dtype=torch.float64)])
    delta, factors = _low_rank(m, n, s.sort(descending=True).values, rng)
    _restrain_and_check(torch.zeros(m, n, dtype=torch.float64), delta, factors, 1.0, want=count)


def test_700_values_above_threshold_of_a_dense_delta(rng):
    """Full rank 900, 700 values in [1.02σ*, 3σ*], 200 in [0, 0.98σ*]."""
    m, n = 900, 1400
    s = torch.cat([torch.linspace(3.0, 1.02, 700, dtype=torch.float64), torch.linspace(0.98, 0.0, 200, dtype=torch.float64)])
    delta, factors = _low_rank(m, n, s, rng)
    _restrain_and_check(torch.zeros(m, n, dtype=torch.float64), delta, factors, 1.0, want=700)


@pytest.mark.parametrize("count,dense", [(150, False), (40, True), (450, True)],
                         ids=["150-low-rank", "40-dense", "450-dense"])
def test_many_values_above_on_both_sides_of_the_early_direct_switch(count, dense, monkeypatch, rng):
    """A saturated search (most of the basis above τ) goes to the float64 solve at once when the values
    it still expects would fill half the short side (450 dense values above τ at 900×2400), and keeps
    going where the Frobenius tail settles it (150 values, rank 170) or few values lie above (40 dense):
    every route gives the float64 SVD's triplets."""
    m, n = 900, 2400
    above = torch.linspace(3.0, 1.05, count, dtype=torch.float64)
    below = (torch.linspace(0.95, 0.0, m - count, dtype=torch.float64) if dense
             else 0.9 * torch.rand(20, generator=rng, dtype=torch.float64))
    delta, _ = _low_rank(m, n, torch.cat([above, below]), rng)
    d = delta.float()
    widths: list[int] = []
    extend = Chain.extend
    monkeypatch.setattr(Chain, "extend", lambda chain, v: (widths.append(v.shape[1]), extend(chain, v))[1])
    t = topk_svd(d, threshold=1.0, frobenius_sq=frobenius_sq_bound(d))
    p, s, qt = torch.linalg.svd(d.double(), full_matrices=False)
    k = int((s >= 1.0).sum())
    assert k == count and t.s.numel() == k
    assert torch.allclose(t.s, s[:k], rtol=1e-5, atol=0.0), float((t.s - s[:k]).abs().max())
    want = (p[:, :k] * s[:k]) @ qt[:k]
    err = rel_err((t.u.double() * t.s) @ t.v.double().T, want)
    assert err <= 1e-5, f"rank-{k} part off by {err:.3g}"
    if count == 450:
        # Switched at the first saturated check, before any wide block (the old route doubled the
        # basis to several hundred columns first).
        assert t.certificate == "exact" and max(widths, default=0) <= 16, widths
    elif count == 150:
        assert t.certificate == "frobenius"
    else:
        assert t.certificate in ("randomized", "exact")


# -- the range finder for many values above τ (krylov._Solver._range_finder) ----------------------
def _range_finder_outcomes(monkeypatch) -> list:
    """Record what each call of the range finder returned: its certificate, or None (handed back)."""
    outcomes: list = []
    real = krylov._Solver._range_finder

    def spy(self, *args):
        out = real(self, *args)
        outcomes.append(None if out is None else out.certificate)
        return out

    monkeypatch.setattr(krylov._Solver, "_range_finder", spy)
    return outcomes


RANGE_CASES = {
    # name: (values, what the range finder may return: [] where it is not tried)
    "low-rank": (lambda g: torch.linspace(4.0, 1.2, 120, dtype=torch.float64), [["frobenius"]]),
    "straddling": (lambda g: torch.cat([torch.linspace(3.0, 1.001, 60, dtype=torch.float64),
                                        torch.linspace(0.98, 0.5, 20, dtype=torch.float64)]), [["frobenius"]]),
    "repeated-64": (lambda g: torch.cat([torch.full((64,), 3.0, dtype=torch.float64),
                                         0.5 * torch.rand(10, generator=g, dtype=torch.float64)]),
                    [["frobenius"], []]),
    "dense-tail": (lambda g: torch.cat([torch.linspace(3.0, 1.05, 40, dtype=torch.float64),
                                        torch.linspace(0.9, 0.0, 960, dtype=torch.float64)]), [[None], []]),
    "half-above": (lambda g: torch.linspace(3.0, 1.05, 550, dtype=torch.float64), [[]]),
}


@pytest.mark.parametrize("case,scale", [(c, 1.0) for c in RANGE_CASES] + [("low-rank", 1e-30), ("low-rank", 1e30)],
                         ids=[*RANGE_CASES, "low-rank-1e-30", "low-rank-1e30"])
def test_range_finder_gives_the_float64_triplets(case, scale, monkeypatch, rng):
    """Many values above τ at 1000×2500: the range finder certifies a low-rank Δ (also with values
    just below τ), hands a dense tail back to the Krylov chain (or is not tried) and is not tried
    where the values above τ fill half the short side (the dense solve); every route gives the
    float64 SVD's triplets of the fp32 matrix, at any scale."""
    m, n = 1000, 2500
    values, allowed = RANGE_CASES[case]
    sigmas = values(rng)
    delta, _ = _low_rank(m, n, sigmas, rng)
    d = (delta * scale).float()
    outcomes = _range_finder_outcomes(monkeypatch)
    t = topk_svd(d, threshold=scale, frobenius_sq=frobenius_sq_bound(d), generator=rng)
    p, s, qt = torch.linalg.svd(d.double(), full_matrices=False)
    k = int((s >= scale).sum())
    assert t.s.numel() == k and k == int((sigmas >= 1.0).sum())
    assert torch.allclose(t.s, s[:k], rtol=1e-5, atol=0.0), float(((t.s - s[:k]) / s[:k]).abs().max())
    want = (p[:, :k] * s[:k]) @ qt[:k]
    err = rel_err((t.u.double() * t.s) @ t.v.double().T, want)
    assert err <= 1e-5, f"rank-{k} part off by {err:.3g}"
    assert torch.isfinite(t.u).all() and torch.isfinite(t.v).all()
    assert outcomes in allowed, outcomes
    if outcomes == ["frobenius"]:
        assert t.certificate == "frobenius" and t.bound < scale
    if case == "half-above":
        assert t.certificate == "exact"


def test_range_finder_is_not_tried_on_a_warm_start_or_a_few_values(monkeypatch, rng):
    """The tracker's warm-started solves and a Δ with a few values above τ keep the Krylov route."""
    m, n = 1000, 2500
    outcomes = _range_finder_outcomes(monkeypatch)
    delta, _ = _low_rank(m, n, torch.linspace(4.0, 1.2, 120, dtype=torch.float64), rng)
    d = delta.float()
    cold = topk_svd(d, threshold=1.0, generator=rng)
    assert outcomes == ["frobenius"]
    warm = topk_svd(d, threshold=1.0, start_u=cold.u, start_v=cold.v, generator=rng)
    few, _ = _low_rank(m, n, torch.cat([torch.linspace(4.0, 1.2, 5, dtype=torch.float64),
                                       0.8 * torch.rand(300, generator=rng, dtype=torch.float64)]), rng)
    topk_svd(few.float(), threshold=1.0, generator=rng)
    assert outcomes == ["frobenius"] and warm.s.numel() == 120


@pytest.mark.parametrize("shape", [(130, 70), (300, 900)], ids=["130x70", "300x900"])
def test_dense_full_rank_delta_against_float64_svd(shape, rng):
    m, n = shape
    r = min(m, n)
    s = torch.cat([torch.tensor([4.0, 2.0, 1.3]), 0.95 * torch.rand(r - 3, generator=rng)]).double()
    delta, _ = _low_rank(m, n, s.sort(descending=True).values, rng)
    d = delta.float()
    w0 = torch.randn(m, n, generator=rng) / math.sqrt(n)
    weight = w0 + d
    want, info = restrain_reference(weight.double() - d.double(), d.double())
    res = prune_fast.restrain_(weight, d)
    assert res.n_restrained == info["n_restrained"]
    assert rel_err(weight, want) <= 1e-5


# -- the certificate itself --------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["low_rank", "dense_bulk", "nothing_above"])
def test_certificate_is_reported_and_bounds_the_rest(kind, rng):
    m, n = 400, 1200
    if kind == "low_rank":
        delta, _ = _low_rank(m, n, [2.0, 1.5] + BELOW, rng)
    else:
        tops = [2.0, 1.5] if kind == "dense_bulk" else []
        delta, _ = _low_rank(m, n, tops + BELOW, rng)
        delta = delta + torch.randn(m, n, generator=rng, dtype=torch.float64) * (0.6 / (math.sqrt(m) + math.sqrt(n)))
    d = delta.float()
    t = topk_svd(d, threshold=1.0, frobenius_sq=frobenius_sq_bound(d))
    s = torch.linalg.svdvals(d.double())
    k = int((s >= 1.0).sum())
    assert t.s.numel() == k
    assert t.certificate in ("exact", "frobenius", "randomized")
    if kind == "low_rank":
        assert t.certificate in ("frobenius", "exact")
    if t.certificate != "exact":
        # The proved bound lies between the true next value and the threshold.
        assert float(s[k]) <= t.bound < 1.0, (float(s[k]), t.bound)
    assert t.failure_probability <= 1e-10


def test_frobenius_sq_bound_is_tight_for_long_lines(rng):
    """Chunked line norms: the bound's margin is ~66 ulp, not (line length)·ulp."""
    a = torch.randn(300, 6400, generator=rng)
    exact = float((a.double() ** 2).sum())
    got = frobenius_sq_bound(a)
    assert exact <= got <= exact * (1 + 1e-5)
    assert exact <= frobenius_sq_bound(a.T) <= exact * (1 + 1e-5)


# -- scale safety ---------------------------------------------------------------------------------
@pytest.mark.parametrize("scale", [1e-30, 1e-25, 1e-12, 1.0, 1e12, 1e25, 1e30], ids=lambda s: f"{s:g}")
def test_any_scale_gives_the_scaled_answer(scale, rng):
    """The linear restraint is scale-equivariant: Ŵ(sW0, sΔ) = s·Ŵ(W0, Δ), with σ* computed."""
    m, n = 200, 500
    w0, w0_factors = _low_rank(m, n, torch.linspace(1.0, 0.1, 40, dtype=torch.float64), rng)
    delta, factors = _low_rank(m, n, [3.0, 1.2] + BELOW, rng)
    weight = ((w0 + delta) * scale).float()
    d = (delta * scale).float()
    res = prune_fast.restrain_(weight, d, fn="linear")
    assert res.n_restrained == 2
    assert math.isclose(res.sigma_star, scale, rel_tol=1e-5)
    want = _exact(w0, factors, 1.0, fn="linear") * scale
    assert bool(torch.isfinite(weight).all())
    assert rel_err(weight, want) <= 1e-5


def test_tiny_w0_is_not_called_zero_and_a_zero_w0_is(rng):
    m, n = 100, 300
    delta, _ = _low_rank(m, n, [2.0, 0.5], rng)
    w0 = 1e-30 * torch.randn(m, n, generator=rng, dtype=torch.float64) / (math.sqrt(m) + math.sqrt(n))
    weight, d = (w0 + delta * 1e-30).float(), (delta * 1e-30).float()
    want, info = restrain_reference(weight.double() - d.double(), d.double(), fn="linear")
    res = prune_fast.restrain_(weight, d, fn="linear")
    assert res.n_restrained == info["n_restrained"] == 1
    assert math.isclose(res.sigma_star, info["sigma_star"], rel_tol=1e-5)
    assert rel_err(weight, want) <= 1e-5
    d = delta.float()
    with pytest.raises(InvalidInputError, match="zero"):
        prune_fast.restrain_(d.clone(), d)


def test_huge_entries_near_the_fp32_maximum(rng):
    """A 3e38 entry in W0 (σ* ≈ 3e38) and one in Δ: no overflow, no false "W0 is zero"."""
    m, n = 80, 200
    w0 = torch.zeros(m, n)
    w0[3, 5] = 3e38
    w0[:, :40] += torch.randn(m, 40, generator=rng)
    delta = torch.zeros(m, n)
    delta[7, 9] = 3.2e38
    weight = w0 + delta
    want, info = restrain_reference(weight.double() - delta.double(), delta.double(), fn="linear")
    res = prune_fast.restrain_(weight, delta, fn="linear")
    assert res.n_restrained == info["n_restrained"] == 1
    assert bool(torch.isfinite(weight).all())
    assert rel_err(weight, want) <= 1e-6


# -- σ* validation ------------------------------------------------------------------------------------
@pytest.mark.parametrize("bad", [5e-324, 1e-45, 1e-39, float("nan"), float("inf"), float("-inf"), 0.0, -1.0, 1e39,
                                 True, 1 + 2j, "1.0", torch.tensor([1.0, 2.0]), torch.tensor(True)],
                         ids=lambda x: repr(x)[:20])
def test_bad_sigma_star_is_refused_before_writing(bad, rng):
    delta, _ = _low_rank(30, 20, [2.0, 0.5], rng)
    weight = delta.float()
    before = weight.clone()
    with pytest.raises(InvalidInputError, match="sigma_star"):
        prune_fast.restrain_(weight, delta.float(), sigma_star=bad)
    assert torch.equal(weight, before)
    with pytest.raises(InvalidInputError, match="sigma_star"):
        prune_fast.SpectralTracker(weight, sigma_star=bad)


@pytest.mark.parametrize("good", [1, np.float32(1.0), np.float64(1.0), np.int64(1), np.array(1.0), torch.tensor(1.0),
                                  torch.tensor(1, dtype=torch.int32), torch.tensor([1.0], dtype=torch.float64)],
                         ids=lambda x: f"{type(x).__name__}")
def test_any_real_scalar_sigma_star_is_accepted(good, rng):
    delta, factors = _low_rank(60, 90, [2.0, 0.5], rng)
    res = _restrain_and_check(torch.zeros(60, 90, dtype=torch.float64), delta, factors, 1.0, want=1)
    weight = delta.float()
    res2 = prune_fast.restrain_(weight, delta.float(), sigma_star=good)
    assert res2.sigma_star == 1.0 and res2.n_restrained == res.n_restrained


def test_subnormal_sigma_star_is_fine_for_float64_weights(rng):
    delta, _ = _low_rank(40, 30, [2e-39, 5e-40], rng)
    weight = delta.clone()
    res = prune_fast.restrain_(weight, delta, sigma_star=1e-39)  # normal in float64
    assert res.n_restrained == 1 and bool(torch.isfinite(weight).all())


# -- the caller's random stream; determinism ------------------------------------------------------------
def test_restrain_never_touches_the_global_rng_and_is_deterministic(rng):
    m, n = 300, 700
    delta, _ = _low_rank(m, n, [2.0, 1.2] + BELOW, rng)
    d = (delta + torch.randn(m, n, generator=rng, dtype=torch.float64) * 0.02).float()
    w = torch.randn(m, n, generator=rng) / math.sqrt(n) + d
    outs = []
    for seed in (1, 2):
        torch.manual_seed(seed)
        state = torch.get_rng_state()
        out = w.clone()
        prune_fast.restrain_(out, d)  # σ* computed too
        assert torch.equal(torch.get_rng_state(), state), "restrain_ advanced the global RNG"
        outs.append(out)
    assert torch.equal(outs[0], outs[1]), "two calls on the same input gave different weights"
    g = torch.Generator().manual_seed(123)
    out = w.clone()
    prune_fast.restrain_(out, d, generator=g)
    assert rel_err(out, outs[0].double()) <= 1e-6


def test_tracker_never_touches_the_global_rng_and_is_deterministic(rng):
    m, n = 200, 120
    w = torch.randn(m, n, generator=rng) / math.sqrt(n)
    updates = [(torch.randn(m, 2, generator=rng) * 0.3, torch.randn(n, 2, generator=rng) * 0.3) for _ in range(12)]
    updates.append((updates[0][0].clone(), updates[0][1].clone()))  # a direction already in the basis
    weights = []
    for _ in range(2):
        torch.manual_seed(7)
        state = torch.get_rng_state()
        weight = w.clone()
        tr = prune_fast.SpectralTracker(weight, fn="log1.2")
        for u, v in updates:
            tr.add_(u, v)
        tr.spectrum()
        tr.restrain_()
        assert torch.equal(torch.get_rng_state(), state), "SpectralTracker advanced the global RNG"
        weights.append(weight.clone())
    assert torch.equal(weights[0], weights[1])
