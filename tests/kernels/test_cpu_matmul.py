"""``skinny_matmul_cpu``: every route (sgemm, (Xᵀ Aᵀ)ᵀ, oneDNN; full 16-column blocks to sgemm or not;
float64's (Xᵀ Aᵀ)ᵀ) gives ``A @ X`` to its dtype's accuracy against float64, whatever the machine
would pick."""
from __future__ import annotations

import pytest
import torch

from kernel_cases import ACCUMULATION, assert_within
from prune_fast.kernels import cpu_matmul


def _operands(kind: str, cols: int, dtype: torch.dtype, rng: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """A (one of the layouts the solvers pass: a weight, Δᵀ, a basis slice, a core slice) and X (n×cols)."""
    if kind == "row-major":
        a = torch.randn(300, 400, generator=rng, dtype=dtype)
    elif kind == "transposed":  # Δᵀ of a row-major Δ
        a = torch.randn(400, 300, generator=rng, dtype=dtype).T
    elif kind == "basis-slice":  # columns of a Krylov basis buffer (neither it nor its transpose contiguous)
        a = torch.randn(500, 260, generator=rng, dtype=dtype)[:, :200]
    else:  # the transpose of such a slice: basisᵀ @ x in the projections
        a = torch.randn(500, 260, generator=rng, dtype=dtype)[:, :200].T
    x = torch.randn(a.shape[1], cols, generator=rng, dtype=dtype)
    # Extreme but representable entries in one column: a route that rescales or drops them shows.
    x[:, -1] *= 2.0 ** 60
    return a, x


@pytest.mark.usefixtures("poison_empty")
@pytest.mark.parametrize("onednn", [True, False], ids=["onednn", "no-onednn"])
@pytest.mark.parametrize("sgemm_blocks", [True, False], ids=["sgemm-16", "onednn-16"])
@pytest.mark.parametrize("cols", [1, 2, 8, 9, 15, 16, 32, 48])
@pytest.mark.parametrize("kind", ["row-major", "transposed", "basis-slice", "basis-slice-T"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["fp32", "fp64"])
def test_every_route_matches_float64(dtype, kind, cols, sgemm_blocks, onednn, monkeypatch, rng):
    if onednn and cpu_matmul._onednn_linear() is None:
        pytest.skip("this torch build has no oneDNN linear")
    if not onednn:
        monkeypatch.setattr(cpu_matmul, "_onednn_linear", lambda: None)
    monkeypatch.setattr(cpu_matmul, "_sgemm_for_full_blocks", lambda: sgemm_blocks)
    a, x = _operands(kind, cols, dtype, rng)
    got = cpu_matmul.skinny_matmul_cpu(a, x)
    want = a.double() @ x.double()
    assert got.dtype == dtype and got.shape == want.shape
    # fp32: 64 ulp of the absolute products; float64 (the reference is float64 too): both sides'
    # worst-case accumulation, 2·n ulp.
    unit = ACCUMULATION if dtype == torch.float32 else 2 * a.shape[1] * torch.finfo(torch.float64).eps
    assert_within(got, want, unit * (a.double().abs() @ x.double().abs()), f"{kind}, {cols} columns")


def test_full_block_route_is_fixed_per_machine():
    """The choice reads only the CPU's instruction set (no timing), so it cannot flip between calls."""
    want = torch.backends.cpu.get_cpu_capability() == "AVX2"
    assert cpu_matmul._sgemm_for_full_blocks() is want
    assert cpu_matmul._sgemm_for_full_blocks() is want
