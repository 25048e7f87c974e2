"""Orthonormal bases of tall-skinny blocks, optionally orthogonal to an existing basis.

``orthonormalize(X, against=Q)`` returns ``(Q_new, R, C)`` with

    X = Q C + Q_new R + E,     Q_newᵀ Q_new = I,   Qᵀ Q_new ≈ 0,   ‖E‖ ≤ δ‖X‖,  δ = 16 ulp.

Classical Gram–Schmidt is applied twice (CGS2: "twice is enough", Giraud et al. 2005). Directions of
X that lie numerically inside span(Q) are *deflated*: what is left of them is rounding noise, whose
normalised direction would not be orthogonal to Q, so it is dropped (its part of R is zero) and a
random direction orthogonal to Q takes its place. This keeps block Krylov bases orthonormal when the
matrix has lower rank than the basis (every low-rank edit), which Rayleigh–Ritz needs.
"""
from __future__ import annotations

import torch


def _project_out(x: torch.Tensor, basis: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor | None]:
    if basis is None or basis.shape[1] == 0:
        return x, None
    c1 = basis.T @ x
    x = x - basis @ c1
    c2 = basis.T @ x
    return x - basis @ c2, c1 + c2


def orthonormalize_torch(x: torch.Tensor, against: torch.Tensor | None = None,
                         generator: torch.Generator | None = None
                         ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Return ``(q, r, coeff)``: ``x ≈ against @ coeff + q @ r``, q orthonormal and ⟂ ``against``."""
    rows, cols = x.shape
    scale = float(torch.linalg.vector_norm(x))
    x, coeff = _project_out(x, against)
    q0, r0 = torch.linalg.qr(x)
    if cols == 0 or scale == 0.0:
        return q0, torch.zeros_like(r0), coeff
    p, sig, ht = torch.linalg.svd(r0)
    keep = sig > 16 * torch.finfo(x.dtype).eps * scale
    if bool(keep.all()):
        return q0, r0, coeff
    # Significant directions first, then random replacements for the deflated ones.
    n_keep = int(keep.sum())
    q_keep = q0 @ p[:, :n_keep]
    basis = q_keep if against is None else torch.cat([against, q_keep], 1)
    fill = torch.randn(rows, cols - n_keep, dtype=x.dtype, generator=generator).to(x.device)
    fill, _ = _project_out(fill, basis)
    fill, _ = torch.linalg.qr(fill)
    q = torch.cat([q_keep, fill], 1)
    r = torch.zeros_like(r0)
    r[:n_keep] = sig[:n_keep, None] * ht[:n_keep]
    return q, r, coeff
