"""spectral/accumulated_delta.py: the factored Δ against the float64 sum of its updates."""
from __future__ import annotations

import dataclasses

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


def _dense_delta_with_spectrum(m: int, n: int, values: torch.Tensor, rng: torch.Generator) -> AccumulatedDelta:
    a, _ = torch.linalg.qr(torch.randn(m, values.numel(), dtype=torch.float64, generator=rng))
    b, _ = torch.linalg.qr(torch.randn(n, values.numel(), dtype=torch.float64, generator=rng))
    delta = AccumulatedDelta(m, n, torch.float32, torch.device("cpu"))
    delta.dense = ((a * values) @ b.T).float()
    return delta


def _count_routes(monkeypatch) -> dict[str, int]:
    import prune_fast.spectral.accumulated_delta as mod

    calls = {"krylov": 0, "direct": 0}
    real_topk, real_direct = mod.topk_svd, mod.direct_triplets

    def topk(*a, **k):
        calls["krylov"] += 1
        return real_topk(*a, **k)

    def direct(*a, **k):
        calls["direct"] += 1
        return real_direct(*a, **k)

    monkeypatch.setattr(mod, "topk_svd", topk)
    monkeypatch.setattr(mod, "direct_triplets", direct)
    return calls


def test_dense_delta_goes_direct_after_a_krylov_solve_that_ended_in_the_full_solve(rng, monkeypatch):
    """30 values above τ over a tail hugging it (0.5–0.99 τ), 200×300: the Krylov solve cannot
    certify the tail cheaply and ends in the dense solve; the next solve (one more edit) skips the
    Krylov steps. Both return exactly the float64 SVD's values above τ; a snapshot taken before the
    first solve restores the Krylov route."""
    m, n, tau = 200, 300, 1.0
    above = 1.05 + 2 * torch.rand(30, dtype=torch.float64, generator=rng)
    tail = 0.5 + 0.49 * torch.rand(170, dtype=torch.float64, generator=rng)
    delta = _dense_delta_with_spectrum(m, n, torch.cat([above, tail]).sort(descending=True).values, rng)
    calls = _count_routes(monkeypatch)
    snap = delta.snapshot()
    for step in range(2):
        want = torch.linalg.svdvals(delta.dense.double())
        t = delta.triplets_above(tau)
        k = int((want >= tau).sum())
        assert t.s.numel() == k and t.certificate == "exact"
        torch.testing.assert_close(t.s, want[:k], rtol=1e-5, atol=0)
        # (the first solve's own dense solve happens inside topk_svd, not counted here)
        assert calls == ({"krylov": 1, "direct": 0} if step == 0 else {"krylov": 1, "direct": 1}), calls
        delta.append_(0.3 * torch.randn(m, 1, generator=rng) / m ** 0.5, torch.randn(n, 1, generator=rng) / n ** 0.5)
    delta.restore(snap)
    delta.triplets_above(tau)
    assert calls == {"krylov": 2, "direct": 1}


def test_factored_core_goes_direct_after_a_krylov_solve_that_ended_in_the_full_solve(rng, monkeypatch):
    """The factored form's r×r core (500×700 Δ of rank 200: 30 values above τ over a tail hugging it):
    the first solve runs Krylov on the core and ends in the dense solve, the next (one more edit) goes
    straight to it. Both return the float64 SVD's values above τ of the float64 sum of the updates, and
    the left/right vectors reproduce Δ's rank-k part."""
    m, n, tau = 500, 700, 1.0
    above = 1.05 + 2 * torch.rand(30, dtype=torch.float64, generator=rng)
    tail = 0.5 + 0.49 * torch.rand(170, dtype=torch.float64, generator=rng)
    values = torch.cat([above, tail]).sort(descending=True).values
    a, _ = torch.linalg.qr(torch.randn(m, 200, dtype=torch.float64, generator=rng))
    b, _ = torch.linalg.qr(torch.randn(n, 200, dtype=torch.float64, generator=rng))
    delta = AccumulatedDelta(m, n, torch.float32, torch.device("cpu"))
    u0, v0 = (a * values).float(), b.float()
    delta.append_(u0, v0)
    want = u0.double() @ v0.double().T
    assert delta.rank == 200
    calls = _count_routes(monkeypatch)
    for step in range(2):
        sv = torch.linalg.svdvals(want)
        t = delta.triplets_above(tau)
        k = int((sv >= tau).sum())
        assert t.s.numel() == k and t.certificate == "exact"
        torch.testing.assert_close(t.s, sv[:k], rtol=1e-5, atol=0)
        ref_u, ref_s, ref_vh = torch.linalg.svd(want, full_matrices=False)
        rank_k = (ref_u[:, :k] * ref_s[:k]) @ ref_vh[:k]
        got = (t.u.double() * t.s) @ t.v.double().T
        assert float((got - rank_k).abs().max()) <= 1e-5 * float(rank_k.abs().max())
        assert calls == ({"krylov": 1, "direct": 0} if step == 0 else {"krylov": 1, "direct": 1}), calls
        u, v = 0.3 * torch.randn(m, 1, generator=rng) / m ** 0.5, torch.randn(n, 1, generator=rng) / n ** 0.5
        delta.append_(u, v)
        want += u.double() @ v.double().T
    assert delta.rank == 202


