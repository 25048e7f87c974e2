"""Top singular triplets by block Lanczos bidiagonalisation with full reorthogonalisation.

One solver serves both questions PRUNE asks of a matrix A (m×n, seen only through products):

- ``topk_svd(A, k=1)``: σ_max(W0), i.e. σ*;
- ``topk_svd(A, threshold=σ*)``: every triplet of Δ with σ ≥ σ*, however many there are.

Algorithm (block Golub–Kahan–Lanczos; Golub & Kahan 1965, Golub, Luk & Overton 1981). Starting from
an orthonormal block V₁ (random, optionally warm-started with last step's right singular vectors),
grow orthonormal bases U = [U₁ … U_j], V = [V₁ … V_j] of the Krylov spaces with

    U_j R_j = A V_j − U (Uᵀ A V_j),          V_{j+1} S_j = Aᵀ U_j − V (Vᵀ Aᵀ U_j),

so that T = Uᵀ A V is known exactly from the orthogonalisation coefficients (block upper
triangular, no extra products). The singular triplets (θ, y_u, y_v) of the small T give Ritz
triplets (θ, U y_u, V y_v) with A (V y_v) = θ (U y_u) by construction and the residual

    ‖Aᵀ (U y_u) − θ (V y_v)‖ = ‖S_j y_u[last block]‖,

read off for free. The wanted triplets stop when every residual is ≤ tol·θ₁; in threshold mode the
first Ritz value *below* the threshold (the guard) must have converged too, or its residual interval
[θ − r, θ + r] must lie below the threshold, or the Weyl bound
σ_{k+1}(A) ≤ θ_{k+1} + √(‖A‖_F² − ‖T‖_F²) must already lie below the threshold. The block grows when
many values lie above the threshold (adaptive k), and the final residuals are checked explicitly
before the triplets are returned, from the products Aᵀ U the iteration already formed (kept, so the
check costs no extra pass over A). Wide matrices are solved as Aᵀ (the basis
of the short side can complete, after which the answer is exact).

Block Krylov converges where single-vector power iteration stalls on clustered top singular values
(Musco & Musco, NeurIPS 2015).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .kernels.orthonormalize import orthonormalize
from .operators import DenseOperator, MatrixOperator, TransposedOperator

__all__ = ["Triplets", "topk_svd", "default_tol", "direct_triplets", "prefer_direct", "frobenius_sq_bound"]


@dataclass
class Triplets:
    """Singular triplets ``A ≈ u diag(s) vᵀ`` restricted to the wanted values.

    ``u``: (m, k) and ``v``: (n, k) in the operator's dtype, ``s``: (k,) float64, descending.
    ``residual``: max over the returned triplets of ‖Aᵀu_i − s_i v_i‖ / s_1 (explicitly measured).
    ``next_value``: the largest Ritz value not returned (a lower bound on σ_{k+1}; 0 if none).
    ``basis_size``: dimension of the Krylov basis used; ``exact``: the basis covered the short side.
    """

    u: torch.Tensor
    s: torch.Tensor
    v: torch.Tensor
    residual: float
    next_value: float
    basis_size: int
    products: int
    exact: bool


def default_tol(dtype: torch.dtype) -> float:
    """Relative residual the solver aims for: 64 ulp of the product dtype."""
    return 64 * torch.finfo(dtype).eps


def frobenius_sq_bound(a: torch.Tensor) -> float:
    """An upper bound on ‖A‖_F² (for the Weyl certificate), without a float64 copy of A.

    Norms of the contiguous lines run in A's own (fp32) arithmetic, one cheap pass (0.6 ms at
    1600×6400, against 27 ms for a float64 norm, which converts every element); their squares are
    summed in float64. Each line's sum of ``L`` squares is off by at most ``L·ε`` relative (all terms
    are positive) and squares below the smallest normal number add at most ``numel · tiny``, so
    ``total · (1 + (L + 2)·ε) + numel · tiny`` is an upper bound. An overflowing or zero fp32
    result falls back to the float64 norm (zero must be exact: it means "nothing to restrain").
    """
    if a.numel() == 0:
        return 0.0
    dim = 1 if a.stride(1) == 1 else 0
    lines = torch.linalg.vector_norm(a, dim=dim)
    total = float((lines.to(torch.float64) ** 2).sum())
    if math.isfinite(total) and total > 0.0:
        info = torch.finfo(a.dtype)
        return total * (1.0 + (a.shape[dim] + 2) * info.eps) + a.numel() * info.tiny
    return float(torch.linalg.vector_norm(a, dtype=torch.float64) ** 2)


def _as_operator(a: torch.Tensor | MatrixOperator) -> MatrixOperator:
    return DenseOperator(a) if isinstance(a, torch.Tensor) else a


def topk_svd(
    a: torch.Tensor | MatrixOperator,
    *,
    k: int | None = None,
    threshold: float | None = None,
    start_u: torch.Tensor | None = None,
    start_v: torch.Tensor | None = None,
    block: int = 8,
    oversample: int = 4,
    tol: float | None = None,
    value_tol: float | None = None,
    frobenius_sq: float | None = None,
    generator: torch.Generator | None = None,
    backend: str = "torch",
) -> Triplets:
    """Top-``k`` singular triplets of ``a``, or all with σ ≥ ``threshold`` (exactly one of the two).

    ``start_u``/``start_v``: previous left/right singular vectors to warm-start from (optional).
    ``frobenius_sq``: ‖A‖_F² (or an upper bound) if known, enabling the Weyl certificate in threshold mode.
    ``value_tol``: top-k mode, when only the values matter (σ*): a wanted value also counts as
    converged once its gap bound r²/δ ≤ ``value_tol``·θ₁ (see :func:`_value_error_bound`), which needs
    far fewer passes than a residual of ``tol`` when the top values are clustered.
    ``backend``: resolved kernel backend (``"torch"``/``"triton"``) for the orthonormalisations;
    products go through the operator (which carries its own backend).

    Example::

        t = topk_svd(w0, k=1)                       # σ* = t.s[0]
        t = topk_svd(delta, threshold=float(t.s[0]))  # every σ(Δ) ≥ σ*
    """
    if (k is None) == (threshold is None):
        raise ValueError("topk_svd needs exactly one of k or threshold")
    if value_tol is not None and k is None:
        raise ValueError("value_tol applies to top-k mode only")
    op = _as_operator(a)

    def _orthonormalize(x: torch.Tensor, against: torch.Tensor | None = None):
        return orthonormalize(x, against, backend=backend, generator=generator)

    transposed = op.shape[0] < op.shape[1]
    if transposed:
        op = TransposedOperator(op)
        start_u, start_v = start_v, start_u
    m, n = op.shape
    dt, dev = op.dtype, op.device
    tol = default_tol(dt) if tol is None else tol
    empty = Triplets(torch.zeros(m, 0, dtype=dt, device=dev), torch.zeros(0, dtype=torch.float64),
                     torch.zeros(n, 0, dtype=dt, device=dev), 0.0, 0.0, 0, 0, True)
    if n == 0 or m == 0 or k == 0:
        return _orient(empty, transposed)

    def randn(rows: int, cols: int) -> torch.Tensor:
        return torch.randn(rows, cols, dtype=dt, device="cpu", generator=generator).to(dev)

    want_k = 0 if k is None else min(k, n)
    starts = [] if start_v is None or start_v.shape[1] == 0 else [start_v.to(dt)]
    n_start = sum(s.shape[1] for s in starts)
    b = min(n, max(block, want_k + oversample, n_start + oversample))
    v_blk, _, _ = _orthonormalize(torch.cat(starts + [randn(n, b - min(n_start, b))], 1)[:, :b])
    u_blk, r, _ = _orthonormalize(op.matmul(v_blk))
    products = 1
    u_basis, v_basis = _Basis(u_blk, 8 * b), _Basis(v_blk, 8 * b)
    z_basis = None  # Aᵀ U, kept so the final residual check costs no extra pass over A
    u_last = u_blk
    t_mat = r.to(torch.float64)

    def _extend(v_next: torch.Tensor) -> None:
        """Append the next right block, its product and the projected matrix's new columns."""
        nonlocal t_mat, u_last, products
        ub, dim = u_basis.view, v_basis.view.shape[1]
        v_basis.append(v_next)
        u_next, r, coeff = _orthonormalize(op.matmul(v_next), against=ub)
        products += 1
        top = torch.cat([t_mat, coeff.to(torch.float64)], 1)
        bottom = torch.cat([torch.zeros(r.shape[0], dim, dtype=torch.float64), r.to(torch.float64)], 1)
        t_mat = torch.cat([top, bottom], 0)
        u_basis.append(u_next)
        u_last = u_next

    verified_failures = 0
    n_want = want_k
    since_check = 0
    while True:
        ub, vb = u_basis.view, v_basis.view
        z = op.rmatmul(u_last)
        products += 1
        if z_basis is None:
            z_basis = _Basis(z, 8 * b)
        else:
            z_basis.append(z)
        dim = vb.shape[1]
        remaining = n - dim
        b_last = u_last.shape[1]
        # The dense SVD of the projected dim×dim matrix grows like dim³ and outweighs a block's two
        # products beyond dim ≈ 128 (13 ms at 368, against ~4 ms of products at 1600×6400). Past
        # that size, test convergence only every ~dim/128 blocks: at most a few blocks too many.
        since_check += 1
        due = since_check * _CHECK_EVERY_BLOCK_UP_TO >= dim or remaining <= b_last
        if due:
            since_check = 0
            p, theta, qt = torch.linalg.svd(t_mat)
            if float(theta[0]) == 0.0:
                return _orient(empty, transposed)
            # Decide how many triplets we want and how large the next block should be.
            if threshold is None:
                n_want = min(want_k, dim)
                guard = None
            else:
                n_want = int((theta >= threshold).sum())
                guard = n_want if n_want < dim else None
        b_next = min(remaining, max(b_last, min(2 * b_last, max(block, n_want + oversample))))
        if remaining > 0:
            extra = b_next - b_last
            x = z if extra <= 0 else torch.cat([z, randn(n, extra)], 1)
            if remaining < x.shape[1]:
                x = randn(n, remaining)  # complete the basis; coupling read off below
                v_next, _, _ = _orthonormalize(x, against=vb)
                s_coupling = v_next.T @ z
            else:
                v_next, r_full, _ = _orthonormalize(x, against=vb)
                s_coupling = r_full[:, :b_last]
            if due:
                res = torch.linalg.vector_norm(s_coupling.to(torch.float64) @ p[-b_last:, :dim], dim=0)
        else:
            v_next = None
            res = torch.zeros(dim, dtype=torch.float64)
        if not due:
            _extend(v_next)
            continue
        scale = float(theta[0])
        wanted_ok = bool((res[:n_want] <= tol * scale).all())
        if value_tol is not None and not wanted_ok:
            wanted_ok = bool((_value_error_bound(theta, res, n_want) <= value_tol * scale).all())
        # The guard need not be resolved inside a cluster of small values: it is enough that its
        # residual interval already lies below the threshold.
        guard_ok = guard is None or float(res[guard]) <= tol * scale or float(theta[guard] + res[guard]) < threshold
        if threshold is not None and guard is not None and not guard_ok and frobenius_sq is not None:
            tail = math.sqrt(max(frobenius_sq - float((t_mat ** 2).sum()), 0.0))
            guard_ok = float(theta[guard]) + tail < threshold
        enough_room = threshold is None or guard is not None or remaining == 0
        if (wanted_ok and guard_ok and enough_room) or v_next is None:
            u_k = ub @ p[:, :n_want].to(dt)
            v_k = vb @ qt[:n_want].T.to(dt)
            s_k = theta[:n_want].clone()
            residuals = _explicit_residuals(z_basis.view @ p[:, :n_want].to(dt), s_k, v_k)
            explicit = float(residuals.max()) / scale if n_want else 0.0
            # Accept when the explicit residual agrees with the cheap estimate (rounding aside), or the
            # basis is complete and nothing more can be gained.
            accepted = explicit <= max(4 * tol, 16 * default_tol(dt))
            if value_tol is not None and not accepted:
                bound = _value_error_bound(theta, torch.cat([residuals, res[n_want:]]), n_want)
                accepted = bool((bound <= 4 * value_tol * scale).all())
            if accepted or v_next is None or verified_failures >= 3:
                next_value = float(theta[n_want]) if n_want < dim else 0.0
                out = Triplets(u_k, s_k, v_k, explicit, next_value, dim, products, remaining == 0)
                return _orient(out, transposed)
            verified_failures += 1
        _extend(v_next)


