"""Every Triton launch setting in one place: block sizes, warps, stages, split factors, precision.

Launchers ask :func:`launch_config` for their operation and problem size and never hard-code a
literal. The numbers are sound defaults, not tuned values: tuning per GPU belongs to the GPU issue
and is measured with ``bench/gpu_check.py``.

Operations and what their sizes mean:

- ``"low_rank_update"``: W (m×n) tiles of ``block_m × block_n``; the rank k is consumed in chunks of
  ``block_k`` (≥ 16, the smallest ``tl.dot`` operand Triton compiles).
- ``"skinny_matmul"``: out (m×b) = A (m×n) X (n×b) with a long reduction n; output tiles of
  ``block_m × block_b``, reduction chunks of ``block_n``, and ``split`` programs sharing the
  reduction (partial sums in an fp32 buffer, summed by torch) so that a short, wide output still
  fills the GPU.
- ``"jacobi_eigh"``: one program per k×k matrix padded to ``block_m`` (a power of two ≥ 16).

Example::

    cfg = launch_config("low_rank_update", m=4096, n=11008, k=3)
    grid = (cdiv(4096, cfg.block_m), cdiv(11008, cfg.block_n))
"""
from __future__ import annotations

from dataclasses import dataclass

__all__ = ["LaunchConfig", "launch_config", "cdiv", "INPUT_PRECISION", "JACOBI_MAX_K", "JACOBI_MAX_SWEEPS"]

# fp32 tl.dot operands would default to TF32 on NVIDIA GPUs (10-bit mantissa): a rank-k correction
# of size σ − F(σ) would then carry ~1e-3 relative error. "ieee" keeps true fp32 products.
INPUT_PRECISION = "ieee"

# Largest matrix the one-program Jacobi eigensolver takes (it lives in registers); larger ones go
# to torch.linalg.eigh.
JACOBI_MAX_K = 64
# Cyclic sweeps allowed; Jacobi converges quadratically, 6-10 sweeps are typical in fp32.
JACOBI_MAX_SWEEPS = 15

# Products with reductions longer than this are split across programs.
_SPLIT_CHUNK = 1024
_MAX_SPLIT = 32


@dataclass(frozen=True)
class LaunchConfig:
    """Tile sizes and launch parameters of one kernel call (unused fields stay at 1)."""

    block_m: int
    block_n: int
    block_k: int = 16
    block_b: int = 16
    split: int = 1
    num_warps: int = 4
    num_stages: int = 2


def cdiv(a: int, b: int) -> int:
    """⌈a / b⌉ for non-negative ints (the grid helper; avoids importing triton at launch sites)."""
    return -(-a // b)


def _pow2_at_least(x: int, floor: int) -> int:
    p = floor
    while p < x:
        p *= 2
    return p


def launch_config(op: str, *, m: int, n: int, k: int = 0, b: int = 0) -> LaunchConfig:
    """The launch settings for operation ``op`` on a problem of the given sizes (see module doc)."""
    if op == "low_rank_update":
        # k is tiny in practice (1-10); a 64×64 tile reads/writes 16-32 KB of W per program.
        return LaunchConfig(block_m=64, block_n=64, block_k=16 if k <= 16 else 32, num_warps=4)
    if op == "skinny_matmul":
        block_b = _pow2_at_least(min(b, 64), 16)
        tiles = cdiv(m, 64) * cdiv(b, block_b)
        split = 1
        if n > _SPLIT_CHUNK and tiles < 128:
            split = min(_MAX_SPLIT, cdiv(n, _SPLIT_CHUNK), max(1, 256 // tiles))
        return LaunchConfig(block_m=64, block_n=64, block_b=block_b, split=split, num_warps=4)
    if op == "jacobi_eigh":
        if m > JACOBI_MAX_K:
            raise ValueError(f"jacobi_eigh takes matrices up to {JACOBI_MAX_K}×{JACOBI_MAX_K}, got {m}×{m}")
        block = _pow2_at_least(m, 16)
        return LaunchConfig(block_m=block, block_n=block, num_warps=4 if block <= 32 else 8, num_stages=1)
    raise ValueError(f"no launch settings for operation {op!r}")
