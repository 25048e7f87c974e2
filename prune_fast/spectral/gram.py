"""Gram matrices of the short side, and σ_max through one: the route for a clustered top spectrum.

``columns_gram(B)`` forms Bᵀ B block by block (only the blocks on and above the diagonal). The exact
solve (``direct.py``) uses it in float64; :func:`sigma_max_by_gram` uses it in the matrix's own
dtype to find σ_max where block Krylov on the matrix is slow.

Why a second route to σ_max: when the top singular values of W0 cluster (a Gaussian-like weight:
σ₁₆/σ₁ ≈ 0.95 at 1600×6400), block Krylov on W0 needs about 26 block steps, each two passes over
the matrix. One Gram matrix G = A Aᵀ of the short side costs about as much as five of them, and a
block Lanczos step on G is an s×s product that stays in cache. The route:

1. G in the matrix's dtype (fp32: the products run at the BLAS's full rate; its rounding E, about
   √k·ε·‖A‖² for k-term sums, is undone by step 3), then converted to float64;
2. symmetric block Lanczos on G (float64, explicit Rayleigh–Ritz residuals), stopped by the same
   gap bound r²/δ ≤ ``value_tol``·θ₁ the Krylov route uses for σ* (``lanczos.value_error_bound``);
3. one Rayleigh–Ritz step on A itself: the singular values of Aᵀ Q for the top Ritz vectors Q of G.
   The result is a Ritz value of A (a lower bound on σ_max(A), up to the product's rounding) from
   the same space the Gram Lanczos found, so the fp32 Gram's rounding only perturbs the space,
   which moves the value to second order.

The caller (``restrain.sigma_max``) takes this route only after block Krylov on A predicted more
block steps than the route costs, and only for a matrix whose squares fp32 holds comfortably.
"""
from __future__ import annotations

import math

import torch

from ..kernels.cpu_matmul import skinny_matmul_cpu
from ..kernels.orthonormalize import gaussian, orthonormalize
from .lanczos import Basis, value_error_bound

__all__ = ["columns_gram", "gram_route_blocks", "sigma_max_by_gram"]

# Short sides from which the Gram matrix is formed block by block, only the blocks on and above the
# diagonal (10 of 16 for 4 blocks): torch has no syrk, and bᵀb as one product computes both halves.
_BLOCKED_FROM = 512
_BLOCKS = 4
# Block width of the Lanczos on G. Products with G are cheap (G sits in cache); what grows with the
# width is the basis a given polynomial degree needs, and with it the orthogonalisation and the
# projected eigen-decompositions. Gaussian W0, the whole σ_max, 8 against 16 columns (with the
# check spacing below 32 against 64): 154–160 against 195–197 ms at 1600×6400, 27 against 30 ms at
# 576×1536, 127–134 against 144–147 ms at 2048² (2 threads; one thread 264 against 318 ms at
# 1600×6400), same accuracy (bench/RESULTS.md, 2026-12-02).
_LANCZOS_BLOCK = 8
# The Gram route's flops run this much faster than a Krylov step's (see gram_route_blocks).
_FITTED_SPEED_RATIO = 0.55
# Width of the Lanczos block when that factor was fitted; the cost model keeps it, so the 8-wide
# Lanczos since (~20 % cheaper) leaves the route decision slightly on the Krylov side, as before.
_FITTED_LANCZOS_BLOCK = 16
# Test convergence after every block up to this basis width, then every ~dim/width blocks: the
# eigen-decomposition of the projected matrix grows like dim³ and, on G, costs more than the block
# steps between two checks (measured at 1600×6400, Gaussian: 123 ms with 64 against 142 with 128
# for 16-wide blocks; 44 ms with 32 against 54 ms with 64 for 8-wide, the Lanczos alone).
_CHECK_EVERY_BLOCK_UP_TO = 32


