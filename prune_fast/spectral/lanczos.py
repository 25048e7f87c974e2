"""Block Golub–Kahan–Lanczos bidiagonalisation: the Krylov bases the threshold SVD is built on.

Starting from an orthonormal block V₁, a :class:`Chain` grows orthonormal bases U = [U₁ … U_j],
V = [V₁ … V_j] of the Krylov spaces of A (m×n, seen only through products) with

    U_j R_j = A V_j − U (Uᵀ A V_j),          V_{j+1} S_j = Aᵀ U_j − V (Vᵀ Aᵀ U_j),

so that T = Uᵀ A V is known exactly from the orthogonalisation coefficients and A V = U T (Golub &
Kahan 1965; Golub, Luk & Overton 1981). The singular triplets (θ, y_u, y_v) of the small T give
Ritz triplets (θ, U y_u, V y_v); θ_i ≤ σ_i(A). Their residuals ‖Aᵀ(U y_u) − θ V y_v‖ =
‖S_j y_u[last block]‖ are read off for free, and :func:`explicit_residuals` measures them from the
products Aᵀ U the chain keeps. Block Krylov converges where single-vector power iteration stalls on
clustered top singular values (Musco & Musco, NeurIPS 2015).
"""
from __future__ import annotations

import math

import torch

__all__ = ["Basis", "Chain", "append_columns", "explicit_residuals", "value_error_bound"]


class Basis:
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


class Chain:
    """Block Golub–Kahan bidiagonalisation of A restricted to the complement of ``deflate`` (orthonormal
    n×k₀ columns, or None): bases U, V (V ⟂ deflate), Z = Aᵀ U, and T = Uᵀ A V with A V = U T.

    ``solver`` supplies the operator (``op``) and the orthonormalisation (``_orth``, with the
    caller's backend and generator); ``x0`` is the start block (n×b)."""

    def __init__(self, solver, x0: torch.Tensor, deflate: torch.Tensor | None = None):
        self.solver, self.op, self.deflate = solver, solver.op, deflate
        v_blk, self.r_start, _ = solver._orth(x0, deflate)  # (I − DDᵀ) x0 = V₁ r_start
        y = self.op.matmul(v_blk)
        self.first_product = y
        u_blk, r, _ = solver._orth(y)
        cap = 8 * v_blk.shape[1]
        self.u_basis, self.v_basis = Basis(u_blk, cap), Basis(v_blk, cap)
        self.z_basis: Basis | None = None
        self.u_last = u_blk
        self.t_mat = r.to(torch.float64)
        self.blocks, self.products = 1, 1

    def close(self) -> torch.Tensor:
        """z = Aᵀ U_last, kept (the explicit residual check needs no extra pass later)."""
        z = self.op.rmatmul(self.u_last)
        self.products += 1
        if self.z_basis is None:
            self.z_basis = Basis(z, 8 * self.u_basis.view.shape[1])
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




def explicit_residuals(at_u: torch.Tensor, s: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """‖Aᵀu_i − s_i v_i‖ (float64), with ``at_u`` = Aᵀ u formed from actual products with A
    (as (Aᵀ U) p, not from the recurrence), so a basis that lost orthogonality still shows."""
    return torch.linalg.vector_norm((at_u - v * s.to(v.dtype)).to(torch.float64), dim=0)


def value_error_bound(theta: torch.Tensor, res: torch.Tensor, n_want: int) -> torch.Tensor:
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