# Below this short side, or when a large share of the spectrum is wanted, one dense float64 solve
# of the (small) matrix costs less than Krylov iterations: e.g. a 128-wide MLP weight of the test
# model, or the r×r core of a factored Δ after many edits that each cross σ*. With a quarter of
# the spectrum wanted the direct route wins up to large cores (measured, 35 % wanted: 38 vs 231 ms
# at 600×600, 118 vs 700 ms at 1000×1000, 360 vs 2083 ms at 1500×1500), so it is bounded by its
# own cost, m·n·min(m, n) ≤ 2³³ (a 2048² core), which keeps weight-sized matrices (1600×6400:
# 1.6e10) on the Krylov path.
DIRECT_MAX_SHORT_SIDE = 64
# Basis width up to which convergence is tested after every block (see topk_svd).
_CHECK_EVERY_BLOCK_UP_TO = 128
DIRECT_MAX_WORK_FOR_MANY = 2 ** 33


def prefer_direct(shape: tuple[int, int], expected: int) -> bool:
    """Whether :func:`direct_triplets` beats the Krylov solver for ``expected`` wanted values."""
    short = min(shape)
    many = 4 * expected >= short and shape[0] * shape[1] * short <= DIRECT_MAX_WORK_FOR_MANY
    return short <= DIRECT_MAX_SHORT_SIDE or many


