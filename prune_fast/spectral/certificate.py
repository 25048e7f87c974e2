"""The certificate of the threshold SVD: proofs that no unfound singular value reaches τ.

A Ritz value whose residual interval lies below τ says nothing about singular values the Krylov
space has not reached, and a block space holds at most as many copies of a repeated value as it has
random columns. So the solver returns only when one of these
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
"""
from __future__ import annotations

import math

import torch

__all__ = ["DEFAULT_FAILURE_PROBABILITY", "FRESH_COLUMNS", "RandomizedBound", "frobenius_sq_bound",
           "frobenius_tail_bound", "gaussian_norm_bound", "kw_blocks_needed", "kw_epsilon"]

# Per call, the probability that a randomized certificate is wrong (see the module docstring).
DEFAULT_FAILURE_PROBABILITY = 1e-10
# Kuczyński–Woźniakowski's constant: P[fail] ≤ 1.648 √n e^{−√ε(2k−1)} for one start vector.
_KW_CONSTANT = 1.648
# Columns of the fresh Gaussian block a freeze adds (the Gaussian-norm and KW bounds improve with it).
FRESH_COLUMNS = 16


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


def frobenius_tail_bound(nxt: float, fro: float, t_sq: float, dim: int, shape: tuple[int, int], eps: float,
                         removed_sq: float = 0.0) -> float:
    """√(θ_next² + ‖A‖_F² − removed − ‖T‖_F² + margin): Weyl with the Frobenius tail (module doc).

    ``fro``: an upper bound on ‖A‖_F²; ``t_sq``: ‖T‖_F² of the dim-wide projected matrix;
    ``removed_sq``: ‖A V₀‖_F² of a deflated block; ``eps``: the product dtype's unit roundoff.
    """
    margin = (4 * dim + 2 * math.sqrt(max(shape))) * eps * fro
    return math.sqrt(nxt * nxt + max(fro - removed_sq - t_sq, 0.0) + margin)


def gaussian_norm_bound(norms: torch.Tensor, delta: float) -> float:
    """HMT Lemma 4.1: ‖B‖ ≤ max_i ‖Bω_i‖ / t with P[fail] ≤ (t√(2/π))^b; t chosen so that this is δ."""
    b = norms.numel()
    if b == 0:
        return math.inf
    t = delta ** (1.0 / b) * math.sqrt(math.pi / 2)
    return float(norms.max()) / t


def kw_epsilon(n: int, k: int, b: int, delta: float) -> float:
    """Smallest ε with (1.648 √n e^{−√ε(2k−1)})^b ≤ δ (≥ 1 means no bound yet)."""
    if k < 2 or n < 8 or b < 1:
        return math.inf
    lam = math.log(_KW_CONSTANT * math.sqrt(n)) + math.log(1.0 / delta) / b
    return (lam / (2 * k - 1)) ** 2


def kw_blocks_needed(n: int, b: int, delta: float, ratio: float) -> int:
    """Krylov degree k at which the KW bound certifies θ̂ ≤ ratio·τ (ratio < 1)."""
    eps_needed = 1.0 - ratio * ratio
    if eps_needed <= 0.0:
        return 1 << 30
    lam = math.log(_KW_CONSTANT * math.sqrt(n)) + math.log(1.0 / delta) / b
    return max(2, math.ceil((lam / math.sqrt(eps_needed) + 1) / 2))


class RandomizedBound:
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
            self.norm_bound = gaussian_norm_bound(torch.linalg.vector_norm(t_mat @ c, dim=0), self.delta / 2)
        self.checks += 1
        delta_check = self.delta / 2 / (self.checks * (self.checks + 1))
        best = self.norm_bound
        eps_kw = kw_epsilon(self.n, degree, self.n_gauss, delta_check)
        if eps_kw < 1.0:
            best = min(best, theta_hat / math.sqrt(1.0 - eps_kw))
        ratio = theta_hat / target if target > 0 else math.inf
        self.blocks_needed = kw_blocks_needed(self.n, self.n_gauss, delta_check, ratio) - degree
        return best
