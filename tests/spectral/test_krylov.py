"""Block Krylov top-k SVD against float64 full SVDs: values, subspaces, residuals, thresholds."""
from __future__ import annotations

import pytest
import torch

from prune_fast.spectral.certificate import frobenius_sq_bound
from prune_fast.spectral.direct import _FP32_BACK_PRODUCT_MAX_RATIO as _FP32_MAX_RATIO
from prune_fast.spectral.direct import direct_triplets
from prune_fast.spectral.krylov import topk_svd
from prune_fast.spectral.lanczos import value_error_bound
from prune_fast.spectral.operators import DifferenceOperator
from spectral_cases import make_delta, orthonormal, spectrum

SHAPES = [(1, 1), (2, 3), (17, 33), (130, 70), (70, 130), (300, 120)]


def _subspace_ok(got: torch.Tensor, want: torch.Tensor, tol: float) -> bool:
    """Sign/rotation-invariant: the principal angles between the two column spaces are ~0."""
    if got.shape[1] == 0:
        return want.shape[1] == 0
    s = torch.linalg.svdvals(got.double().T @ want.double())
    return bool((1 - s.min()) <= tol)


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (torch.float64, 1e-10)], ids=["fp32", "fp64"])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_topk_values_and_vectors(shape, dtype, tol, rng):
    m, n = shape
    a = torch.randn(m, n, generator=rng, dtype=torch.float64)
    k = min(3, m, n)
    t = topk_svd(a.to(dtype), k=k, generator=rng)
    u, s, vh = torch.linalg.svd(a, full_matrices=False)
    assert torch.allclose(t.s, s[:k], rtol=tol, atol=0), (t.s - s[:k]).abs().max()
    assert t.residual <= 100 * torch.finfo(dtype).eps * 64
    # Singular vectors of distinct values: compare directions one by one (sign-invariant).
    gaps = torch.cat([s[:k - 1] - s[1:k], s[k - 1:k] - (s[k:k + 1] if s.numel() > k else torch.zeros(1, dtype=s.dtype))])
    for i in range(k):
        if gaps[i] > 1e-3 * s[0]:
            assert _subspace_ok(t.u[:, i:i + 1], u[:, i:i + 1], tol=1e2 * tol)
            assert _subspace_ok(t.v[:, i:i + 1], vh[i:i + 1].T, tol=1e2 * tol)


@pytest.mark.parametrize("n_above,rank", [(0, 5), (1, 1), (5, 20), (40, 60)], ids=lambda x: str(x))
@pytest.mark.parametrize("shape", [(130, 70), (70, 130), (400, 200)], ids=lambda s: f"{s[0]}x{s[1]}")
def test_threshold_finds_every_value_above(shape, n_above, rank, rng):
    m, n = shape
    sig = spectrum(n_above, rank, rng)
    d, (u, s, v) = make_delta(m, n, sig, rng)
    t = topk_svd(d.float(), threshold=1.0, frobenius_sq=float(d.norm() ** 2), generator=rng)
    assert t.s.numel() == n_above
    assert torch.allclose(t.s, s[:n_above], rtol=1e-5, atol=0)
    assert _subspace_ok(t.u, u[:, :n_above], 1e-5) and _subspace_ok(t.v, v[:, :n_above], 1e-5)
    assert t.next_value < 1.0


def test_dense_noise_below_threshold(rng):
    """Full-rank Δ: a bulk of small values and a few spikes; the bulk must not be reported."""
    m, n = 200, 160
    sig = torch.cat([torch.tensor([9.0, 5.0, 2.5]), torch.linspace(0.7, 0.01, 157)]).double()
    d, (u, s, v) = make_delta(m, n, sig, rng)
    t = topk_svd(d.float(), threshold=1.0, generator=rng)
    assert t.s.numel() == 3 and torch.allclose(t.s, s[:3], rtol=1e-5, atol=0)


def test_warm_start_converges_with_fewer_products(rng):
    # A warm start usually certifies in 6 products where a fresh chain needs 8-10, but on ~4 % of
    # draws it needs one block more than the fresh chain; the promise is fewer products overall, so
    # it is tested over eight independent draws (the sum fails at random with probability ~1e-4).
    m, n = 400, 300
    warm_total = fresh_total = 0
    for _ in range(8):
        d, _ = make_delta(m, n, spectrum(6, 30, rng), rng)
        cold = topk_svd(d.float(), threshold=1.0, generator=rng)
        bump = 1e-3 * torch.randn(m, 1, generator=rng).double() @ torch.randn(1, n, generator=rng).double()
        warm = topk_svd((d + bump).float(), threshold=1.0, start_u=cold.u, start_v=cold.v, generator=rng)
        fresh = topk_svd((d + bump).float(), threshold=1.0, generator=rng)
        assert warm.s.numel() == fresh.s.numel() == 6
        assert torch.allclose(warm.s, fresh.s, rtol=1e-5, atol=0)
        warm_total += warm.products
        fresh_total += fresh.products
    assert warm_total < fresh_total


