"""Float64 full-SVD references: for tests and benchmarks only, never the hot path.

``restrain_reference``: Ŵ = W0 + U diag(F(σ)) Vᵀ from a full SVD of Δ, σ* = σ_max(W0).
``paper_procedure``: the per-matrix steps of PRUNE's reference code, in NumPy float64: full SVDs of
Δ, W0, W_N and the result (the last two only printed there) plus ``matrix_rank(Δ)``, with Δ rebuilt
from its numerically nonzero part. Used to measure what prune_fast replaces.
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


def paper_procedure(w0: np.ndarray, w_edited: np.ndarray, fn: FnLike = "log", alpha: float = math.e) -> np.ndarray:
    """PRUNE's reference procedure for one matrix (4 full SVDs + matrix_rank), float64 NumPy."""
    f = resolve_fn(fn, alpha)
    w0 = np.asarray(w0, dtype=np.float64)
    w_edited = np.asarray(w_edited, dtype=np.float64)
    delta = w_edited - w0
    u, s, vh = np.linalg.svd(delta, full_matrices=False)
    sigma_star = float(np.linalg.svd(w0, compute_uv=False)[0])
    np.linalg.svd(w_edited, compute_uv=False)  # printed by the reference code; kept for its cost
    rank = int(np.linalg.matrix_rank(delta))
    s_new = f(torch.from_numpy(s[:rank]), sigma_star).numpy()
    restrained = w0 + (u[:, :rank] * s_new) @ vh[:rank]
    np.linalg.svd(restrained, compute_uv=False)  # likewise printed there
    return restrained
