"""Eigen-decomposition of small symmetric matrices on the device, without a host synchronisation.

    A = V diag(λ) Vᵀ,   λ descending        (A: (..., k, k) symmetric, k ≤ JACOBI_MAX_K)

The Rayleigh–Ritz and SVQB steps of block power iteration (``sigma_power.py``) need the eigen-
decomposition of a b×b Gram matrix every iteration. ``torch.linalg.eigh`` on CUDA calls cuSOLVER
and checks its info flag on the host; a Triton one-program Jacobi solver keeps the whole step on
the GPU (capturable in a CUDA graph).

Algorithm (``_jacobi_eigh_kernel``): cyclic Jacobi in parallel (round-robin) order (Brent & Luk
1985; Golub & Van Loan, Matrix Computations §8.5). A is padded to BLOCK (a power of two ≥ 16) with
zero rows and columns, which stay decoupled. Each of the BLOCK − 1 rounds of a sweep pairs every
index with a distinct partner, so the BLOCK/2 rotations of a round commute and form one orthogonal
matrix J; the round is A ← Jᵀ A J, V ← V J as two ``tl.dot`` products. For a pair (p, q), p < q
(Golub & Van Loan Alg. 8.5.1):

    τ = (a_qq − a_pp) / (2 a_pq),  t = sign(τ) / (|τ| + √(1 + τ²)),  c = 1/√(1 + t²),  s = t c,
    J_pp = J_qq = c,  J_pq = s,  J_qp = −s.

Sweeps repeat until ‖off(A)‖_F ≤ tol ‖A‖_F or ``JACOBI_MAX_SWEEPS``. Eigenvalues come out in fp32
with absolute error ~ u‖A‖ (u = fp32 unit roundoff); larger k go to ``torch.linalg.eigh``.

Choice documented: the Triton solver is the default for the device path; a CUDA C++ version of
the same algorithm (``csrc/jacobi_eigh.cu``, built by CMakeLists.txt) is used instead when its
library is loaded and ``PRUNE_FAST_CUDA_JACOBI=1`` — which is faster is for ``bench/gpu_check.py``
to measure on the GPU.

Example::

    w, v = small_eigh(gram, backend="triton")      # gram: (b, b) float32 on the GPU
"""
from __future__ import annotations

import os

import torch

from . import cuda_library
from .dispatch import check_triton_device, triton_kernel
from .settings import JACOBI_MAX_K, JACOBI_MAX_SWEEPS, launch_config

try:
    import triton.language as tl
except ImportError:  # the torch versions below need no Triton
    tl = None

__all__ = ["small_eigh", "small_svd", "small_eigh_torch", "small_eigh_triton"]


# ---- Triton kernel ------------------------------------------------------------------------------
@triton_kernel
def _jacobi_eigh_kernel(
    a_ptr, w_ptr, v_ptr,
    K, s_ab, s_am, s_an, s_wb, s_wk, s_vb, s_vm, s_vn, tol,
    BLOCK: tl.constexpr, MAX_SWEEPS: tl.constexpr, INPUT_PRECISION: tl.constexpr,
):
    """A[b] = V diag(w) Vᵀ for matrix b = program_id(0) (K×K, padded to BLOCK), by parallel Jacobi.

    Writes w[b, :K] (unsorted) and V[b, :K, :K] (column j is the eigenvector of w[b, j]).
    """
    pid = tl.program_id(0)
    idx = tl.arange(0, BLOCK)
    row = idx[:, None]
    col = idx[None, :]
    diag_mask = row == col
    a = tl.load(a_ptr + pid * s_ab + row * s_am + col * s_an, mask=(row < K) & (col < K), other=0.0).to(tl.float32)
    a = 0.5 * (a + tl.trans(a))
    v = tl.where(diag_mask, 1.0, 0.0)
    fro2 = tl.sum(tl.sum(a * a, axis=1), axis=0)
    # ‖off(A)‖² summed directly: ‖A‖² − ‖diag‖² would cancel to rounding noise near convergence.
    off2 = tl.sum(tl.sum(tl.where(diag_mask, 0.0, a * a), axis=1), axis=0)
    last = BLOCK - 1
    sweep = 0
    while (sweep < MAX_SWEEPS) & (off2 > tol * tol * fro2):
        for rnd in range(0, BLOCK - 1):
            # Round-robin pairing: i ↔ (2·rnd − i) mod (BLOCK−1); the index paired with itself
            # meets BLOCK−1 instead. Every pair meets once per sweep.
            partner = (2 * rnd - idx + 2 * last) % last
            partner = tl.where(idx == last, rnd, tl.where(partner == idx, last, partner))
            pick = col == partner[:, None]
            d = tl.sum(tl.where(diag_mask, a, 0.0), axis=1)
            a_ip = tl.sum(tl.where(pick, a, 0.0), axis=1)
            d_partner = tl.sum(tl.where(pick, d[None, :], 0.0), axis=1)
            is_p = idx < partner
            a_pp = tl.where(is_p, d, d_partner)
            a_qq = tl.where(is_p, d_partner, d)
            rotate = a_ip != 0.0
            tau = (a_qq - a_pp) / (2.0 * tl.where(rotate, a_ip, 1.0))
            t = tl.where(tau >= 0, 1.0, -1.0) / (tl.abs(tau) + tl.sqrt(1.0 + tau * tau))
            c = tl.where(rotate, 1.0 / tl.sqrt(1.0 + t * t), 1.0)
            s = tl.where(rotate, t * c, 0.0)
            j = tl.where(diag_mask, c[:, None], 0.0) + tl.where(pick, tl.where(is_p, s, -s)[:, None], 0.0)
            a = tl.dot(tl.trans(j), tl.dot(a, j, input_precision=INPUT_PRECISION), input_precision=INPUT_PRECISION)
            a = 0.5 * (a + tl.trans(a))
            v = tl.dot(v, j, input_precision=INPUT_PRECISION)
        off2 = tl.sum(tl.sum(tl.where(diag_mask, 0.0, a * a), axis=1), axis=0)
        sweep += 1
    d = tl.sum(tl.where(diag_mask, a, 0.0), axis=1)
    tl.store(w_ptr + pid * s_wb + idx * s_wk, d, mask=idx < K)
    tl.store(v_ptr + pid * s_vb + row * s_vm + col * s_vn, v, mask=(row < K) & (col < K))