def test_difference_operator_matches_materialised(rng):
    w = torch.randn(90, 60, generator=rng)
    d = torch.randn(90, 60, generator=rng)
    t = topk_svd(DifferenceOperator(w, d), k=2, generator=rng)
    s = torch.linalg.svdvals((w - d).double())
    assert torch.allclose(t.s, s[:2], rtol=1e-5, atol=0)


def test_zero_matrix_and_direct_path(rng):
    assert topk_svd(torch.zeros(30, 20), threshold=1.0).s.numel() == 0
    assert topk_svd(torch.zeros(30, 20), k=2).s.numel() == 0
    a = torch.randn(20, 12, generator=rng, dtype=torch.float64)
    s = torch.linalg.svdvals(a)
    t = direct_triplets(a, float(s[2] + s[3]) / 2)
    assert t.s.numel() == 3 and torch.allclose(t.s, s[:3]) and t.next_value == pytest.approx(float(s[3]))


@pytest.mark.parametrize("shape", [(90, 230), (230, 90)], ids=["wide", "tall"])
def test_direct_triplets_with_the_reused_float64_buffer(shape, rng):
    """fp32 input: the float64 copy goes to the thread's reused buffer (``_scratch``). Several calls in a
    row on different matrices, one of them while the buffer is lent out, each equal the float64 SVD
    of its own matrix; no result aliases the buffer (a later call does not change an earlier result)."""
    from prune_fast import _scratch

    _scratch.release()
    results, refs = [], []
    for i in range(3):
        a64 = torch.randn(*shape, generator=rng, dtype=torch.float64) * 10.0 ** (i - 1)
        a = a64.float()
        s_ref = torch.linalg.svdvals(a.double())
        tau = float(s_ref[4] + s_ref[5]) / 2
        if i == 1:
            with _scratch.borrow(shape, torch.float64) as held:   # the buffer is taken: a fresh copy
                held.fill_(float("nan"))
                t = direct_triplets(a, tau)
                assert bool(torch.isnan(held).all())
        else:
            t = direct_triplets(a, tau)
        results.append((t.u.clone(), t.s.clone(), t.v.clone(), t))
        refs.append((a.double(), s_ref))
    for (u, s, v, t), (a, s_ref) in zip(results, refs):
        assert torch.equal(t.u, u) and torch.equal(t.s, s) and torch.equal(t.v, v)   # untouched by later calls
        assert s.numel() == 5 and torch.allclose(s, s_ref[:5], rtol=1e-12, atol=0)
        rank5 = (u.double() * s) @ v.double().T
        p, sv, ht = torch.linalg.svd(a, full_matrices=False)
        want = (p[:, :5] * sv[:5]) @ ht[:5]
        assert float((rank5 - want).norm() / want.norm()) <= 1e-6
    _scratch.release()


def test_needs_exactly_one_of_k_and_threshold():
    with pytest.raises(ValueError):
        topk_svd(torch.eye(3))
    with pytest.raises(ValueError):
        topk_svd(torch.eye(3), k=1, threshold=1.0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["fp32", "fp64"])
@pytest.mark.parametrize("transposed", [False, True], ids=["rowmajor", "colmajor"])
def test_frobenius_sq_bound_is_a_tight_upper_bound(dtype, transposed, rng):
    a64 = torch.randn(300, 170, generator=rng, dtype=torch.float64) * torch.rand(300, 1, generator=rng, dtype=torch.float64)
    a = a64.to(dtype)
    a = a.T.contiguous().T if transposed else a
    exact = float((a.double() ** 2).sum())
    got = frobenius_sq_bound(a)
    assert exact <= got <= exact * (1 + 1e-4)
    assert frobenius_sq_bound(torch.zeros(5, 7, dtype=dtype)) == 0.0
    # Squares that underflow (or overflow) fp32 fall back to float64: never 0 for a nonzero matrix.
    tiny = torch.full((4, 4), 1e-30, dtype=dtype)
    assert frobenius_sq_bound(tiny) >= float((tiny.double() ** 2).sum()) > 0.0
    huge = torch.full((4, 4), 1e30, dtype=dtype)
    assert frobenius_sq_bound(huge) == pytest.approx(16e60, rel=1e-6)


