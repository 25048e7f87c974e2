"""Low-rank updates of a weight in place, accumulated in fp32 and rounded once.

``apply_correction_``:   W ← W + L Rᵀ                       (L: m×k, R: n×k; the restraint step)
``write_restrained_``:   W ← W0 + D + L Rᵀ                  (D dense fp32 or absent; the no-drift path)

Both read and write W once (plus one read of W0 and D for the second). The restraint itself is
``L = −U diag(σ − F(σ))``, ``R = V``. One Triton kernel serves both (``_low_rank_update_kernel``),
beside the torch versions, which process half-precision weights in row blocks converted to fp32
so no full-size fp32 copy of W is made.

Example::

    apply_correction_(layer.weight.data, -(u * c), v, backend="triton")   # W ← W − U diag(c) Vᵀ
"""
from __future__ import annotations

import torch
from torch.autograd.graph import increment_version

from .._dtype import compute_dtype
from .dispatch import check_triton_device, triton_kernel
from .settings import cdiv, launch_config

try:
    import triton.language as tl
except ImportError:  # the torch versions below need no Triton
    tl = None

__all__ = ["apply_correction_", "write_restrained_", "apply_correction_torch_", "write_restrained_torch_",
           "apply_correction_triton_", "write_restrained_triton_"]

# Rows per fp32 block for half-precision weights in the torch versions.
_ROW_BLOCK = 512


# ---- Triton kernel ------------------------------------------------------------------------------
@triton_kernel
def _low_rank_update_kernel(
    out_ptr, base_ptr, dense_ptr, left_ptr, right_ptr,
    M, N, K,
    s_om, s_on, s_bm, s_bn, s_dm, s_dn, s_lm, s_lk, s_rn, s_rk,
    HAS_DENSE: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
    INPUT_PRECISION: tl.constexpr,
):
    """out[i, j] = base[i, j] (+ dense[i, j]) + Σ_k left[i, k] · right[j, k]

    One program per BLOCK_M × BLOCK_N tile of out (M×N, any strides); base is out itself for the
    in-place update or W0; the sum runs over K in BLOCK_K chunks with fp32 accumulation
    (left, right: fp32), and the tile is rounded to out's dtype once.
    """
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    rows = (pid_m * BLOCK_M + tl.arange(0, BLOCK_M)).to(tl.int64)
    cols = (pid_n * BLOCK_N + tl.arange(0, BLOCK_N)).to(tl.int64)
    in_tile = (rows[:, None] < M) & (cols[None, :] < N)
    acc = tl.load(base_ptr + rows[:, None] * s_bm + cols[None, :] * s_bn, mask=in_tile, other=0.0).to(tl.float32)
    if HAS_DENSE:
        acc += tl.load(dense_ptr + rows[:, None] * s_dm + cols[None, :] * s_dn, mask=in_tile, other=0.0)
    for k0 in range(0, K, BLOCK_K):
        ks = k0 + tl.arange(0, BLOCK_K)
        lt = tl.load(left_ptr + rows[:, None] * s_lm + ks[None, :] * s_lk,
                     mask=(rows[:, None] < M) & (ks[None, :] < K), other=0.0)
        rt = tl.load(right_ptr + ks[:, None] * s_rk + cols[None, :] * s_rn,
                     mask=(ks[:, None] < K) & (cols[None, :] < N), other=0.0)
        acc = tl.dot(lt, rt, acc, input_precision=INPUT_PRECISION)
    tl.store(out_ptr + rows[:, None] * s_om + cols[None, :] * s_on, acc.to(out_ptr.dtype.element_ty), mask=in_tile)


# ---- launchers ----------------------------------------------------------------------------------
def _launch_low_rank_update(out: torch.Tensor, base: torch.Tensor, dense: torch.Tensor | None,
                            left: torch.Tensor, right: torch.Tensor) -> torch.Tensor:
    m, n = out.shape
    k = left.shape[1]
    check_triton_device(out)
    if m == 0 or n == 0:
        return out
    left = left.to(torch.float32)
    right = right.to(torch.float32)
    cfg = launch_config("low_rank_update", m=m, n=n, k=k)
    d = out if dense is None else dense  # placeholder pointer when HAS_DENSE is off (never read)
    grid = (cdiv(m, cfg.block_m), cdiv(n, cfg.block_n))
    _low_rank_update_kernel[grid](
        out, base, d, left, right, m, n, k,
        out.stride(0), out.stride(1), base.stride(0), base.stride(1), d.stride(0), d.stride(1),
        left.stride(0), left.stride(1), right.stride(0), right.stride(1),
        HAS_DENSE=dense is not None, BLOCK_M=cfg.block_m, BLOCK_N=cfg.block_n, BLOCK_K=cfg.block_k,
        INPUT_PRECISION=cfg.input_precision, num_warps=cfg.num_warps, num_stages=cfg.num_stages,
    )
    return out