def columns_gram(b: torch.Tensor) -> torch.Tensor:
    """``bᵀ b`` (``b`` tall, any dtype), exactly symmetric: every entry below the diagonal is a copy of
    its mirror image (a BLAS product ``bᵀ b`` need not be: its two triangles may sum in other orders)."""
    n = b.shape[1]
    if n < _BLOCKED_FROM:
        return _mirror_upper_(b.T @ b)
    edges = [n * i // _BLOCKS for i in range(_BLOCKS + 1)]
    gram = torch.empty(n, n, dtype=b.dtype, device=b.device)
    for i in range(_BLOCKS):
        rows = b[:, edges[i]:edges[i + 1]]
        # Block row i, from the diagonal on: one product [B_iᵀ B_i … B_iᵀ B_last].
        blk = rows.T @ b[:, edges[i]:]
        gram[edges[i]:edges[i + 1], edges[i]:] = blk
        _mirror_upper_(gram[edges[i]:edges[i + 1], edges[i]:edges[i + 1]])
        gram[edges[i + 1]:, edges[i]:edges[i + 1]] = blk[:, edges[i + 1] - edges[i]:].T
    return gram


def _mirror_upper_(square: torch.Tensor) -> torch.Tensor:
    """Overwrite the strict lower triangle of ``square`` with the transposed upper one; returns it."""
    lower = torch.tril_indices(square.shape[0], square.shape[1], -1, device=square.device)
    square[lower[0], lower[1]] = square[lower[1], lower[0]]
    return square


def gram_route_blocks(m: int, n: int, block: int) -> float:
    """What :func:`sigma_max_by_gram` costs for an m×n matrix, in block-Krylov steps of width
    ``block`` on that matrix (each two products with it and an orthonormalisation).

    A flop-count model with one factor fitted on the 2-core CPU machine (issue 15, bench/RESULTS.md):
    the route ran in 12.5 steps' time at 1600×6400 and 4.6 at 576×1536, where the flop ratio below
    gives 18.5 and 9.8 (the Gram product runs nearer the BLAS's peak than the skinny products).
    Only the decision depends on it, never the value.
    """
    s, l = min(m, n), max(m, n)
    gram = (10 / 16 if s >= _BLOCKED_FROM else 1.0) * 2.0 * s * s * l
    lanczos = 30 * 4.0 * s * s * _FITTED_LANCZOS_BLOCK  # ~30 block steps on G, each a product and CGS2
    step = 4 * (2.0 * s * l * block) + 4.0 * (s + l) * 8 * block * block
    return _FITTED_SPEED_RATIO * (gram + lanczos) / step


def _top_ritz(g: torch.Tensor, value_tol: float, generator: torch.Generator | None, keep: int
              ) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric block Lanczos on a PSD ``g``: (Ritz values, float64, descending; the top ``keep``
    Ritz vectors), once the top value's gap bound r²/δ is within ``value_tol``·θ₁, its residual is at
    rounding level, or the basis spans the space. Products and bases in ``g``'s dtype (fp32 runs
    them at twice the float64 rate; the Rayleigh–Ritz step on A after makes up for its rounding),
    the projected matrix in float64."""
    s = g.shape[0]
    b = min(_LANCZOS_BLOCK, s)
    q, _ = torch.linalg.qr(gaussian(s, b, g.dtype, g.device, generator))
    basis = Basis(q, 8 * b)
    images = Basis(skinny_matmul_cpu(g, q), 8 * b)
    h = skinny_matmul_cpu(q.T, images.view).to(torch.float64)  # Qᵀ G Q, grown block by block
    since_check = 0
    while True:
        qb, pb = basis.view, images.view
        dim = qb.shape[1]
        since_check += 1
        if since_check * _CHECK_EVERY_BLOCK_UP_TO >= dim or dim >= s:
            since_check = 0
            theta, y = torch.linalg.eigh(0.5 * (h + h.T))
            theta, y = theta.flip(0), y.flip(1)
            two = y[:, : min(2, dim)].to(g.dtype)  # the gap bound needs the top value's and its neighbour's residual
            res = torch.linalg.vector_norm((pb @ two - (qb @ two) * theta[: two.shape[1]].to(g.dtype)).to(torch.float64),
                                           dim=0)
            top = float(theta[0])
            done = top <= 0.0 or dim >= s or float(res[0]) <= 64 * torch.finfo(g.dtype).eps * top
            if done or float(value_error_bound(theta, torch.cat([res, theta.new_zeros(dim - res.numel())]), 1)[0]
                             ) <= value_tol * top:
                return theta, qb @ y[:, :keep].to(g.dtype)
        # Next block: the newest images, orthonormalised against the basis; directions already
        # inside it (G of low rank) are replaced by random ones orthogonal to it (``orthonormalize``).
        width = min(q.shape[1], s - dim)
        if width <= 0:  # the basis spans the space: solve it exactly next round
            since_check = _CHECK_EVERY_BLOCK_UP_TO
            continue
        q, _, _ = orthonormalize(pb[:, -q.shape[1]:][:, :width], qb, backend="torch", generator=generator)
        p = skinny_matmul_cpu(g, q)
        cross = skinny_matmul_cpu(qb.T, p).to(torch.float64)
        h = torch.cat([torch.cat([h, cross], 1), torch.cat([cross.T, (q.T @ p).to(torch.float64)], 1)], 0)
        basis.append(q)
        images.append(p)


def sigma_max_by_gram(a: torch.Tensor, value_tol: float, generator: torch.Generator | None = None
                      ) -> tuple[float, float]:
    """``(σ_max, relative residual)`` of a dense 2-D tensor through its short side's Gram matrix
    (see the module docstring). ``a``'s squares must fit its dtype (the caller checks)."""
    wide = a.shape[0] <= a.shape[1]
    short_rows = a if wide else a.T  # s×l: the Gram of its rows is s×s
    g = columns_gram(short_rows.T)
    theta, vecs = _top_ritz(g, value_tol, generator, keep=_LANCZOS_BLOCK)
    if float(theta[0]) <= 0.0:
        return 0.0, 0.0
    # Rayleigh–Ritz on A: σ(Aᵀ Q) for the top Ritz vectors, Q orthonormal in the matrix's dtype.
    q = torch.linalg.qr(vecs)[0]
    y = skinny_matmul_cpu(short_rows.T, q).to(torch.float64)  # l×keep
    p, sv, ht = torch.linalg.svd(y, full_matrices=False)
    sigma = float(sv[0])
    if sigma == 0.0:
        return 0.0, 0.0
    # Explicit residual of the pair (u = Q h, v = y h / σ): ‖A v − σ u‖ / σ.
    u = q.to(torch.float64) @ ht[0]
    v = (p[:, 0]).to(a.dtype)
    av = skinny_matmul_cpu(short_rows, v[:, None]).to(torch.float64)[:, 0]
    residual = float(torch.linalg.vector_norm(av - sigma * u)) / sigma
    if not math.isfinite(residual):
        residual = math.inf
    return sigma, residual
