"""σ_max by block power (subspace) iteration, entirely on the device: no host synchronisation.

    V ← orth(Aᵀ A V)   (``block_power_step``),   then Rayleigh–Ritz:  σ_1 ≈ √λ_1(Vᵀ AᵀA V)

This is the capturable companion of the block-Lanczos solver (``prune_fast.spectral.krylov``): a fixed
number of steps, every branch replaced by arithmetic, every small decomposition done by
``small_eigh`` (a one-program Jacobi kernel with the Triton backend), so the whole computation can
be enqueued, or captured in a CUDA graph, without reading a value back. Lanczos stays the default
for σ*: it stops on a residual test and converges where power iteration stalls on clustered top
singular values (30 block-power iterations on a Gaussian 1600×6400 reached only 3e-3 relative
error); use this one when a fixed iteration budget and no synchronisation matter more, and read
the returned residual.  No library path calls it yet (tests, ``bench/run.py`` and
``bench/gpu_check.py`` do): it is the candidate for a sync-free σ* on CUDA, to be wired where a GPU
can measure the host sync it removes.

Orthonormalisation is SVQB (Stathopoulos & Wu, SIAM J. Sci. Comput. 2002): with Z (n×b),
D = diag(ZᵀZ)^(−1/2) and D ZᵀZ D = W Λ Wᵀ, the block Z D W Λ^(−1/2) is orthonormal; eigenvalues
below ε·λ_1 are clamped, so a rank-deficient block yields small columns instead of NaN.

Example::

    res = sigma_max_power(ImplicitDifferenceOperator(w, w0, backend="triton"), backend="triton")
    res.sigma, res.residual        # 0-d device tensors; read them when convenient
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .skinny_matmul import skinny_matmul
from .small_eigh import small_eigh

__all__ = ["PowerResult", "block_power_step", "svqb", "sigma_max_power"]


@dataclass
class PowerResult:
    """σ_max estimate and its certificate, all device tensors (no value was read back).

    ``sigma``: 0-d, the top Ritz value; ``residual``: 0-d, ‖Aᵀu − σ v‖ / σ for the returned pair;
    ``u`` (m,), ``v`` (n,): the top singular pair; ``block``: the final orthonormal block (n×b), a
    warm start for the next call.
    """

    sigma: torch.Tensor
    residual: torch.Tensor
    u: torch.Tensor
    v: torch.Tensor
    block: torch.Tensor


def svqb(z: torch.Tensor, *, backend: str = "torch") -> torch.Tensor:
    """An orthonormal basis of span(z) (z: n×b) by SVQB, without host synchronisation."""
    gram = skinny_matmul(z.mT, z, backend=backend)
    scale = torch.diagonal(gram).clamp_min(torch.finfo(gram.dtype).tiny).rsqrt()
    lam, w = small_eigh(gram * scale[:, None] * scale[None, :], backend=backend)
    lam = lam.to(gram.dtype).clamp_min(torch.finfo(gram.dtype).eps * lam[0].to(gram.dtype).abs())
    return z @ ((scale[:, None] * w.to(gram.dtype)) * lam.rsqrt()[None, :])


def block_power_step(op, v: torch.Tensor, *, backend: str = "torch") -> torch.Tensor:
    """One subspace-iteration step on AᵀA: ``orth(Aᵀ (A v))`` for an orthonormal v (n×b)."""
    return svqb(op.rmatmul(op.matmul(v)), backend=backend)


def sigma_max_power(op, *, block: int = 4, iters: int = 30, start: torch.Tensor | None = None,
                    generator: torch.Generator | None = None, backend: str = "torch") -> PowerResult:
    """Largest singular value of an operator (``matmul``/``rmatmul``, see ``prune_fast.spectral.operators``).

    ``block`` columns (more columns converge faster on clustered spectra), ``iters`` fixed steps,
    ``start``: an n×b block to warm-start from (e.g. the previous result's ``block``). Costs
    2·iters + 2 products and never synchronises with the host.
    """
    m, n = op.shape
    b = min(block, n) if start is None else start.shape[1]
    if start is None:
        start = torch.randn(n, b, dtype=op.dtype, generator=generator).to(op.device)
    v = svqb(start.to(op.dtype), backend=backend)
    for _ in range(iters):
        v = block_power_step(op, v, backend=backend)
    y = op.matmul(v)
    lam, w = small_eigh(skinny_matmul(y.mT, y, backend=backend), backend=backend)
    sigma = lam[0].to(op.dtype).clamp_min(0).sqrt()
    v1 = v @ w[:, 0].to(op.dtype)
    u1 = (y @ w[:, 0].to(op.dtype)) / torch.where(sigma > 0, sigma, 1.0)
    r = op.rmatmul(u1[:, None])[:, 0] - sigma * v1
    residual = torch.linalg.vector_norm(r) / torch.where(sigma > 0, sigma, 1.0)
    return PowerResult(sigma, residual, u1, v1, v)
