"""The result type of the spectral solvers: singular triplets restricted to the wanted values."""
from __future__ import annotations

from dataclasses import dataclass

import torch

__all__ = ["Triplets", "default_tol", "orient"]


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
    ``converged``: False only for a top-k call that gave up early (``topk_svd(give_up_blocks=…)``);
    the triplets are then the current Ritz estimates, not converged ones.
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
    converged: bool = True


def default_tol(dtype: torch.dtype) -> float:
    """Relative residual the solver aims for: 64 ulp of the product dtype."""
    return 64 * torch.finfo(dtype).eps


def orient(t: Triplets, transposed: bool) -> Triplets:
    """``t`` as the triplets of Aᵀ when it was solved for Aᵀ (u and v swapped)."""
    if not transposed:
        return t
    return Triplets(t.v, t.s, t.u, t.residual, t.next_value, t.basis_size, t.products, t.exact, t.certificate,
                    t.bound, t.failure_probability, t.converged)