# The Gram route squares the condition number: σ_i from eigh(AᵀA) in float64 is off by about
# ε₆₄·(σ₁/σ_i)² relative, so it is used only while every wanted σ_i ≥ 1e-4·σ₁ (error ≲ 1e-8).
_GRAM_MIN_RATIO = 1e-4


def direct_triplets(a: torch.Tensor, threshold: float) -> Triplets:
    """Every triplet with σ ≥ threshold of a small dense matrix, in float64 (exact to rounding).

    From the eigen-decomposition of the short side's float64 Gram matrix (3× faster than an SVD
    for a 512×128 test-model weight, the per-edit cost of online PRUNE there), falling back to
    one full SVD when a wanted value is too small relative to σ₁ for the Gram route's accuracy.
    """
    a64 = a.to(torch.float64)
    tall = a64.shape[0] >= a64.shape[1]
    short = a64 if tall else a64.T
    if short.shape[1]:
        lam, vecs = torch.linalg.eigh(short.T @ short)
        s_all = lam.flip(0).clamp_min(0).sqrt()
        keep = int((s_all >= threshold).sum())
        if keep == 0 or threshold >= _GRAM_MIN_RATIO * float(s_all[0]):
            v = vecs.flip(1)[:, :keep]
            s = s_all[:keep]
            u = short @ v / s
            next_value = float(s_all[keep]) if keep < s_all.numel() else 0.0
            u, v = (u, v) if tall else (v, u)
            return Triplets(u.to(a.dtype), s.clone(), v.to(a.dtype), 0.0, next_value, min(a.shape), 0, True)
    p, s, ht = torch.linalg.svd(a64, full_matrices=False)
    keep = int((s >= threshold).sum())
    next_value = float(s[keep]) if keep < s.numel() else 0.0
    return Triplets(p[:, :keep].to(a.dtype), s[:keep].clone(), ht[:keep].T.to(a.dtype), 0.0, next_value,
                    min(a.shape), 0, True)