# ---- launcher -----------------------------------------------------------------------------------
def _sort_descending(w: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    order = torch.argsort(w, dim=-1, descending=True)
    return torch.gather(w, -1, order), torch.gather(v, -1, order.unsqueeze(-2).expand_as(v))


def small_eigh_triton(a: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(w, v)`` of symmetric a (..., k, k), k ≤ JACOBI_MAX_K, in fp32, w descending (Triton)."""
    k = a.shape[-1]
    check_triton_device(a)
    batch = a.reshape(-1, k, k)
    nb = batch.shape[0]
    w = torch.empty(nb, k, dtype=torch.float32, device=a.device)
    v = torch.empty(nb, k, k, dtype=torch.float32, device=a.device)
    if nb and k:
        cfg = launch_config("jacobi_eigh", m=k, n=k)
        tol = 4.0 * torch.finfo(torch.float32).eps * cfg.block_m
        _jacobi_eigh_kernel[(nb,)](
            batch, w, v, k, *batch.stride(), *w.stride(), *v.stride(), tol,
            BLOCK=cfg.block_m, MAX_SWEEPS=JACOBI_MAX_SWEEPS, INPUT_PRECISION=cfg.input_precision,
            num_warps=cfg.num_warps, num_stages=cfg.num_stages,
        )
    w, v = _sort_descending(w, v)
    return w.reshape(a.shape[:-1]), v.reshape(a.shape)


# ---- torch version ------------------------------------------------------------------------------
def small_eigh_torch(a: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(w, v)`` of symmetric a (..., k, k) in a's dtype, w descending (``torch.linalg.eigh``)."""
    w, v = torch.linalg.eigh(a)
    return w.flip(-1), v.flip(-1)


# ---- front-ends ---------------------------------------------------------------------------------
def _cuda_jacobi_wanted(a: torch.Tensor) -> bool:
    return (a.device.type == "cuda" and os.environ.get("PRUNE_FAST_CUDA_JACOBI", "0") == "1"
            and cuda_library.available())


def small_eigh(a: torch.Tensor, *, backend: str = "torch") -> tuple[torch.Tensor, torch.Tensor]:
    """Eigenvalues (descending) and eigenvectors of symmetric a (..., k, k).

    ``backend="triton"`` with k ≤ JACOBI_MAX_K and a not fp64: one-program Jacobi, no host sync,
    fp32 results (the CUDA library's Jacobi when loaded and ``PRUNE_FAST_CUDA_JACOBI=1``);
    otherwise ``torch.linalg.eigh`` in a's dtype.
    """
    if a.dim() < 2 or a.shape[-1] != a.shape[-2]:
        raise ValueError(f"small_eigh needs square matrices (..., k, k), got shape {tuple(a.shape)}")
    if backend == "triton" and a.shape[-1] <= JACOBI_MAX_K and a.dtype != torch.float64:
        if _cuda_jacobi_wanted(a):
            return _sort_descending(*cuda_library.jacobi_eigh(a))
        return small_eigh_triton(a)
    return small_eigh_torch(a)


def small_svd(t: torch.Tensor, *, backend: str = "torch") -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(u, s, v)`` with t ≈ u diag(s) vᵀ for a small t (p×q), s descending, via eigh of tᵀt.

    σ_i = √λ_i(tᵀt), v = eigenvectors, u = t v / σ (zero columns where σ = 0). Squaring costs
    relative accuracy σ_1²/σ_i² · u on the small values; PRUNE needs the large ones (σ ≥ σ*).
    """
    tt = t.to(torch.float32) if t.dtype != torch.float64 else t
    lam, v = small_eigh(tt.mT @ tt, backend=backend)
    s = lam.clamp_min(0).sqrt()
    u = (tt @ v) / torch.where(s > 0, s, 1.0).unsqueeze(-2)
    return u, s, v
