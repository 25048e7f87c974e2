"""Top singular triplets by block Lanczos bidiagonalisation, with a certificate in threshold mode.

One solver serves both questions PRUNE asks of a matrix A (m×n, seen only through products):

- ``topk_svd(A, k=1)``: σ_max(W0), i.e. σ*;
- ``topk_svd(A, threshold=τ)``: every triplet of Δ with σ ≥ τ = σ*, however many there are, and a
  proof that no other singular value of Δ reaches τ.

Algorithm (block Golub–Kahan–Lanczos; Golub & Kahan 1965, Golub, Luk & Overton 1981). Starting from
an orthonormal block V₁ (Gaussian, optionally warm-started with last step's right singular vectors),
grow orthonormal bases U = [U₁ … U_j], V = [V₁ … V_j] of the Krylov spaces with

    U_j R_j = A V_j − U (Uᵀ A V_j),          V_{j+1} S_j = Aᵀ U_j − V (Vᵀ Aᵀ U_j),

so that T = Uᵀ A V is known exactly from the orthogonalisation coefficients and A V = U T. The singular
triplets (θ, y_u, y_v) of the small T give Ritz triplets (θ, U y_u, V y_v); their residuals
‖Aᵀ(U y_u) − θ V y_v‖ = ‖S_j y_u[last block]‖ are read off for free and measured explicitly before
anything is returned (from the products Aᵀ U the iteration already formed). Ritz values are lower
bounds: θ_i ≤ σ_i(A). Wide matrices are solved as Aᵀ. Blocks widen while values keep crossing τ:
when most of the basis lies above τ (a repeated value, or hundreds of values above it) the next
block takes twice that many columns, its new ones Gaussian, so 200 values above τ cost a handful of
wide passes, and a value repeated more often than the block is wide is still reached.

**The certificate (threshold mode).** A Ritz value whose residual interval lies below τ says nothing
about singular values the Krylov space has not reached, and a block space holds at most as many
copies of a repeated value as it has random columns. So the solver returns only when one of these
proves that no singular value of A outside the k returned ones is ≥ τ (k = #{θ_i ≥ τ}; Ritz values
in [τ − ρ, τ), with ρ the rounding margin below, are deflated too but not returned):

1. *Exact*: the basis spans the short side (T then has A's singular values), or a direct float64
   solve (``direct_triplets``) was cheaper than going on.
2. *Frobenius (deterministic)*: with Q = V, AAᵀ = (AQ)(AQ)ᵀ + A(I − QQᵀ)Aᵀ and Weyl's inequality give
   σ_{k+1}(A)² ≤ σ_{k+1}(AQ)² + ‖A(I − QQᵀ)‖_F² = θ_{k+1}² + ‖A‖_F² − ‖T‖_F²; with an upper bound on
   ‖A‖_F² this costs nothing, and it settles every Δ of rank below the basis size.
3. *Randomized (probabilistic, failure probability ≤ ``failure_probability``, 1e-10 by default)*,
   for a dense Δ whose mass below τ keeps the Frobenius tail large. Once the wanted triplets have
   converged (and the next Ritz value's residual interval lies below τ − ρ), their right vectors V₀
   are fixed, P₀ = I − V₀V₀ᵀ, and a second chain starts from a fresh Gaussian block Ω (drawn now,
   so independent of P₀) on B = AP₀, i.e. with its V blocks kept orthogonal to V₀. By
   Courant–Fischer σ_{k+1}(A) ≤ ‖B‖ for any V₀, and ‖B‖ is bounded from that chain in two ways:

   - Halko, Martinsson & Tropp, SIAM Review 53 (2011), Lemma 4.1 (after Dixon 1983): for a fixed B
     and independent standard Gaussian ω_1..ω_b, P[max_i ‖Bω_i‖ ≤ t‖B‖] ≤ (t√(2/π))^b; so
     ‖B‖ ≤ max_i ‖Bω_i‖ / t except with that probability. Sharp when B is tiny (the rest of a
     low-rank Δ is rounding noise): it certifies after one block.
   - Kuczyński & Woźniakowski, SIAM J. Matrix Anal. Appl. 13 (1992), Thm 4.2: for a symmetric PSD
     n×n matrix M and a start uniform on the sphere, the largest Ritz value ξ of the Krylov space
     [b, Mb, …, M^k b] satisfies P[ξ ≤ (1 − ε)λ₁(M)] ≤ 1.648 √n e^{−√ε(2k−1)} (k ≥ 2, n ≥ 8). The
     block space contains the Krylov space of BᵀB from each Gaussian column (P₀ω has the same
     Krylov Ritz values as a start that is uniform on the sphere, or larger), and the columns are
     independent, so with θ̂ = ‖T_B‖₂ (T_B = U_Bᵀ B V_B) ‖B‖ ≤ θ̂ / √(1 − ε) except with
     probability (1.648 √n e^{−√ε(2k−1)})^b. Gap-free: a dense spectrum up to 0.8τ takes about six
     blocks of 16 columns; the closer it hugs τ, the more.

   The failure budget is split over the certificate rounds (δ_r = δ/2^r for the r-th; round 1 uses
   the search chain's own Gaussian start while nothing reaches τ − ρ, as then V₀ is empty) and,
   within one, half to the Gaussian-norm bound and half over the checks (δ_r/(2j(j+1)) for the j-th), so
   the stopping rule cannot spend more than ``failure_probability`` in all. The probability is over
   the Gaussian blocks: with the fixed seed used when no ``generator`` is given, it is the chance
   that a given Δ happens to be one of the rare inputs that seed fails on. If θ̂ reaches τ − ρ the
   deflated space holds another value at or above the band: its directions join the search chain,
   which goes on, and a new round starts later. Where the bound would need more blocks than a
   direct solve costs (a cost model; a dense Δ hugging τ) and A is a dense tensor, the direct
   float64 solve decides instead.

Rounding margin: Ritz values, residuals and bounds come from fp32 products (fp64 for fp64 inputs),
accurate to about ρ = ``tol``·θ₁ (64 ulp of σ_max, the residual level the solver asks for and
measures explicitly). Bounds must lie below τ by ρ; a value within ρ of τ may be decided either way.
The Frobenius tail carries an extra margin for the rounding of ‖T‖_F (first-order, γ-style:
(4·dim + 2√max(m, n))·ulp·‖A‖_F²). All arithmetic is exact only up to that: the certificate is a
proof about the computed quantities in exact arithmetic, plus these margins.

Scale: when ‖A‖_F lies outside [2⁻⁹⁰, 2⁹⁰] (or a product under/overflows) the operator is wrapped
in a power-of-two :class:`~prune_fast.spectral.operators.ScaledOperator` and the threshold scaled alike, so
a Δ of 1e-30 or 1e30 is solved like one of order 1; results are scaled back exactly.

Random numbers come from ``generator`` or, when none is given, a private generator with a fixed seed
on the operator's device: the caller's global random stream is never read or advanced, and equal
inputs give bit-identical outputs.

Block Krylov converges where single-vector power iteration stalls on clustered top singular values
(Musco & Musco, NeurIPS 2015).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ..kernels.orthonormalize import gaussian, orthonormalize, private_generator
from .operators import DenseOperator, MatrixOperator, ScaledOperator, TransposedOperator, magnitude

__all__ = ["Triplets", "topk_svd", "default_tol", "direct_triplets", "prefer_direct", "frobenius_sq_bound",
           "DEFAULT_FAILURE_PROBABILITY"]

# Per call, the probability that a randomized certificate is wrong (see the module docstring).
DEFAULT_FAILURE_PROBABILITY = 1e-10


@dataclass
class Triplets:
    """Singular triplets ``A ≈ u diag(s) vᵀ`` restricted to the wanted values.

    ``u``: (m, k) and ``v``: (n, k) in the operator's dtype, ``s``: (k,) float64, descending.
    ``residual``: max over the returned triplets of ‖Aᵀu_i − s_i v_i‖ / s_1 (explicitly measured).
    ``next_value``: the largest Ritz value not returned (a lower bound on σ_{k+1}; 0 if none).
    ``basis_size``: dimension of the Krylov basis used; ``exact``: the basis covered the short side.
    ``certificate`` (threshold mode): how "no other σ ≥ threshold" was proved: ``"exact"`` (complete
    basis or direct solve), ``"frobenius"`` (deterministic tail bound) or ``"randomized"``
    (probabilistic, failure probability ≤ ``failure_probability``); ``"none"`` in top-k mode.
    ``bound``: the proved upper bound on every singular value not returned beyond the deflated band
    (0 when exact).
    """

    u: torch.Tensor
    s: torch.Tensor
    v: torch.Tensor
    residual: float
    next_value: float
    basis_size: int
    products: int
    exact: bool
    certificate: str = "exact"
    bound: float = 0.0
    failure_probability: float = 0.0


def default_tol(dtype: torch.dtype) -> float:
    """Relative residual the solver aims for: 64 ulp of the product dtype."""
    return 64 * torch.finfo(dtype).eps


# Lines are reduced in chunks of this many entries, so each fp32 partial norm is off by at most
# (64 + 2) ulp relative, instead of (line length)·ulp (3.8e-4 for a 6400-long line).
_NORM_CHUNK = 64


def frobenius_sq_bound(a: torch.Tensor) -> float:
    """An upper bound on ‖A‖_F² (for the Frobenius certificate), without a float64 copy of A.

    Norms of contiguous chunks of at most 64 entries run in A's own (fp32) arithmetic, one cheap pass;
    their squares are summed in float64. Each chunk's sum of squares is off by at most 66·ε relative
    (all terms are positive) and squares below the smallest normal number add at most
    ``numel · tiny``, so ``total · (1 + 66ε) + numel · tiny`` is an upper bound. Where that last term
    could matter (tiny entries), where fp32 overflows, for strided or small matrices and for float64
    input, the norm is computed in float64 instead (zero is then exact: "nothing to restrain").
    """
    if a.numel() == 0:
        return 0.0
    a = a.detach()
    rowwise = a.stride(1) == 1 or a.shape[1] == 1
    if a.dtype != torch.float64 and a.numel() > (1 << 16) and (rowwise or a.stride(0) == 1):
        lines = a if rowwise else a.T
        rows, length = lines.shape
        head = length - length % _NORM_CHUNK
        parts = []
        if head:
            parts.append(torch.linalg.vector_norm(lines[:, :head].view(rows, head // _NORM_CHUNK, _NORM_CHUNK), dim=2))
        if head < length:
            parts.append(torch.linalg.vector_norm(lines[:, head:], dim=1))
        total = sum(float((p.to(torch.float64) ** 2).sum()) for p in parts)
        info = torch.finfo(a.dtype)
        floor = a.numel() * info.tiny
        if math.isfinite(total) and total >= 2.0 ** 30 * floor:
            return total * (1.0 + (_NORM_CHUNK + 2) * info.eps) + floor
    total = float(torch.linalg.vector_norm(a, dtype=torch.float64) ** 2)
    return total * (1.0 + (a.numel() + 2) * torch.finfo(torch.float64).eps)


def _as_operator(a: torch.Tensor | MatrixOperator) -> MatrixOperator:
    return DenseOperator(a) if isinstance(a, torch.Tensor) else a


# Outside [2^-90, 2^90] an operator is rescaled by a power of two (see the module docstring): its
# products with orthonormal blocks then stay normal and finite in fp32 (the orthonormalisation
# rescales its own blocks beyond 2^±40).
_SAFE_EXPONENT = 90
# Kuczyński–Woźniakowski's constant: P[fail] ≤ 1.648 √n e^{−√ε(2k−1)} for one start vector.
_KW_CONSTANT = 1.648
# Columns of the fresh Gaussian block a freeze adds (the Gaussian-norm and KW bounds improve with it).
_FRESH_COLUMNS = 16


def _unsafe_exponent(norm: float) -> int:
    """Binary exponent of ``norm`` when it lies outside the safe range, else 0."""
    if not (norm > 0.0) or not math.isfinite(norm):
        return 0
    e = math.frexp(norm)[1]
    return e if abs(e) > _SAFE_EXPONENT else 0


def _gaussian_norm_bound(norms: torch.Tensor, delta: float) -> float:
    """HMT Lemma 4.1: ‖B‖ ≤ max_i ‖Bω_i‖ / t with P[fail] ≤ (t√(2/π))^b; t chosen so that this is δ."""
    b = norms.numel()
    if b == 0:
        return math.inf
    t = delta ** (1.0 / b) * math.sqrt(math.pi / 2)
    return float(norms.max()) / t


def _kw_epsilon(n: int, k: int, b: int, delta: float) -> float:
    """Smallest ε with (1.648 √n e^{−√ε(2k−1)})^b ≤ δ (≥ 1 means no bound yet)."""
    if k < 2 or n < 8 or b < 1:
        return math.inf
    lam = math.log(_KW_CONSTANT * math.sqrt(n)) + math.log(1.0 / delta) / b
    return (lam / (2 * k - 1)) ** 2


def _kw_blocks_needed(n: int, b: int, delta: float, ratio: float) -> int:
    """Krylov degree k at which the KW bound certifies θ̂ ≤ ratio·τ (ratio < 1)."""
    eps_needed = 1.0 - ratio * ratio
    if eps_needed <= 0.0:
        return 1 << 30
    lam = math.log(_KW_CONSTANT * math.sqrt(n)) + math.log(1.0 / delta) / b
    return max(2, math.ceil((lam / math.sqrt(eps_needed) + 1) / 2))


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
    failure_probability: float = DEFAULT_FAILURE_PROBABILITY,
) -> Triplets:
    """Top-``k`` singular triplets of ``a``, or all with σ ≥ ``threshold`` (exactly one of the two).

    Threshold mode returns only with a certificate that no other singular value reaches the
    threshold (see the module docstring; ``failure_probability`` bounds the randomized one).
    ``start_u``/``start_v``: previous left/right singular vectors to warm-start from (optional).
    ``frobenius_sq``: ‖A‖_F² (or an upper bound) if known; computed here for a tensor ``a``.
    ``value_tol``: top-k mode, when only the values matter (σ*): a wanted value also counts as
    converged once its gap bound r²/δ ≤ ``value_tol``·θ₁ (see :func:`_value_error_bound`), which needs
    far fewer passes than a residual of ``tol`` when the top values are clustered.
    ``generator``: source of the Gaussian blocks; None uses a private one with a fixed seed.
    ``backend``: resolved kernel backend (``"torch"``/``"triton"``) for the orthonormalisations;
    products go through the operator (which carries its own backend).

    Example::

        t = topk_svd(w0, k=1)                       # σ* = t.s[0]
        t = topk_svd(delta, threshold=float(t.s[0]))  # every σ(Δ) ≥ σ*, certified
    """
    if (k is None) == (threshold is None):
        raise ValueError("topk_svd needs exactly one of k or threshold")
    if value_tol is not None and k is None:
        raise ValueError("value_tol applies to top-k mode only")
    if threshold is not None and not (threshold > 0.0 and math.isfinite(threshold)):
        raise ValueError(f"threshold must be positive and finite, got {threshold!r}")
    if not 0.0 < failure_probability < 1.0:
        raise ValueError(f"failure_probability must lie in (0, 1), got {failure_probability!r}")
    dense = a if isinstance(a, torch.Tensor) else None
    op = _as_operator(a)
    gen = generator if generator is not None else private_generator(op.device)
    if threshold is not None and frobenius_sq is None and dense is not None:
        frobenius_sq = frobenius_sq_bound(dense)
    exponent = _unsafe_exponent(math.sqrt(frobenius_sq)) if frobenius_sq else 0
    solver = _Solver(op, dense, k, threshold, start_u, start_v, block, oversample, tol, value_tol, frobenius_sq,
                     gen, backend, failure_probability)
    return solver.run(exponent)


class _Chain:
    """Block Golub–Kahan bidiagonalisation of A restricted to the complement of ``deflate`` (orthonormal
    n×k₀ columns, or None): bases U, V (V ⟂ deflate), Z = Aᵀ U, and T = Uᵀ A V with A V = U T."""

    def __init__(self, solver: "_Solver", x0: torch.Tensor, deflate: torch.Tensor | None = None):
        self.solver, self.op, self.deflate = solver, solver.op, deflate
        v_blk, self.r_start, _ = solver._orth(x0, deflate)  # (I − DDᵀ) x0 = V₁ r_start
        y = self.op.matmul(v_blk)
        self.first_product = y
        u_blk, r, _ = solver._orth(y)
        cap = 8 * v_blk.shape[1]
        self.u_basis, self.v_basis = _Basis(u_blk, cap), _Basis(v_blk, cap)
        self.z_basis: _Basis | None = None
        self.u_last = u_blk
        self.t_mat = r.to(torch.float64)
        self.blocks, self.products = 1, 1

    def close(self) -> torch.Tensor:
        """z = Aᵀ U_last, kept (the explicit residual check needs no extra pass later)."""
        z = self.op.rmatmul(self.u_last)
        self.products += 1
        if self.z_basis is None:
            self.z_basis = _Basis(z, 8 * self.u_basis.view.shape[1])
        else:
            self.z_basis.append(z)
        return z

    def against(self) -> torch.Tensor:
        vb = self.v_basis.view
        return vb if self.deflate is None else torch.cat([self.deflate, vb], 1)

    def extend(self, v_next: torch.Tensor) -> None:
        """Append the next right block, its product and the projected matrix's new columns."""
        ub, dim = self.u_basis.view, self.v_basis.view.shape[1]
        self.v_basis.append(v_next)
        u_next, r, coeff = self.solver._orth(self.op.matmul(v_next), against=ub)
        self.products += 1
        top = torch.cat([self.t_mat, coeff.to(torch.float64)], 1)
        bottom = torch.cat([torch.zeros(r.shape[0], dim, dtype=torch.float64), r.to(torch.float64)], 1)
        self.t_mat = torch.cat([top, bottom], 0)
        self.u_basis.append(u_next)
        self.u_last = u_next
        self.blocks += 1


