"""Shared cases for the kernel tests: odd shapes, both stride orders, dtype tolerances, NaN poison.

Every kernel runs under Triton's interpreter on CPU tensors when no GPU is present (conftest sets
TRITON_INTERPRET=1 first), so shapes stay small. Outputs a kernel allocates are poisoned: while the
``poison_empty`` fixture is active, every floating ``torch.empty``/``torch.empty_like`` is filled
with NaN, so an element the kernel never writes fails the comparison.
"""
from __future__ import annotations

import pytest
import torch

from prune_fast.kernels.dispatch import triton_available, triton_interpreting

SHAPES = [(1, 1), (17, 33), (130, 70)]
SHAPE_IDS = [f"{m}x{n}" for m, n in SHAPES]
LAYOUTS = ["row", "col"]
DTYPES = [torch.float32, torch.float16, torch.bfloat16]
DTYPE_IDS = ["fp32", "fp16", "bf16"]
# Relative error of one rounding to the dtype (a bound: half an ulp is half of this).
ROUNDING = {torch.float32: 2.0 ** -23, torch.float16: 2.0 ** -10, torch.bfloat16: 2.0 ** -7}
# Relative error allowed for fp32 accumulation, against the sum of |terms|.
ACCUMULATION = 64 * torch.finfo(torch.float32).eps

requires_triton = pytest.mark.skipif(
    not triton_available() or not (torch.cuda.is_available() or triton_interpreting()),
    reason="Triton kernels need triton and a CUDA GPU or TRITON_INTERPRET=1",
)
requires_gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (compiled Triton / CUDA)")

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")


def layout(t: torch.Tensor, order: str) -> torch.Tensor:
    """The same values stored row-major (``"row"``) or column-major (``"col"``, a transposed view)."""
    return t.contiguous() if order == "row" else t.T.contiguous().T


def randn(*shape: int, g: torch.Generator, dtype: torch.dtype = torch.float32, order: str = "row") -> torch.Tensor:
    return layout(torch.randn(*shape, generator=g, dtype=torch.float64), order).to(dtype).to(DEVICE)


def assert_within(got: torch.Tensor, want: torch.Tensor, bound: torch.Tensor | float, what: str) -> None:
    """|got − want| ≤ bound elementwise (NaN fails); the message says where and by how much."""
    got64 = got.detach().to("cpu", torch.float64)
    want64 = want.detach().to("cpu", torch.float64)
    bound = torch.as_tensor(bound, dtype=torch.float64).to("cpu").expand_as(want64)
    err = (got64 - want64).abs()
    bad = ~(err <= bound)
    if bool(bad.any()):
        idx = tuple(int(i) for i in bad.nonzero()[0])
        worst = float(torch.nan_to_num(err / bound.clamp_min(1e-300), nan=float("inf")).max())
        raise AssertionError(
            f"{what}: {int(bad.sum())} of {bad.numel()} elements out of tolerance; first at {idx}: "
            f"got {float(got64[idx]):.8g}, want {float(want64[idx]):.8g}, bound {float(bound[idx]):.3g}; "
            f"worst error/bound {worst:.3g}"
        )
