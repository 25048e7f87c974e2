"""spectral/accumulated_delta.py: the factored Δ against the float64 sum of its updates."""
from __future__ import annotations

import pytest
import torch

from prune_fast.spectral.accumulated_delta import AccumulatedDelta


def _subspace_ok(u: torch.Tensor, ref: torch.Tensor, tol: float) -> None:
    """u spans ref's columns: |det(uᵀ ref)| = 1 (sign- and rotation-invariant)."""
    d = float(torch.linalg.det(u.double().T @ ref.double()).abs())
    assert abs(d - 1) < tol, f"subspace mismatch: |det| = {d:.8f}"


@pytest.mark.parametrize("shape", [(1, 1), (17, 33), (130, 70)], ids=["1x1", "17x33", "130x70"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["fp32", "fp64"])
def test_appends_match_the_dense_sum_and_its_spectrum(shape, dtype, rng):
    m, n = shape
    tol = 1e-5 if dtype == torch.float32 else 1e-12
    delta = AccumulatedDelta(m, n, dtype, torch.device("cpu"))
    want = torch.zeros(m, n, dtype=torch.float64)
    for r in (1, 2, 1, 3):
        u = torch.randn(m, r, dtype=torch.float64, generator=rng)
        v = torch.randn(n, r, dtype=torch.float64, generator=rng)
        delta.append_(u.to(dtype), v.to(dtype))
        want += u.to(dtype).double() @ v.to(dtype).double().T
    got = delta.dense_delta().double()
    scale = float(want.abs().max())
    assert float((got - want).abs().max()) <= tol * scale * max(m, n)
    assert delta.frobenius_sq() == pytest.approx(float((want ** 2).sum()), rel=10 * tol)
    sv = torch.linalg.svdvals(want)
    k = min(3, sv.numel())  # the top three values: a threshold halfway to the fourth, so rounding cannot move it
    threshold = float((sv[k - 1] + sv[k]) / 2) if k < sv.numel() else float(sv[-1]) / 2
    t = delta.triplets_above(threshold)
    assert t.s.numel() == k
    assert torch.allclose(t.s, sv[:k], rtol=10 * tol, atol=0)
    ref_u, _, ref_vh = torch.linalg.svd(want)
    if k < min(m, n) and (k == 0 or float(sv[k - 1] - sv[k]) > 1e-3 * float(sv[0])):  # a separated subspace
        _subspace_ok(t.u, ref_u[:, :k], 1e3 * tol)
        _subspace_ok(t.v, ref_vh[:k].T, 1e3 * tol)


def test_state_round_trip_and_snapshot_restore(rng):
    m, n = 40, 25
    delta = AccumulatedDelta(m, n, torch.float32, torch.device("cpu"))
    delta.append_(torch.randn(m, 2, generator=rng), torch.randn(n, 2, generator=rng))
    snap = delta.snapshot()
    before = delta.dense_delta()
    delta.append_(torch.randn(m, 1, generator=rng), torch.randn(n, 1, generator=rng))
    delta.restore(snap)
    assert torch.equal(delta.dense_delta(), before)
    back = AccumulatedDelta.from_state_tensors(m, n, torch.float32, torch.device("cpu"), delta.state_tensors())
    assert torch.equal(back.dense_delta(), before) and back.rank == delta.rank


def test_becomes_dense_when_factors_outweigh_it(rng):
    m, n = 6, 5
    delta = AccumulatedDelta(m, n, torch.float64, torch.device("cpu"))
    want = torch.zeros(m, n, dtype=torch.float64)
    for _ in range(6):
        u, v = torch.randn(m, 1, dtype=torch.float64, generator=rng), torch.randn(n, 1, dtype=torch.float64, generator=rng)
        delta.append_(u, v)
        want += u @ v.T
    assert delta.is_dense and delta.rank is None
    assert torch.allclose(delta.dense_delta(), want, rtol=0, atol=1e-12 * float(want.abs().max()))