def apply_correction_triton_(weight: torch.Tensor, left: torch.Tensor, right: torch.Tensor) -> torch.Tensor:
    """W ← W + left @ rightᵀ in place (Triton; W fp32/fp16/bf16, any strides)."""
    return _launch_low_rank_update(weight, weight, None, left, right)


def write_restrained_triton_(weight: torch.Tensor, w0: torch.Tensor, left: torch.Tensor, right: torch.Tensor,
                             dense: torch.Tensor | None = None) -> torch.Tensor:
    """W ← W0 + dense + left @ rightᵀ (Triton; W0 any float dtype, dense fp32)."""
    if dense is not None:
        dense = dense.to(torch.float32)
    return _launch_low_rank_update(weight, w0, dense, left, right)


# ---- torch versions -----------------------------------------------------------------------------
def apply_correction_torch_(weight: torch.Tensor, left: torch.Tensor, right: torch.Tensor) -> torch.Tensor:
    """W ← W + left @ rightᵀ in place (torch version)."""
    acc = compute_dtype(weight)
    left = left.to(acc)
    right_t = right.to(acc).T
    if weight.dtype == acc:
        return weight.addmm_(left, right_t)
    for start in range(0, weight.shape[0], _ROW_BLOCK):
        rows = slice(start, start + _ROW_BLOCK)
        block = weight[rows].to(acc)
        block.addmm_(left[rows], right_t)
        weight[rows].copy_(block)
    return weight


def write_restrained_torch_(weight: torch.Tensor, w0: torch.Tensor, left: torch.Tensor, right: torch.Tensor,
                            dense: torch.Tensor | None = None) -> torch.Tensor:
    """W ← W0 + dense + left @ rightᵀ, computed in fp32 (or fp64) and rounded once (torch version)."""
    acc = compute_dtype(weight)
    left = left.to(acc)
    right_t = right.to(acc).T
    for start in range(0, weight.shape[0], _ROW_BLOCK):
        rows = slice(start, start + _ROW_BLOCK)
        block = w0[rows].to(acc, copy=True)
        if dense is not None:
            block += dense[rows]
        if left.shape[1]:
            block.addmm_(left[rows], right_t)
        weight[rows].copy_(block)
    return weight


# ---- front-ends ---------------------------------------------------------------------------------
def _check(weight: torch.Tensor, left: torch.Tensor, right: torch.Tensor) -> None:
    m, n = weight.shape
    if left.dim() != 2 or right.dim() != 2 or left.shape[0] != m or right.shape[0] != n \
            or left.shape[1] != right.shape[1]:
        raise ValueError(f"low-rank update of a {m}×{n} weight needs left m×k and right n×k, "
                         f"got {tuple(left.shape)} and {tuple(right.shape)}")


def _use_triton(backend: str, weight: torch.Tensor) -> bool:
    return backend == "triton" and weight.dtype != torch.float64


def apply_correction_(weight: torch.Tensor, left: torch.Tensor, right: torch.Tensor, *,
                      backend: str = "torch") -> torch.Tensor:
    """W ← W + left @ rightᵀ in place; ``backend`` is a resolved name (``resolve_backend``).

    weight: (m, n) fp32/fp16/bf16/fp64, any strides; left: (m, k); right: (n, k), any float dtype.
    """
    _check(weight, left, right)
    if _use_triton(backend, weight):
        return _bump_version(apply_correction_triton_(weight, left, right))
    return apply_correction_torch_(weight, left, right)


def write_restrained_(weight: torch.Tensor, w0: torch.Tensor, left: torch.Tensor, right: torch.Tensor,
                      dense: torch.Tensor | None = None, *, backend: str = "torch") -> torch.Tensor:
    """W ← W0 + dense + left @ rightᵀ (rounded once); shapes as in :func:`apply_correction_`."""
    _check(weight, left, right)
    if _use_triton(backend, weight):
        return _bump_version(write_restrained_triton_(weight, w0, left, right, dense))
    return write_restrained_torch_(weight, w0, left, right, dense)


def _bump_version(weight: torch.Tensor) -> torch.Tensor:
    """A kernel's write is invisible to autograd; count it as the in-place change it is (the torch
    versions bump the version counter themselves)."""
    increment_version(weight)
    return weight
