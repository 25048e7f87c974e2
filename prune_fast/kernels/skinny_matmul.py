"""Skinny products with an implicit operand: Y = (A − A0) X, fp32 accumulation, Δ never formed.

The Krylov solver sees Δ only through Y = ΔΩ and Z = ΔᵀQ (Ω: n×b, Q: m×b, b ≪ m, n). When Δ is
held as W − W0 (two tensors, any float dtypes, e.g. a bf16 weight and its snapshot) or as a
factored A Bᵀ, these products never need Δ itself:

    difference_matmul(W, W0, Ω)        = (W − W0) Ω                 one read of W and W0
    difference_matmul(W.mT, W0.mT, Q)  = (W − W0)ᵀ Q                transposes are stride swaps
    skinny_matmul(A, skinny_matmul(B.mT, Ω)) = A (Bᵀ Ω)             Δ = A Bᵀ, two small products

One Triton kernel (``_skinny_matmul_kernel``) computes out = (A − A0) X for any strides, with the
long reduction optionally split across programs (partial sums in fp32, summed by torch), beside a
torch version that converts row blocks to fp32 so no full-size temporary exists.

Example::

    y = difference_matmul(w, w0, omega, backend="triton")     # (m, b) float32
"""
from __future__ import annotations

import torch

from .._dtype import compute_dtype
from .dispatch import check_triton_device, triton_kernel
from .settings import cdiv, launch_config

try:
    import triton.language as tl
except ImportError:  # the torch versions below need no Triton
    tl = None

__all__ = ["skinny_matmul", "difference_matmul", "skinny_matmul_torch", "skinny_matmul_triton"]

# Rows of A per fp32 block in the torch version.
_ROW_BLOCK = 512


# ---- Triton kernel ------------------------------------------------------------------------------
# SPLIT is a plain runtime argument, never specialised: launch_config picks any of 1-32 from the
# problem size, and as a constexpr (or a specialised int) each value would be another compiled
# binary, i.e. another JIT compile on a GPU's first contact with a new size, for the same code.
@triton_kernel(do_not_specialize=["SPLIT"])
def _skinny_matmul_kernel(
    out_ptr, a_ptr, a0_ptr, x_ptr,
    M, N, B, SPLIT,
    s_os, s_om, s_ob, s_am, s_an, s_0m, s_0n, s_xn, s_xb,
    SUBTRACT: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_B: tl.constexpr, INPUT_PRECISION: tl.constexpr,
):
    """out[s, i, c] = Σ_{j in split s} (a[i, j] − a0[i, j]) · x[j, c]     (fp32 accumulation)

    Grid (⌈M/BLOCK_M⌉, ⌈B/BLOCK_B⌉, SPLIT): program s takes reduction chunks s, s+SPLIT, …; with
    SPLIT = 1 the single slice is the result. a0 is read only when SUBTRACT.
    """
    pid_m = tl.program_id(0)
    pid_b = tl.program_id(1)
    pid_s = tl.program_id(2)
    rows = (pid_m * BLOCK_M + tl.arange(0, BLOCK_M)).to(tl.int64)
    cols = pid_b * BLOCK_B + tl.arange(0, BLOCK_B)
    acc = tl.zeros((BLOCK_M, BLOCK_B), dtype=tl.float32)
    for n0 in range(pid_s * BLOCK_N, N, SPLIT * BLOCK_N):
        ks = (n0 + tl.arange(0, BLOCK_N)).to(tl.int64)
        a_mask = (rows[:, None] < M) & (ks[None, :] < N)
        at = tl.load(a_ptr + rows[:, None] * s_am + ks[None, :] * s_an, mask=a_mask, other=0.0).to(tl.float32)
        if SUBTRACT:
            at -= tl.load(a0_ptr + rows[:, None] * s_0m + ks[None, :] * s_0n, mask=a_mask, other=0.0).to(tl.float32)
        xt = tl.load(x_ptr + ks[:, None] * s_xn + cols[None, :] * s_xb,
                     mask=(ks[:, None] < N) & (cols[None, :] < B), other=0.0).to(tl.float32)
        acc = tl.dot(at, xt, acc, input_precision=INPUT_PRECISION)
    tl.store(out_ptr + pid_s * s_os + rows[:, None] * s_om + cols[None, :] * s_ob, acc,
             mask=(rows[:, None] < M) & (cols[None, :] < B))


