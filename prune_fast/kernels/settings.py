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

Every configuration :func:`launch_config` can return is listed by :func:`launch_space` (with one
problem size that yields it); ``prune_fast.kernels.aot`` compiles each of them for sm_80 and sm_90
and checks it against the per-block limits below, so a setting that runs under the interpreter but
cannot launch on a GPU fails CI instead of a user's first run.

Example::

    cfg = launch_config("low_rank_update", m=4096, n=11008, k=3)
    grid = (cdiv(4096, cfg.block_m), cdiv(11008, cfg.block_n))
"""
from __future__ import annotations

from dataclasses import dataclass

__all__ = ["LaunchConfig", "launch_config", "launch_space", "cdiv", "INPUT_PRECISION", "SHARED_MEMORY_LIMIT",
           "REGISTERS_PER_BLOCK", "OPERATIONS"]

# fp32 tl.dot operands would default to TF32 on NVIDIA GPUs (10-bit mantissa): a rank-k correction
# of size σ − F(σ) would then carry ~1e-3 relative error. "ieee" keeps true fp32 products.
INPUT_PRECISION = "ieee"

# Per-block limits of the GPUs the kernels are compiled for (compute capability → bytes of shared
# memory a block may use after opting in; A100: 163 KB, H100/H200: 227 KB) and the register file a
# block may fill (64 K 32-bit registers on both).
SHARED_MEMORY_LIMIT = {80: 163 * 1024, 90: 227 * 1024}
REGISTERS_PER_BLOCK = 64 * 1024

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
    input_precision: str = INPUT_PRECISION


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
        # A 64-wide reduction chunk with 32/64 output columns spilled up to 6.6 KB per thread on
        # sm_80 (aot table, ieee products); a 32-wide chunk spills ≤ 76 B and uses less shared memory.
        block_n = 64 if block_b == 16 else 32
        return LaunchConfig(block_m=64, block_n=block_n, block_b=block_b, split=split, num_warps=4)
    raise ValueError(f"no launch settings for operation {op!r}")


# Problem sizes that reach every branch of launch_config: each threshold, one past it, and the
# extremes (the closure test in tests/kernels/test_aot.py draws random sizes and checks that their
# configurations are all in launch_space, so a new branch without a probe here fails it).
def _probe_sizes(op: str) -> list[dict[str, int]]:
    # Typical LLM-sized, 16-aligned sizes come first, so that each configuration's representative
    # (the first size that yields it) is the size class the library mostly sees.
    if op == "low_rank_update":
        return [dict(m=4096, n=11008, k=k) for k in (3, 20, *range(1, 4 * 16 + 1))]
    if op == "skinny_matmul":
        ns = [c * _SPLIT_CHUNK + d for d in (0, 1) for c in range(1, _MAX_SPLIT + 2)] + [64, 1]
        bs = [16, 32, 64, *range(1, 2 * 64 + 2)]
        return [dict(m=m, n=n, b=b) for m in (4096, 16384, 640, 65, 1) for b in bs for n in ns]
    raise ValueError(f"no launch settings for operation {op!r}")


OPERATIONS = ("low_rank_update", "skinny_matmul")


def launch_space(op: str) -> list[tuple[dict[str, int], LaunchConfig]]:
    """Every distinct configuration ``launch_config(op, ...)`` returns, each with one size yielding it.

    Example::

        for sizes, cfg in launch_space("skinny_matmul"):
            assert launch_config("skinny_matmul", **sizes) == cfg
    """
    found: dict[LaunchConfig, dict[str, int]] = {}
    for sizes in _probe_sizes(op):
        found.setdefault(launch_config(op, **sizes), sizes)
    return [(sizes, cfg) for cfg, sizes in found.items()]