class _Randomized:
    """The randomized bounds on ‖B‖, B = A(I − V₀V₀ᵀ), from a chain whose Gaussian start columns
    (coordinates ``coords`` in its V basis) were drawn independently of V₀; failure budget ``delta``."""

    def __init__(self, coords: torch.Tensor, n: int, delta: float):
        self.coords, self.n, self.delta = coords.to(torch.float64), n, delta
        self.n_gauss = coords.shape[1]
        self.checks = 0
        self.norm_bound = math.inf
        self.blocks_needed: int | None = None

    def bound(self, t_mat: torch.Tensor, theta_hat: float, degree: int, target: float) -> float:
        """min(HMT, KW) upper bound on ‖B‖ (T = Uᵀ B V of the chain, θ̂ = ‖T‖₂, ``degree`` products
        by BᵀB in the space); sets ``blocks_needed`` for the KW bound to reach ``target``."""
        if not math.isfinite(self.norm_bound):
            c = torch.zeros(t_mat.shape[1], self.n_gauss, dtype=torch.float64)
            c[: self.coords.shape[0]] = self.coords
            self.norm_bound = _gaussian_norm_bound(torch.linalg.vector_norm(t_mat @ c, dim=0), self.delta / 2)
        self.checks += 1
        delta_check = self.delta / 2 / (self.checks * (self.checks + 1))
        best = self.norm_bound
        eps_kw = _kw_epsilon(self.n, degree, self.n_gauss, delta_check)
        if eps_kw < 1.0:
            best = min(best, theta_hat / math.sqrt(1.0 - eps_kw))
        ratio = theta_hat / target if target > 0 else math.inf
        self.blocks_needed = _kw_blocks_needed(self.n, self.n_gauss, delta_check, ratio) - degree
        return best