@pytest.mark.parametrize("cols", [1, 2, 5, 8, 11, 12, 16])
@pytest.mark.parametrize("shape", [(90, 130), (400, 300)], ids=["small", "onednn-sized"])
def test_dense_operator_products_match_float64(cols, shape, rng):
    """Both orientations of the skinny product, through every CPU route (plain, (Xᵀ aᵀ)ᵀ, oneDNN)."""
    from prune_fast.spectral.operators import DenseOperator

    a64 = torch.randn(*shape, generator=rng, dtype=torch.float64)
    op = DenseOperator(a64.float())
    m, n = shape
    x = torch.randn(n, cols, generator=rng, dtype=torch.float64)
    y = torch.randn(m, cols, generator=rng, dtype=torch.float64)
    got_x, got_y = op.matmul(x.float()), op.rmatmul(y.float())
    assert got_x.shape == (m, cols) and got_y.shape == (n, cols)
    assert torch.allclose(got_x.double(), a64 @ x, rtol=1e-5, atol=1e-4)
    assert torch.allclose(got_y.double(), a64.T @ y, rtol=1e-5, atol=1e-4)


def test_value_error_bound_uses_the_neighbouring_intervals():
    theta = torch.tensor([3.0, 2.0, 1.0], dtype=torch.float64)
    res = torch.tensor([1e-3, 1e-2, 0.1], dtype=torch.float64)
    # θ₁: gap to θ₂'s interval 3 − 2.01; θ₂: gap min(2 − 1.1, 2.999 − 2); θ₃: nothing known below.
    want = torch.tensor([1e-6 / 0.99, 1e-4 / 0.9, float("inf")], dtype=torch.float64)
    assert torch.allclose(value_error_bound(theta, res, 3), want)
    # Overlapping intervals: no gap, no bound.
    assert value_error_bound(theta, torch.tensor([0.5, 1.2, 0.1], dtype=torch.float64), 1).isinf().all()


@pytest.mark.parametrize("top_gap", [1e-1, 1e-3, 0.0], ids=["separated", "clustered", "double"])
def test_sigma_max_value_mode_is_accurate_for_clustered_tops(top_gap, rng):
    """σ* from the gap-bound stop is within 1e-6 of the float64 σ_max, however clustered the top."""
    from prune_fast.restrain import sigma_max

    m, n = 400, 900
    s = torch.cat([torch.tensor([1.0, 1.0 - top_gap, 1.0 - 2 * top_gap]), 0.9 * torch.rand(97, generator=rng)]).double()
    u = torch.linalg.qr(torch.randn(m, 100, generator=rng, dtype=torch.float64))[0]
    v = torch.linalg.qr(torch.randn(n, 100, generator=rng, dtype=torch.float64))[0]
    a = (u * s) @ v.T + 1e-3 * torch.randn(m, n, generator=rng, dtype=torch.float64) / n ** 0.5
    want = float(torch.linalg.matrix_norm(a, 2))
    got, _ = sigma_max(a.float(), generator=rng)
    assert abs(got - want) <= 1e-6 * want


@pytest.mark.parametrize("shape", [(120, 40), (40, 120)], ids=["tall", "wide"])
@pytest.mark.parametrize("ratio", [0.5, 1e-3, 1e-6], ids=["gram", "gram-small", "svd-fallback"])
def test_direct_triplets_against_float64_svd(shape, ratio, rng):
    """Both routes (Gram eigh while the threshold ≥ 1e-4 σ₁, SVD below) give the reference triplets."""
    m, n = shape
    r = min(m, n)
    s = torch.cat([torch.tensor([10.0, 9.0, 7.0]), 10.0 * ratio * torch.rand(r - 3, generator=rng) ** 2]).double()
    s, _ = s.sort(descending=True)
    u0 = torch.linalg.qr(torch.randn(m, r, generator=rng, dtype=torch.float64))[0]
    v0 = torch.linalg.qr(torch.randn(n, r, generator=rng, dtype=torch.float64))[0]
    a = (u0 * s) @ v0.T
    threshold = float(s[5] + s[6]) / 2 if ratio < 1e-2 else 6.0
    keep = int((s >= threshold).sum())
    t = direct_triplets(a, threshold)
    assert t.s.numel() == keep
    assert torch.allclose(t.s, s[:keep], rtol=1e-9, atol=0)
    assert torch.allclose((t.u * t.s) @ t.v.T, (u0[:, :keep] * s[:keep]) @ v0[:, :keep].T, rtol=0, atol=1e-8 * float(s[0]))
    assert torch.allclose(t.u.T @ t.u, torch.eye(keep, dtype=torch.float64), atol=1e-9)
    assert t.next_value == pytest.approx(float(s[keep]) if keep < r else 0.0, rel=1e-6, abs=1e-12)


@pytest.mark.parametrize("orient", ["tall", "wide"])
@pytest.mark.parametrize("ratio", [0.5 * _FP32_MAX_RATIO, 0.999 * _FP32_MAX_RATIO, 1.001 * _FP32_MAX_RATIO, 20.0],
                         ids=["fp32-back", "fp32-back-at-switch", "fp64-back-at-switch", "fp64-back"])