def test_exact_endings_with_few_values_above(rng, monkeypatch):
    """Three values above τ over a tail hugging it (0.9–0.99 τ): every Krylov solve ends in the dense
    solve ("exact"), with fewer than an eighth of the short side above τ. One such ending is not
    enough to leave Krylov; two in a row send the next eight solves straight to the dense solve, then
    Krylov is tried again (and, ending exact once more, hands back to eight dense solves). Every
    solve gives the float64 values; a snapshot restores the route with Δ."""
    m, n, tau = 400, 600, 1.0
    values = torch.cat([torch.tensor([3.0, 2.0, 1.5], dtype=torch.float64),
                        0.9 + 0.09 * torch.rand(397, dtype=torch.float64, generator=rng)]).sort(descending=True).values
    delta = _dense_delta_with_spectrum(m, n, values, rng)
    calls = _count_routes(monkeypatch)
    routes, snap = [], None
    for step in range(12):
        if step == 2:
            snap = delta.snapshot()
        before = dict(calls)
        t = delta.triplets_above(tau)
        routes.append("krylov" if calls["krylov"] > before["krylov"] else "direct")
        sv = torch.linalg.svdvals(delta.dense.double())
        k = int((sv >= tau).sum())
        assert t.certificate == "exact" and t.s.numel() == k and 3 <= k < m // 8
        torch.testing.assert_close(t.s, sv[:k], rtol=1e-5, atol=0)
        delta.append_(1e-3 * torch.randn(m, 1, generator=rng), torch.randn(n, 1, generator=rng) / n ** 0.5)
    assert routes == ["krylov"] * 2 + ["direct"] * 8 + ["krylov", "direct"], routes
    delta.restore(snap)  # taken after two exact endings: the dense solve comes next
    before = dict(calls)
    delta.triplets_above(tau)
    assert calls["direct"] == before["direct"] + 1 and calls["krylov"] == before["krylov"]


def test_an_isolated_exact_ending_keeps_krylov(monkeypatch):
    """A Krylov solve that ends exact between ones that do not (the tracker bench's large core now and
    then) never switches the route: only two exact endings in a row do."""
    import prune_fast.spectral.accumulated_delta as mod

    values = torch.cat([torch.tensor([3.0, 2.0, 1.5], dtype=torch.float64),
                        torch.linspace(0.9, 0.1, 197, dtype=torch.float64)])
    delta = _dense_delta_with_spectrum(300, 200, values, torch.Generator().manual_seed(0))
    endings = iter(["randomized", "exact", "frobenius", "exact", "randomized", "exact", "exact", "randomized"])
    routes = []
    real_direct = mod.direct_triplets

    def topk(a, threshold, **_):
        routes.append("krylov")
        t = real_direct(a, threshold)
        return dataclasses.replace(t, certificate=next(endings))

    def direct(a, threshold):
        routes.append("direct")
        return real_direct(a, threshold)

    monkeypatch.setattr(mod, "topk_svd", topk)
    monkeypatch.setattr(mod, "direct_triplets", direct)
    for _ in range(8):
        delta.triplets_above(1.0)
    assert routes == ["krylov"] * 7 + ["direct"], routes


def test_dense_delta_with_a_far_tail_stays_on_krylov(rng, monkeypatch):
    """Three values above τ and a tail at ≤ 0.1 τ: certified cheaply (not "exact"), so every solve
    stays on the Krylov route."""
    m, n, tau = 200, 300, 1.0
    values = torch.cat([torch.tensor([3.0, 2.0, 1.5], dtype=torch.float64),
                        0.1 * torch.rand(197, dtype=torch.float64, generator=rng)]).sort(descending=True).values
    delta = _dense_delta_with_spectrum(m, n, values, rng)
    calls = _count_routes(monkeypatch)
    for _ in range(2):
        t = delta.triplets_above(tau)
        assert t.s.numel() == 3 and t.certificate != "exact"
        delta.append_(0.01 * torch.randn(m, 1, generator=rng), torch.randn(n, 1, generator=rng) / n ** 0.5)
    assert calls == {"krylov": 2, "direct": 0}