class _Solver:
    """One call of :func:`topk_svd`: the search chain (phase A), its checks, and the certificate
    (Frobenius on the search chain, or a fresh deflated chain for the randomized bounds, phase B)."""

    def __init__(self, op, dense, k, threshold, start_u, start_v, block, oversample, tol, value_tol, frobenius_sq,
                 generator, backend, failure_probability):
        self.op0, self.dense = op, dense
        self.k, self.threshold0, self.frobenius_sq0 = k, threshold, frobenius_sq
        self.start_u, self.start_v = start_u, start_v
        self.block, self.oversample, self.tol0, self.value_tol = block, oversample, tol, value_tol
        self.generator, self.backend, self.delta = generator, backend, failure_probability

    # -- set-up ----------------------------------------------------------------------------------
    def run(self, exponent: int) -> Triplets:
        out = self._solve(exponent)
        if out is None:  # a product under- or overflowed: rescale by the operator's magnitude, redo
            norm = magnitude(self.op0)
            exponent = math.frexp(norm)[1] if norm > 0.0 and math.isfinite(norm) else 0
            out = self._solve(exponent, rescaled=True)
        return out

    def _randn(self, rows: int, cols: int) -> torch.Tensor:
        return gaussian(rows, cols, self.dt, self.dev, self.generator)

    def _orth(self, x: torch.Tensor, against: torch.Tensor | None = None):
        return orthonormalize(x, against, backend=self.backend, generator=self.generator)

    def _solve(self, exponent: int, rescaled: bool = False) -> Triplets | None:
        op = self.op0 if exponent == 0 else ScaledOperator(self.op0, -exponent)
        self.exponent = exponent
        start_u, start_v = self.start_u, self.start_v
        self.transposed = op.shape[0] < op.shape[1]
        if self.transposed:
            op = TransposedOperator(op)
            start_u, start_v = start_v, start_u
        self.op = op
        m, n = op.shape
        self.m, self.n = m, n
        self.dt, self.dev = op.dtype, op.device
        self.tol = default_tol(self.dt) if self.tol0 is None else self.tol0
        self.threshold = None if self.threshold0 is None else math.ldexp(self.threshold0, -exponent)
        self.fro = None if self.frobenius_sq0 is None else math.ldexp(self.frobenius_sq0, -2 * exponent)
        self.round_no = 0
        if n == 0 or m == 0 or self.k == 0:
            return self._finish(self._empty())

        want_k = 0 if self.k is None else min(self.k, n)
        starts = [] if start_v is None or start_v.shape[1] == 0 else [start_v.to(self.dt)]
        n_start = min(sum(s.shape[1] for s in starts), n)
        b = min(n, max(self.block, want_k + self.oversample, n_start + self.oversample))
        n_gauss = b - min(n_start, b)
        chain = _Chain(self, torch.cat(starts + [self._randn(n, n_gauss)], 1)[:, :b])
        if not rescaled and not _product_in_range(chain.first_product):
            return None
        # Round 1 of the randomized certificate deflates nothing (B = A), so the search chain's own
        # Gaussian start columns serve it for as long as no value reaches τ − ρ.
        self.round1 = None
        if self.threshold is not None and n_gauss > 0:
            self.round_no = 1
            self.round1 = _Randomized(chain.r_start[:, b - n_gauss:], n, self.delta / 2)
        return self._search(chain, want_k)

    def _empty(self) -> Triplets:
        z = torch.zeros
        return Triplets(z(self.m, 0, dtype=self.dt, device=self.dev), z(0, dtype=torch.float64),
                        z(self.n, 0, dtype=self.dt, device=self.dev), 0.0, 0.0, 0, 0, True,
                        "exact" if self.threshold is not None else "none")

    # -- phase A: the search chain ----------------------------------------------------------------
    def _search(self, chain: _Chain, want_k: int) -> Triplets:
        n, threshold = self.n, self.threshold
        verified_failures = 0
        n_want = want_k
        since_check = 0
        pending: torch.Tensor | None = None  # directions a failed certificate round found, to add
        while True:
            ub, vb = chain.u_basis.view, chain.v_basis.view
            z = chain.close()
            dim = vb.shape[1]
            remaining = n - dim
            b_last = chain.u_last.shape[1]
            # The dense SVD of the projected dim×dim matrix grows like dim³ and outweighs a block's
            # two products beyond dim ≈ 128 (13 ms at 368, against ~4 ms of products at 1600×6400).
            # Past that size, test convergence only every ~dim/128 blocks (every block while the
            # blocks are wide against the basis, as when hundreds of values lie above τ).
            since_check += 1
            due = (since_check * _CHECK_EVERY_BLOCK_UP_TO >= dim or remaining <= b_last or 4 * b_last >= dim
                   or pending is not None)
            if due:
                since_check = 0
                p, theta, qt = torch.linalg.svd(chain.t_mat)
                scale = float(theta[0])
                rho = self.tol * scale
                if threshold is None:
                    if scale == 0.0:
                        return self._finish(self._empty())
                    n_want = min(want_k, dim)
                else:
                    # Values in the rounding band [τ − ρ, τ) are deflated (certified against) too.
                    n_want = int((theta >= threshold - rho).sum()) if scale > 0.0 else 0
            saturated = threshold is not None and n_want > dim // 2
            if saturated:  # most of the basis lies above τ: more values (or copies) are likely beyond
                b_next = min(remaining, max(b_last, 2 * n_want + self.oversample))
            else:
                b_next = min(remaining, max(b_last, min(2 * b_last, max(self.block, n_want + self.oversample))))
            widen = None  # new columns beyond z, orthonormalised only if the chain goes on
            if remaining > 0:
                extra = b_next - b_last
                parts = ([self._randn(n, extra)] if extra > 0 else []) + ([pending] if pending is not None else [])
                pending = None
                if remaining < b_last + sum(t.shape[1] for t in parts):
                    x = self._randn(n, remaining)  # complete the basis; coupling read off below
                    v_next, _, _ = self._orth(x, against=vb)
                    s_coupling = v_next.T @ z
                else:
                    # z alone first: its coupling gives the residuals, and a wide block of Gaussian
                    # columns (hundreds when many values lie above τ) is not orthonormalised on the
                    # step that returns.
                    v_next, s_coupling, _ = self._orth(z, against=vb)
                    widen = torch.cat(parts, 1) if parts else None
                if due:
                    res = torch.linalg.vector_norm(s_coupling.to(torch.float64) @ p[-b_last:, :dim], dim=0)
            else:
                v_next = None
                res = torch.zeros(dim, dtype=torch.float64)
            if not due:
                chain.extend(v_next if widen is None else self._widen(vb, v_next, widen))
                continue
            wanted_ok = bool((res[:n_want] <= self.tol * scale).all())
            if self.value_tol is not None and not wanted_ok:
                wanted_ok = bool((_value_error_bound(theta, res, n_want) <= self.value_tol * scale).all())
            if threshold is None:
                certified, bound, how = True, 0.0, "none"
            else:
                certified, bound, how = self._certify_search(chain, theta, n_want, dim, remaining)
            nxt = float(theta[n_want]) if n_want < dim else 0.0
            # Ready to certify with a fresh chain: the wanted triplets converged, the next Ritz value's
            # residual interval lies below the band, and the basis is not saturated with values above.
            ready = (threshold is not None and wanted_ok and not saturated and v_next is not None
                     and (n_want >= dim or nxt + float(res[n_want]) < threshold - rho))
            if (wanted_ok and certified) or v_next is None or ready:
                n_ret = n_want if threshold is None else int((theta[:n_want] >= threshold).sum())
                u_k = ub @ p[:, :n_ret].to(self.dt)
                v_k = vb @ qt[:n_ret].T.to(self.dt)
                s_k = theta[:n_ret].clone()
                residuals = _explicit_residuals(chain.z_basis.view @ p[:, :n_ret].to(self.dt), s_k, v_k)
                explicit = float(residuals.max()) / scale if n_ret else 0.0
                # Accept when the explicit residual agrees with the cheap estimate (rounding aside), or
                # the basis is complete and nothing more can be gained.
                accepted = explicit <= max(4 * self.tol, 16 * default_tol(self.dt))
                if self.value_tol is not None and not accepted:
                    bound_v = _value_error_bound(theta, torch.cat([residuals, res[n_ret:]]), n_ret)
                    accepted = bool((bound_v <= 4 * self.value_tol * scale).all())
                if not (accepted or v_next is None or verified_failures >= 3):
                    verified_failures += 1
                elif (wanted_ok and certified) or v_next is None:
                    next_value = nxt if threshold is None or n_ret == n_want else float(theta[n_ret])
                    cert = "exact" if threshold is not None and v_next is None else how
                    out = Triplets(u_k, s_k, v_k, explicit, next_value, dim, chain.products, remaining == 0, cert,
                                   0.0 if cert in ("exact", "none") else bound,
                                   self.delta if cert == "randomized" else 0.0)
                    return self._finish(out)
                else:
                    # Phase B: prove the rest lies below τ from a fresh Gaussian chain on A(I − V₀V₀ᵀ).
                    v0 = vb @ qt[:n_want].T.to(self.dt) if n_want else vb[:, :0]
                    status, bound, found = self._certify_fresh(v0, theta[:n_want], scale)
                    if status == "direct":
                        return self._direct()
                    if status in ("randomized", "frobenius", "exact"):
                        next_value = nxt if n_ret == n_want else float(theta[n_ret])
                        out = Triplets(u_k, s_k, v_k, explicit, next_value, dim, chain.products + self.products_b,
                                       False, status, 0.0 if status == "exact" else bound,
                                       self.delta if status == "randomized" else 0.0)
                        return self._finish(out)
                    pending = found  # more values at or above the band: search on with them
            width = v_next.shape[1] + (0 if widen is None else widen.shape[1])
            if (self.dense is not None and threshold is not None and not certified and pending is None
                    and dim + width > n // 2):
                return self._direct()  # the basis would cover half the short side: one dense solve is cheaper
            more = [t for t in (widen, pending) if t is not None]
            if more:
                v_next = self._widen(vb, v_next, torch.cat(more, 1) if len(more) > 1 else more[0])
                pending = None
            chain.extend(v_next)

    def _widen(self, vb: torch.Tensor, v_next: torch.Tensor, new: torch.Tensor) -> torch.Tensor:
        """``v_next`` followed by the orthonormalised part of ``new`` outside span(vb, v_next)."""
        v_more, _, _ = self._orth(new, against=torch.cat([vb, v_next], 1))
        return torch.cat([v_next, v_more], 1)

    def _certify_search(self, chain: _Chain, theta: torch.Tensor, n_want: int, dim: int,
                        remaining: int) -> tuple[bool, float, str]:
        """Certificates available on the search chain itself: complete basis, Frobenius tail, and
        round 1 of the randomized bounds (nothing deflated, the chain's own Gaussian start)."""
        if remaining == 0:
            return True, 0.0, "exact"
        tau = self.threshold
        rho = self.tol * float(theta[0])
        nxt = float(theta[n_want]) if n_want < dim else 0.0
        if self.fro is not None:
            bound_f = self._frobenius_bound(nxt, float((chain.t_mat ** 2).sum()), dim) + rho
            if bound_f < tau:
                return True, math.ldexp(bound_f, self.exponent), "frobenius"
        rnd = self.round1
        if rnd is not None:
            theta_hat = float(theta[0])
            if theta_hat >= tau - rho:
                self.round1 = None  # something reaches the band: round 1 cannot certify
            else:
                bound_r = rnd.bound(chain.t_mat, theta_hat, chain.blocks - 1, tau - rho) + rho
                if bound_r < tau:
                    return True, math.ldexp(bound_r, self.exponent), "randomized"
        return False, math.inf, "pending"

    def _frobenius_bound(self, nxt: float, t_sq: float, dim: int, removed_sq: float = 0.0) -> float:
        """√(θ_next² + ‖A‖_F² − removed − ‖T‖_F² + margin): Weyl with the Frobenius tail (module doc)."""
        eps = torch.finfo(self.dt).eps
        margin = (4 * dim + 2 * math.sqrt(max(self.m, self.n))) * eps * self.fro
        return math.sqrt(nxt * nxt + max(self.fro - removed_sq - t_sq, 0.0) + margin)

    # -- phase B: a fresh chain on the deflated operator ------------------------------------------
    def _certify_fresh(self, v0: torch.Tensor, theta0: torch.Tensor, scale: float
                       ) -> tuple[str, float, torch.Tensor | None]:
        """Bound ‖A(I − V₀V₀ᵀ)‖ from a chain started at a fresh Gaussian block (independent of V₀).

        Returns ``(status, bound, found)``: status ``"randomized"``/``"frobenius"``/``"exact"`` with the
        bound (unscaled), ``"found"`` with right vectors of values ≥ τ − ρ the deflated space still
        holds, or ``"direct"`` when a dense solve is cheaper than the blocks the bound still needs.
        """
        tau, n = self.threshold, self.n
        rho = self.tol * scale
        self.round_no += 1
        rnd = _Randomized(torch.zeros(0, 0), n, self.delta * 0.5 ** self.round_no)
        width = min(_FRESH_COLUMNS, n - v0.shape[1])
        self.products_b = 0
        if width <= 0:
            return "exact", 0.0, None
        chain = _Chain(self, self._randn(n, width), deflate=v0)
        rnd.coords, rnd.n_gauss = chain.r_start.to(torch.float64), width
        removed_sq = float((theta0 ** 2).sum())  # ‖A V₀‖_F² = Σ θ_i² for Ritz vectors V₀
        while True:
            z = chain.close()
            self.products_b = chain.products
            dim = chain.v_basis.view.shape[1]
            remaining = n - v0.shape[1] - dim
            theta_hat = float(torch.linalg.matrix_norm(chain.t_mat, 2))
            if theta_hat >= tau - rho:
                p, theta, qt = torch.linalg.svd(chain.t_mat)
                keep = max(1, int((theta >= tau - rho).sum()))
                return "found", math.inf, chain.v_basis.view @ qt[:keep].T.to(self.dt)
            if remaining <= 0:
                return "exact", 0.0, None
            if self.fro is not None:
                bound_f = self._frobenius_bound(theta_hat, float((chain.t_mat ** 2).sum()), dim, removed_sq) + rho
                if bound_f < tau:
                    return "frobenius", math.ldexp(bound_f, self.exponent), None
            bound_r = rnd.bound(chain.t_mat, theta_hat, chain.blocks - 1, tau - rho) + rho
            if bound_r < tau:
                return "randomized", math.ldexp(bound_r, self.exponent), None
            if self.dense is not None and self._direct_is_cheaper(rnd.blocks_needed, dim, width):
                return "direct", math.inf, None
            x = z if remaining >= z.shape[1] else z[:, :remaining]
            v_next, _, _ = self._orth(x, against=chain.against())
            chain.extend(v_next)

    def _direct_is_cheaper(self, blocks_needed: int, dim: int, b: int) -> bool:
        """Whether one dense float64 solve costs less than the blocks the randomized bound still needs
        (a cost model in milliseconds fitted on the 2-core CPU machine; only the ratio matters)."""
        m, n = self.m, self.n
        direct = 5e-9 * m * n * n + 2e-7 * n ** 3
        future = dim + blocks_needed * b // 2
        per_step = 2 * 9e-9 * m * n * b + 7e-8 * (m + n) * future * b + 2e-7 * future ** 3
        return blocks_needed * per_step > direct

    def _direct(self) -> Triplets:
        """The whole answer from one float64 solve of the dense matrix (exact to rounding)."""
        return direct_triplets(self.dense, self.threshold0)

    def _finish(self, out: Triplets) -> Triplets:
        """Undo the power-of-two scaling (exact) and the transposition."""
        if self.exponent:
            out.s = out.s * math.ldexp(1.0, self.exponent)
            out.next_value = math.ldexp(out.next_value, self.exponent)
        return _orient(out, self.transposed)


def _product_in_range(y: torch.Tensor) -> bool:
    """Whether a first product is finite and of a size whose squares fp32 holds (else rescale)."""
    if y.numel() == 0:
        return True
    lo, hi = torch.aminmax(y)
    amax = max(-float(lo), float(hi))
    if not math.isfinite(amax):
        return False
    return amax == 0.0 or abs(math.frexp(amax)[1]) <= _SAFE_EXPONENT


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
# Short sides from which the float64 Gram matrix is formed block by block, only the blocks on and
# above the diagonal (10 of 16 for 4 blocks): torch has no syrk, and a·aᵀ as one product computes
# both halves.
_GRAM_BLOCKED_FROM = 512
_GRAM_BLOCKS = 4
# Up to this σ₁/threshold the vectors u = A v / σ of a fp32 matrix are formed by a fp32 product
# (the values and v still come from the float64 eigen-decomposition): the product's rounding,
# relative ~ε₃₂·σ₁/σ per term, stays at the level of the Krylov path's own fp32 vectors (rank-k
# part off by ~3e-7 relative at 700×900, σ₁/τ = 3.5, against 4e-8 in float64; both are returned
# in fp32), and the product runs at twice the float64 rate (91 against 201 ms at 1600×6400, 700
# vectors). Beyond it, small σ against σ₁ would amplify that rounding: float64.
_FP32_BACK_PRODUCT_MAX_RATIO = 4.0


def _gram_float64(short: torch.Tensor) -> torch.Tensor:
    """``shortᵀ short`` in float64 (``short``: tall, float64), symmetric by construction."""
    n = short.shape[1]
    if n < _GRAM_BLOCKED_FROM:
        return short.T @ short
    edges = [n * i // _GRAM_BLOCKS for i in range(_GRAM_BLOCKS + 1)]
    gram = torch.empty(n, n, dtype=short.dtype, device=short.device)
    for i in range(_GRAM_BLOCKS):
        rows = short[:, edges[i]:edges[i + 1]]
        # Block row i, from the diagonal on: one product [A_iᵀ A_i … A_iᵀ A_last].
        blk = rows.T @ short[:, edges[i]:]
        gram[edges[i]:edges[i + 1], edges[i]:] = blk
        gram[edges[i + 1]:, edges[i]:edges[i + 1]] = blk[:, edges[i + 1] - edges[i]:].T
    return gram


def direct_triplets(a: torch.Tensor, threshold: float) -> Triplets:
    """Every triplet with σ ≥ threshold of a small dense matrix, in float64 (exact to rounding).

    From the eigen-decomposition of the short side's float64 Gram matrix (3× faster than an SVD
    for a 512×128 test-model weight, the per-edit cost of online PRUNE there), falling back to
    one full SVD when a wanted value is too small relative to σ₁ for the Gram route's accuracy.
    The values, the count above the threshold and the short side's vectors are float64; the long
    side's vectors u = A v / σ of a fp32 matrix come from a fp32 product while σ₁ ≤ 4·threshold
    (see ``_FP32_BACK_PRODUCT_MAX_RATIO``).
    """
    a64 = a.to(torch.float64)
    tall = a64.shape[0] >= a64.shape[1]
    short = a64 if tall else a64.T
    if short.shape[1]:
        lam, vecs = torch.linalg.eigh(_gram_float64(short))
        s_all = lam.flip(0).clamp_min(0).sqrt()
        keep = int((s_all >= threshold).sum())
        if keep == 0 or threshold >= _GRAM_MIN_RATIO * float(s_all[0]):
            v = vecs.flip(1)[:, :keep]
            s = s_all[:keep]
            if a.dtype == torch.float32 and keep and float(s_all[0]) <= _FP32_BACK_PRODUCT_MAX_RATIO * threshold:
                short32 = a if tall else a.T
                u = short32 @ (v / s).to(torch.float32)
            else:
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
    return Triplets(t.v, t.s, t.u, t.residual, t.next_value, t.basis_size, t.products, t.exact, t.certificate,
                    t.bound, t.failure_probability)