# ---- launcher -----------------------------------------------------------------------------------
def skinny_matmul_triton(a: torch.Tensor, x: torch.Tensor, a0: torch.Tensor | None = None) -> torch.Tensor:
    """(a − a0) @ x as a new (m, b) float32 tensor (Triton; a, a0, x any float dtypes and strides)."""
    m, n = a.shape
    b = x.shape[1]
    check_triton_device(a)
    if m == 0 or b == 0 or n == 0:
        return torch.zeros(m, b, dtype=torch.float32, device=a.device)
    cfg = launch_config("skinny_matmul", m=m, n=n, b=b)
    out = torch.empty(cfg.split, m, b, dtype=torch.float32, device=a.device)
    a0_arg = a if a0 is None else a0  # placeholder pointer when SUBTRACT is off (never read)
    grid = (cdiv(m, cfg.block_m), cdiv(b, cfg.block_b), cfg.split)
    _skinny_matmul_kernel[grid](
        out, a, a0_arg, x, m, n, b, cfg.split,
        out.stride(0), out.stride(1), out.stride(2), a.stride(0), a.stride(1),
        a0_arg.stride(0), a0_arg.stride(1), x.stride(0), x.stride(1),
        SUBTRACT=a0 is not None, BLOCK_M=cfg.block_m, BLOCK_N=cfg.block_n,
        BLOCK_B=cfg.block_b, INPUT_PRECISION=cfg.input_precision, num_warps=cfg.num_warps, num_stages=cfg.num_stages,
    )
    return out[0] if cfg.split == 1 else out.sum(0)


# ---- torch version ------------------------------------------------------------------------------
def skinny_matmul_torch(a: torch.Tensor, x: torch.Tensor, a0: torch.Tensor | None = None) -> torch.Tensor:
    """(a − a0) @ x in fp32 (fp64 if any operand is fp64), by row blocks of a (torch version)."""
    acc = compute_dtype(a, x, a0)
    xa = x.to(acc)
    if a0 is None and a.dtype == acc:
        return a @ xa
    out = torch.empty(a.shape[0], x.shape[1], dtype=acc, device=a.device)
    for start in range(0, a.shape[0], _ROW_BLOCK):
        rows = slice(start, start + _ROW_BLOCK)
        block = a[rows].to(acc, copy=True)
        if a0 is not None:
            block -= a0[rows].to(acc)
        torch.matmul(block, xa, out=out[rows])
    return out


# ---- front-ends ---------------------------------------------------------------------------------
def skinny_matmul(a: torch.Tensor, x: torch.Tensor, *, backend: str = "torch") -> torch.Tensor:
    """a @ x with fp32 accumulation (a: m×n, x: n×b, any float dtypes/strides) → (m, b) fp32 (fp64 stays fp64)."""
    return _dispatch(a, x, None, backend)


def difference_matmul(a: torch.Tensor, a0: torch.Tensor, x: torch.Tensor, *, backend: str = "torch") -> torch.Tensor:
    """(a − a0) @ x without forming a − a0 (a, a0: m×n, x: n×b) → (m, b) fp32 (fp64 stays fp64)."""
    if a0.shape != a.shape:
        raise ValueError(f"difference_matmul needs a and a0 of one shape, got {tuple(a.shape)} and {tuple(a0.shape)}")
    return _dispatch(a, x, a0, backend)


def _dispatch(a: torch.Tensor, x: torch.Tensor, a0: torch.Tensor | None, backend: str) -> torch.Tensor:
    if a.dim() != 2 or x.dim() != 2 or a.shape[1] != x.shape[0]:
        raise ValueError(f"skinny product needs a: m×n and x: n×b, got {tuple(a.shape)} and {tuple(x.shape)}")
    fp64 = torch.float64 in (a.dtype, x.dtype) or (a0 is not None and a0.dtype == torch.float64)
    if backend == "triton" and not fp64:
        return skinny_matmul_triton(a, x, a0)
    return skinny_matmul_torch(a, x, a0)