class _Basis:
    """Orthonormal columns appended block by block into one buffer (no re-concatenation)."""

    def __init__(self, first: torch.Tensor, capacity: int):
        self.buf = torch.empty(first.shape[0], max(capacity, first.shape[1]), dtype=first.dtype, device=first.device)
        self.used = 0
        self.append(first)

    @property
    def view(self) -> torch.Tensor:
        return self.buf[:, : self.used]

    def append(self, block: torch.Tensor) -> None:
        self.buf = append_columns(self.buf, self.used, block)
        self.used += block.shape[1]


def append_columns(buf: torch.Tensor, used: int, new: torch.Tensor) -> torch.Tensor:
    """Write ``new`` after the first ``used`` columns of ``buf``, doubling the capacity when full;
    returns the buffer (a new one when it grew). Krylov bases and the tracker's factor bases grow
    this way, so neither re-concatenates its basis per block."""
    need = used + new.shape[1]
    if need > buf.shape[1]:
        grown = torch.empty(buf.shape[0], max(need, 2 * buf.shape[1], 8), dtype=buf.dtype, device=buf.device)
        grown[:, :used] = buf[:, :used]
        buf = grown
    buf[:, used:need] = new
    return buf


def _explicit_residuals(at_u: torch.Tensor, s: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """‖Aᵀu_i − s_i v_i‖ (float64), with ``at_u`` = Aᵀ u formed from actual products with A
    (as (Aᵀ U) p, not from the recurrence), so a basis that lost orthogonality still shows."""
    return torch.linalg.vector_norm((at_u - v * s.to(v.dtype)).to(torch.float64), dim=0)


def _value_error_bound(theta: torch.Tensor, res: torch.Tensor, n_want: int) -> torch.Tensor:
    """Bounds r_i²/δ_i on |σ_i − θ_i| for the wanted Ritz values (Saad, *Numerical Methods for Large
    Eigenvalue Problems*, Thm 4.6 applied to the Jordan–Wielandt matrix): δ_i is θ_i's distance to
    the neighbouring Ritz values' residual intervals, an estimate of its distance to the rest of the
    spectrum. Like every Krylov stopping rule it trusts that no unseen value hides beside θ_i; a
    gap not yet resolved (δ_i ≤ 0) gives an infinite bound.
    """
    dim = theta.numel()
    lo = torch.zeros(n_want, dtype=torch.float64)  # no Ritz value below: nothing known, no bound
    has_below = min(n_want, dim - 1)
    lo[:has_below] = theta[:has_below] - (theta[1: has_below + 1] + res[1: has_below + 1])
    if n_want > 1:
        above = theta[: n_want - 1] - res[: n_want - 1]
        lo[1:] = torch.minimum(lo[1:], above - theta[1:n_want])
    gap_ok = lo > 0
    bound = torch.where(gap_ok, res[:n_want] ** 2 / lo.clamp_min(1e-300), torch.full_like(lo, math.inf))
    return bound


def _orient(t: Triplets, transposed: bool) -> Triplets:
    if not transposed:
        return t
    return Triplets(t.v, t.s, t.u, t.residual, t.next_value, t.basis_size, t.products, t.exact)
