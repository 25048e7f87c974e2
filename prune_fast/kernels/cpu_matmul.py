"""``A @ X`` for a large ``A`` and a skinny ``X`` on the CPU, through the fastest exact route.

Every pass of the Krylov solver and of the tracker is such a product, and on the CPU the BLAS
torch calls for ``A @ X`` (MKL sgemm) is far from the memory-bandwidth limit for these shapes:
at 1600×6400 with 16 columns, one thread, sgemm takes 5.8 ms, oneDNN's fp32 inner-product kernel
(the one behind ``torch.ops.mkldnn._linear_pointwise``) 3.2 ms, with the same float32 accuracy
(true fp32, no bf16 down-conversion: relative error vs float64 ~5e-7 for both). So fp32 products
with a large ``A`` go to oneDNN when this torch build has it, and otherwise to sgemm, written as
``(Xᵀ Aᵀ)ᵀ`` for 2–11 columns, the form sgemm runs fastest (1.5–3× faster than ``A @ X`` there).
Those figures are an AVX-512 Xeon's; on an AVX2-only CPU (an AMD EPYC measured) sgemm beats oneDNN
at multiples of 16 columns, which there go to sgemm (``_sgemm_for_full_blocks``).

float64 products (the tracker's r×r core, the exact solve) run as ``(Xᵀ Aᵀ)ᵀ`` from 2 columns: dgemm
is slow when A is column-major (a transposed view) and, on the AMD EPYC, with row-major A too:
a 960×960 core sliced from its buffer, 16 columns, 1.22 ms as ``A @ X`` against 0.65 ms, and
``Aᵀ @ X`` 2.78 against 0.63 ms (2 columns: 4.4 against 0.27 ms); never slower from 2 to 400
columns. One column is a matrix-vector product either way.

Everything else (CUDA, small matrices, other dtypes) is plain ``A @ X``.

Example::

    y = skinny_matmul_cpu(w0, omega)        # == w0 @ omega
"""
from __future__ import annotations

import functools

import torch

__all__ = ["skinny_matmul_cpu"]

# Below this many entries of A the call overhead decides, not the kernel.
_MIN_ELEMENTS = 1 << 16


# Column counts at which MKL's sgemm runs its full-width kernels (see ``_sgemm_for_full_blocks``).
_SGEMM_BLOCK = 16


@functools.cache
def _sgemm_for_full_blocks() -> bool:
    """Whether ``A @ X`` with a multiple of 16 columns goes to sgemm rather than oneDNN: on CPUs whose
    best instruction set torch uses is AVX2. Measured on an AMD EPYC (Zen 2, AVX2), 1600×6400 fp32,
    two threads: 16 columns 3.8 against 4.3 ms (A) and 4.6 against 6.7 ms (Aᵀ), 64 columns 10.2
    against 12.1 and 10.6 against 14.6 ms; with other counts sgemm is slower there (8 columns: 6.7
    against 3.2 ms). On the AVX-512 Xeon oneDNN was the faster one at 16 columns (3.2 against 5.8 ms,
    one thread). Fixed per machine, so the same inputs always take the same route (bit-identical
    results)."""
    return torch.backends.cpu.get_cpu_capability() == "AVX2"


@functools.cache
def _onednn_linear():
    """oneDNN's fp32 linear (``input @ weightᵀ``), if this build has it and it agrees with sgemm."""
    op = getattr(getattr(torch.ops, "mkldnn", None), "_linear_pointwise", None)
    if op is None or not torch.backends.mkldnn.is_available():
        return None
    try:
        g = torch.Generator().manual_seed(0)
        a = torch.randn(37, 300, generator=g)
        x = torch.randn(3, 300, generator=g)
        got = op(x, a, None, "none", [], "")
        want = (x.double() @ a.double().T)
        if got.shape != want.shape or not torch.allclose(got.double(), want, rtol=1e-5, atol=1e-4):
            return None
    except (RuntimeError, TypeError):  # an op that exists but does not take these arguments
        return None
    return op


def skinny_matmul_cpu(a: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """``a @ x`` (a: m×n, any strides; x: n×b), fastest exact route on the CPU for fp32 and float64."""
    if a.device.type != "cpu" or a.dtype != x.dtype or a.numel() < _MIN_ELEMENTS:
        return a @ x
    if a.dtype == torch.float64:
        return (x.mT @ a.mT).mT if x.shape[1] >= 2 else a @ x
    if a.dtype != torch.float32:
        return a @ x
    if x.shape[1] % _SGEMM_BLOCK == 0 and _sgemm_for_full_blocks():
        return a @ x
    op = _onednn_linear()
    # Only a dense matrix or its transpose: for a column slice of a wider buffer oneDNN reorders
    # the weight on every call (175 ms instead of 0.5 ms for a 6400×80 slice, measured).
    if op is not None and (a.is_contiguous() or a.mT.is_contiguous()):
        # linear(input, weight) = input @ weightᵀ, so (xᵀ aᵀ)ᵀ with weight = a.
        return op(x.mT.contiguous(), a, None, "none", [], "").mT
    if 2 <= x.shape[1] < 12:
        return (x.mT @ a.mT).mT
    return a @ x
