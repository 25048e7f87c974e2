"""Float64 full-SVD references: for tests and benchmarks only, never the hot path.

``restrain_reference``: Ŵ = W0 + U diag(F(σ)) Vᵀ from a full SVD of Δ, σ* = σ_max(W0).
``paper_procedure``: the per-matrix steps of PRUNE's reference code, in NumPy float64: full SVDs
(``full_matrices=True``, with factors) of Δ, W0, W_N and the result (the last two only printed
there) plus ``matrix_rank(Δ)``, with Δ rebuilt from its numerically nonzero part. Used to measure
what prune_fast replaces.
"""
from __future__ import annotations

import math

import numpy as np
import torch

from .restraint_fn import FnLike, resolve_fn


def restrain_reference(w0: torch.Tensor, delta: torch.Tensor, fn: FnLike = "log", alpha: float = math.e,
                       sigma_star: float | None = None) -> tuple[torch.Tensor, dict]:
    """Return ``(Ŵ float64, info)`` with info: sigma_star, sigma (all of Δ's), sigma_restrained."""
    f = resolve_fn(fn, alpha)
    w0 = w0.detach().to("cpu", torch.float64)
    d = delta.detach().to("cpu", torch.float64)
    if sigma_star is None:
        sigma_star = float(torch.linalg.svdvals(w0)[0])
    u, s, vh = torch.linalg.svd(d, full_matrices=False)
    s_new = f(s, sigma_star)
    out = w0 + (u * s_new) @ vh
    return out, {"sigma_star": sigma_star, "sigma": s, "sigma_restrained": s_new,
                 "n_restrained": int((s >= sigma_star).sum())}


def paper_procedure(w0: np.ndarray, w_edited: np.ndarray, fn: FnLike = "log", alpha: float = math.e, *,
                    full_matrices: bool = True) -> np.ndarray:
    """PRUNE's reference procedure for one matrix, float64 NumPy; returns the restrained weight.

    As the paper's code does it (``full_matrices=True``): ``np.linalg.svd(·, full_matrices=True,
    compute_uv=True)`` of Δ, W0, W_N and the result (only Δ's factors and W0's largest value are
    used; the rest is printed there), plus ``matrix_rank(Δ)``. The square factor of the long side
    (6400×6400 for a GPT-2 XL MLP matrix) makes each of these SVDs ~2.7× a thin one here.

    ``full_matrices=False`` is a leaner variant nobody ships, kept as the stricter yardstick: a
    thin SVD of Δ, singular values only for the other three.
    """
    f = resolve_fn(fn, alpha)
    w0 = np.asarray(w0, dtype=np.float64)
    w_edited = np.asarray(w_edited, dtype=np.float64)
    delta = w_edited - w0

    def svd(a: np.ndarray, need_factors: bool) -> tuple:
        if full_matrices:
            return np.linalg.svd(a, full_matrices=True, compute_uv=True)
        if need_factors:
            return np.linalg.svd(a, full_matrices=False)
        return None, np.linalg.svd(a, compute_uv=False), None

    u, s, vh = svd(delta, True)
    sigma_star = float(svd(w0, False)[1][0])
    svd(w_edited, False)  # printed by the reference code; kept for its cost
    rank = int(np.linalg.matrix_rank(delta))
    s_new = f(torch.from_numpy(s[:rank]), sigma_star).numpy()
    restrained = w0 + (u[:, :rank] * s_new) @ vh[:rank]
    svd(restrained, False)  # likewise printed there
    return restrained
