"""Orthonormal bases of tall-skinny blocks, optionally orthogonal to an existing basis.

``orthonormalize(X, against=Q)`` returns ``(Q_new, R)`` with ``X − Q Qᵀ X ≈ Q_new R``,
``Q_newᵀ Q_new = I`` and ``Qᵀ Q_new ≈ 0``. Classical Gram–Schmidt is applied twice (CGS2: "twice is
enough", Giraud et al. 2005), then a Householder QR. Columns of X that lie (numerically) inside the
existing span still get a valid orthonormal direction, so Rayleigh–Ritz on the grown basis stays exact.
"""
from __future__ import annotations

import torch


def orthonormalize_torch(x: torch.Tensor, against: torch.Tensor | None = None
                         ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Return ``(q, r, coeff)``: ``x = against @ coeff + q @ r`` with q orthonormal and ⟂ ``against``."""
    coeff = None
    if against is not None and against.shape[1]:
        coeff = against.T @ x
        x = x - against @ coeff
        c2 = against.T @ x
        x = x - against @ c2
        coeff = coeff + c2
    q, r = torch.linalg.qr(x)
    if against is not None and against.shape[1]:
        # Householder directions for (near-)zero columns need not be ⟂ `against`: clean them once more.
        drift = against.T @ q
        if float(drift.abs().max()) > 1e-3:
            q = q - against @ drift
            coeff = drift @ r if coeff is None else coeff + drift @ r
            q, r2 = torch.linalg.qr(q)
            r = r2 @ r
    return q, r, coeff