def test_direct_triplets_blocked_gram_and_fp32_back_product(orient, ratio, rng):
    """Short side ≥ 512: the Gram matrix from its upper blocks, and u = A v / σ by a fp32 product while
    σ₁ ≤ 4·threshold (float64 beyond): both sides of the switch against the float64 SVD, on the fp32
    matrix actually passed in. Values to float64 rounding; the rank-k part to fp32 level."""
    m, n = (900, 530) if orient == "tall" else (530, 900)
    r = min(m, n)
    keep = 120
    top = torch.linspace(ratio, 1.05, keep, dtype=torch.float64)
    s = torch.cat([top, torch.linspace(0.95, 0.0, r - keep, dtype=torch.float64)])
    a = ((orthonormal(m, r, rng) * s) @ orthonormal(n, r, rng).T).float()
    u0, s0, vh0 = torch.linalg.svd(a.double(), full_matrices=False)
    t = direct_triplets(a, 1.0)
    assert t.s.numel() == keep
    assert torch.allclose(t.s, s0[:keep], rtol=1e-9, atol=0), float((t.s - s0[:keep]).abs().max())
    assert t.u.dtype == t.v.dtype == torch.float32
    assert t.u.is_contiguous() and t.v.is_contiguous()  # row-major, as the products that use them want
    want = (u0[:, :keep] * s0[:keep]) @ vh0[:keep]
    got = (t.u.double() * t.s) @ t.v.double().T
    err = float(torch.linalg.norm(got - want) / torch.linalg.norm(want))
    assert err <= 2e-6, err
    assert torch.allclose(t.u.double().T @ t.u.double(), torch.eye(keep, dtype=torch.float64), atol=1e-5)
    assert torch.allclose(t.v.double().T @ t.v.double(), torch.eye(keep, dtype=torch.float64), atol=1e-5)
    assert t.next_value == pytest.approx(float(s0[keep]), rel=1e-9)


@pytest.mark.parametrize("layout", ["contiguous", "transposed", "column-slice", "fp64"])
@pytest.mark.parametrize("cols", [1, 3, 16, 40])
def test_skinny_matmul_cpu_matches_float64(layout, cols, rng):
    from prune_fast.kernels.cpu_matmul import skinny_matmul_cpu

    a64 = torch.randn(700, 500, generator=rng, dtype=torch.float64)
    if layout == "contiguous":
        a = a64.float()
    elif layout == "transposed":
        a = a64.float().T.contiguous().T  # column-major storage
    elif layout == "column-slice":
        a = torch.randn(700, 520, generator=rng)[:, :500]
        a.copy_(a64.float())
    else:
        a = a64
    x64 = torch.randn(500, cols, generator=rng, dtype=torch.float64)
    got = skinny_matmul_cpu(a, x64.to(a.dtype))
    assert got.shape == (700, cols) and got.dtype == a.dtype and torch.isfinite(got).all()
    tol = 1e-12 if a.dtype == torch.float64 else 2e-6
    err = (got.double() - a64 @ x64).norm(dim=0) / (a64 @ x64).norm(dim=0)
    assert float(err.max()) <= tol


def test_wide_bases_test_convergence_less_often_and_stay_exact(rng):
    """Past a basis of 128 columns convergence is tested only every few blocks: the answers must
    not change. Threshold mode with 70 values above (the basis grows past 128) and σ_max of a
    Gaussian matrix (clustered top values: many blocks), both against float64 SVDs."""
    m, n = 500, 900
    sig = torch.cat([torch.linspace(6.0, 1.5, 70), torch.linspace(0.8, 0.01, 230)]).double()
    d, (u, s, v) = make_delta(m, n, sig, rng)
    t = topk_svd(d.float(), threshold=1.0, frobenius_sq=float(d.norm() ** 2), generator=rng)
    assert t.basis_size > 128, t.basis_size  # the sparse-check path ran
    assert t.s.numel() == 70
    assert torch.allclose(t.s, s[:70], rtol=1e-5, atol=0)
    assert _subspace_ok(t.u, u[:, :70], 1e-5) and _subspace_ok(t.v, v[:, :70], 1e-5)
    assert t.next_value < 1.0

    a = torch.randn(m, n, generator=rng, dtype=torch.float64)
    top = topk_svd(a.float(), k=1, block=16, value_tol=8 * torch.finfo(torch.float32).eps, generator=rng)
    assert top.basis_size > 128, top.basis_size
    want = float(torch.linalg.svdvals(a)[0])
    assert abs(float(top.s[0]) - want) <= 2e-6 * want, (float(top.s[0]), want)
