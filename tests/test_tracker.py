"""SpectralTracker: no compounding, no drift, exact resume — against float64 references."""
from __future__ import annotations

import pytest
import torch

import prune_fast
from prune_fast import SpectralTracker
from prune_fast.errors import InvalidInputError
from prune_fast.spectral.reference import restrain_reference
from prune_fast.updates import FactoredUpdate, TrackerSet
from spectral_cases import make_w0, rel_err


def _edits(m, n, count, g, scale, rank=1):
    """Random raw updates whose sum grows well past σ* (like sequential ROME edits)."""
    return [(scale * torch.randn(m, rank, generator=g, dtype=torch.float64) / m ** 0.5,
             torch.randn(n, rank, generator=g, dtype=torch.float64) / n ** 0.25) for _ in range(count)]


def _raw_sum(edits, m, n):
    d = torch.zeros(m, n, dtype=torch.float64)
    for u, v in edits:
        d += u @ v.T
    return d


def _feed(tracker, edits):
    """Hand every edit to the tracker in fp32; return the exact float64 sum of what it was given."""
    for u, v in edits:
        tracker.add_(u.float(), v.float())
    m, n = tracker.weight.shape
    return _raw_sum([(u.float().double(), v.float().double()) for u, v in edits], m, n)


def _lowrank_reference(w0, edits, sigma_star, fn="log"):
    """Exact float64 restraint of W0 + Σ u vᵀ through QR of the stacked factors (independent code)."""
    u = torch.cat([e[0] for e in edits], 1)
    v = torch.cat([e[1] for e in edits], 1)
    qu, ru = torch.linalg.qr(u)
    qv, rv = torch.linalg.qr(v)
    p, s, ht = torch.linalg.svd(ru @ rv.T)
    from prune_fast.spectral.restraint_fn import resolve_fn
    s_new = resolve_fn(fn)(s, sigma_star)
    return w0 + (qu @ p * s_new) @ (qv @ ht.T).T


@pytest.mark.parametrize("shape", [(64, 48), (48, 200), (200, 150)], ids=lambda s: f"{s[0]}x{s[1]}")
def test_500_rank1_edits_equal_one_reference_restraint(shape, rng):
    m, n = shape
    w0 = make_w0(m, n, rng).float()
    weight = w0.clone()
    tr = SpectralTracker(weight)
    edits = _edits(m, n, 500, rng, scale=0.6)
    d = _feed(tr, edits)
    want, info = restrain_reference(w0.double(), d)
    assert info["n_restrained"] > 0, "the test must cross σ*"
    assert rel_err(weight, want) <= 1e-5, rel_err(weight, want)
    assert abs(tr.sigma_star - info["sigma_star"]) <= 1e-5 * info["sigma_star"]
    assert rel_err(tr.delta(), d) <= 1e-5


@pytest.mark.parametrize("fn", ["log", "log1.2", "linear"])
def test_online_and_at_end_give_the_same_weight(fn, rng):
    """No compounding: F acts on the raw Δ, so the restraint schedule does not change the result."""
    m, n = 90, 60
    w0 = make_w0(m, n, rng).float()
    edits = _edits(m, n, 120, rng, scale=0.8)
    weights = {}
    for every in (1, 7, None):
        w = w0.clone()
        tr = SpectralTracker(w, fn=fn, restrain_every=every)
        for u, v in edits:
            tr.add_(u.float(), v.float())
        tr.restrain_()
        weights[every] = w
    d = _raw_sum([(u.float().double(), v.float().double()) for u, v in edits], m, n)
    want, info = restrain_reference(w0.double(), d, fn=fn)
    assert info["n_restrained"] > 0
    for every, w in weights.items():
        assert rel_err(w, want) <= 1e-5, (every, rel_err(w, want))


def test_between_restraints_raw_updates_are_added(rng):
    m, n = 40, 30
    w0 = make_w0(m, n, rng).float()
    w = w0.clone()
    tr = SpectralTracker(w, restrain_every=5)
    edits = _edits(m, n, 7, rng, scale=1.5)
    d5 = _feed(tr, edits[:5])
    after5 = w.double().clone()
    want5, _ = restrain_reference(w0.double(), d5)
    assert rel_err(after5, want5) <= 1e-5
    for u, v in edits[5:]:
        assert tr.add_(u.float(), v.float()) is None
    raw = sum(u.float().double() @ v.float().double().T for u, v in edits[5:])
    assert rel_err(w, after5 + raw) <= 1e-5


def test_unrestrained_tracker_holds_w0_plus_delta(rng):
    m, n = 50, 20
    w0 = make_w0(m, n, rng).float()
    w = w0.clone()
    tr = SpectralTracker(w, restrain_every=None)
    edits = _edits(m, n, 40, rng, scale=1.0, rank=2)
    want = w0.double() + _feed(tr, edits)
    assert rel_err(w, want) <= 1e-6


@pytest.mark.parametrize("dtype,tol", [(torch.float16, 1e-3), (torch.bfloat16, 8e-3)], ids=["fp16", "bf16"])
def test_half_weights_do_not_drift(dtype, tol, rng):
    m, n = 80, 64
    w0 = make_w0(m, n, rng).to(dtype)
    w = w0.clone()
    tr = SpectralTracker(w, refresh_every=1000)  # no refresh: the fp32 shadow alone must prevent drift
    edits = _edits(m, n, 300, rng, scale=0.5)
    d = _feed(tr, edits)
    want, info = restrain_reference(w0.double(), d)
    assert w.dtype == dtype and info["n_restrained"] > 0
    # Only the final rounding to the half type: half an ulp per element.
    assert rel_err(w, want) <= tol, rel_err(w, want)


def test_multi_column_updates_and_transposed_layout(rng):
    """MEMIT-style rank-b updates on a Conv1D-style (in×out) weight viewed as stored."""
    m, n = 70, 110
    w0 = make_w0(n, m, rng).float().T.contiguous()  # stored in×out
    w = w0.clone()
    tr = SpectralTracker(w)
    edits = _edits(m, n, 30, rng, scale=1.2, rank=4)
    d = _feed(tr, edits)
    want, info = restrain_reference(w0.double(), d)
    assert info["n_restrained"] > 0
    assert rel_err(w, want) <= 1e-5


def test_gpt2_xl_shape_tracker(rng):
    m, n = 1600, 6400
    w0 = make_w0(m, n, rng, sigma_star=1.0).float()
    w = w0.clone()
    tr = SpectralTracker(w, sigma_star=1.0)
    edits = _edits(m, n, 40, rng, scale=3.0)
    for u, v in edits:
        tr.add_(u.float(), v.float())
    want = _lowrank_reference(w0.double(), [(u.float().double(), v.float().double()) for u, v in edits], 1.0)
    assert rel_err(w, want) <= 1e-5


def test_spectrum_reports_delta_and_weight(rng):
    m, n = 60, 45
    w0 = make_w0(m, n, rng).float()
    w = w0.clone()
    tr = SpectralTracker(w)
    edits = _edits(m, n, 60, rng, scale=1.0)
    d = _feed(tr, edits)
    rep = tr.spectrum()
    s = torch.linalg.svdvals(d)
    assert rep.n_above == int((s >= tr.sigma_star).sum()) > 0
    got = torch.tensor(rep.sigma_delta[: rep.n_above + 1], dtype=torch.float64)
    assert torch.allclose(got, s[: got.numel()], rtol=1e-5, atol=0)
    smax = float(torch.linalg.svdvals(w.double())[0])
    assert abs(rep.sigma_max_weight - smax) <= 1e-5 * smax
    assert rep.ratio == pytest.approx(smax / tr.sigma_star, rel=1e-5)
    sv = torch.linalg.svdvals(w.double())
    assert rep.cond_weight == pytest.approx(float(sv[0] / sv[-1]), rel=1e-6)


@pytest.mark.parametrize("shape", [(512, 128), (128, 512)], ids=["tall", "wide"])
def test_cond_is_reported_where_cheap_and_not_beyond(shape, rng):
    """cond(W) per spectrum for test-model-sized weights; None where it would need a full SVD."""
    m, n = shape
    w = make_w0(m, n, rng).float()
    tr = SpectralTracker(w)
    _feed(tr, _edits(m, n, 5, rng, scale=1.0))
    sv = torch.linalg.svdvals(w.double())
    assert tr.spectrum().cond_weight == pytest.approx(float(sv[0] / sv[-1]), rel=1e-6)
    big = SpectralTracker(make_w0(700, 300, rng).float())
    assert big.spectrum().cond_weight is None


def test_state_dict_resume_continues_exactly(rng):
    m, n = 70, 50
    w0 = make_w0(m, n, rng).float()
    edits = _edits(m, n, 160, rng, scale=0.8)
    w_a = w0.clone()
    tr_a = SpectralTracker(w_a, fn="log1.5")
    for u, v in edits[:80]:
        tr_a.add_(u.float(), v.float())
    state = tr_a.state_dict()
    w_b = torch.full_like(w0, float("nan"))  # the resumed weight is fully rewritten from the state
    tr_b = SpectralTracker.from_state_dict(w_b, state)
    assert rel_err(w_b, w_a.double()) <= 1e-6
    for u, v in edits[80:]:
        tr_a.add_(u.float(), v.float())
        tr_b.add_(u.float(), v.float())
    assert tr_b.n_edits == 160
    assert rel_err(w_b, w_a.double()) <= 1e-6


def test_state_dict_refuses_other_weights(rng):
    w = make_w0(20, 10, rng).float()
    tr = SpectralTracker(w)
    state = tr.state_dict()
    other = torch.zeros(10, 20)
    with pytest.raises(InvalidInputError, match="shape"):
        SpectralTracker.from_state_dict(other, state)
    assert torch.equal(other, torch.zeros(10, 20))
    with pytest.raises(InvalidInputError, match="format"):
        SpectralTracker.from_state_dict(w, {"w0": w})


BAD_FACTORS = {
    "u rows": lambda m, n: (torch.randn(m + 1, 1), torch.randn(n, 1)),
    "v rows": lambda m, n: (torch.randn(m, 1), torch.randn(n + 2, 1)),
    "rank mismatch": lambda m, n: (torch.randn(m, 2), torch.randn(n, 3)),
    "NaN in u": lambda m, n: (torch.full((m, 1), float("nan")), torch.randn(n, 1)),
    "Inf in v": lambda m, n: (torch.randn(m, 1), torch.full((n, 1), float("inf"))),
    "int u": lambda m, n: (torch.ones(m, 1, dtype=torch.int64), torch.randn(n, 1)),
    "3-D v": lambda m, n: (torch.randn(m, 1), torch.randn(1, n, 1)),
}


@pytest.mark.parametrize("case", list(BAD_FACTORS), ids=list(BAD_FACTORS))
def test_bad_factors_raise_before_writing(case, rng):
    m, n = 20, 12
    w = make_w0(m, n, rng).float()
    tr = SpectralTracker(w)
    tr.add_(torch.randn(m, 1), torch.randn(n, 1))
    before, n_edits = w.clone(), tr.n_edits
    with pytest.raises(InvalidInputError):
        tr.add_(*BAD_FACTORS[case](m, n))
    assert torch.equal(w, before) and tr.n_edits == n_edits


@pytest.mark.parametrize("kwargs", [{"restrain_every": 0}, {"refresh_every": 0}, {"alpha": 1.0},
                                    {"sigma_star": -2.0}, {"fn": "cube"}, {"state_dtype": torch.float16},
                                    {"state_dtype": "float64"}], ids=str)
def test_bad_options_raise_and_leave_weight(kwargs, rng):
    w = make_w0(20, 12, rng).float()
    before = w.clone()
    with pytest.raises(InvalidInputError):
        SpectralTracker(w, **kwargs)
    assert torch.equal(w, before)


def test_writes_behind_the_trackers_back_are_refused(rng):
    w = make_w0(20, 12, rng).float()
    tr = SpectralTracker(w)
    tr.add_(torch.randn(20, 1), torch.randn(12, 1))
    with torch.no_grad():
        w.add_(1.0)
    before = w.clone()
    with pytest.raises(InvalidInputError, match="outside"):
        tr.add_(torch.randn(20, 1), torch.randn(12, 1))
    assert torch.equal(w, before)


def test_repr_and_public_api():
    assert set(prune_fast.__all__) >= {"restrain_", "SpectralTracker", "RestrainResult", "SpectrumReport",
                                       "InvalidInputError", "PruneFastError"}
    tr = SpectralTracker(torch.eye(4) * 3)
    assert "σ*=3" in repr(tr)


def test_tracker_warns_once_when_delta_runs_away(rng, caplog):
    m, n = 60, 40
    tr = SpectralTracker(make_w0(m, n, rng).float())
    big = 1e6 * tr.sigma_star
    with caplog.at_level("WARNING", logger="prune_fast"):
        _feed(tr, _edits(m, n, 3, rng, scale=1.0))
        assert not caplog.records
        for _ in range(3):
            tr.add_(torch.randn(m, 1, generator=rng) * big / m ** 0.5, torch.randn(n, 1, generator=rng) / n ** 0.5)
    warned = [r for r in caplog.records if "rounding" in r.getMessage()]
    assert len(warned) == 1


def _runaway_edits(m, n, g, count=12, scale=1e6):
    """Rank-1 raw updates each ~scale·σ* (σ* = 1): MEND-style runaway, Δ far past σ*."""
    return [(scale * torch.randn(m, 1, generator=g, dtype=torch.float64) / m ** 0.5,
             torch.randn(n, 1, generator=g, dtype=torch.float64) / n ** 0.5) for _ in range(count)]


@pytest.mark.parametrize("online", [True, False], ids=["online", "at_end"])
def test_float64_state_keeps_runaway_edits_exact(online, rng, caplog):
    """With Δ ~1e6σ*, an fp32 state rounds Δ at ~0.1σ* (warned about); a float64 state gives the
    fp32 weight W0 + F(Δ) to fp32 rounding, online and at the end, and does not warn."""
    m, n = 60, 90
    w0 = make_w0(m, n, rng).float()
    edits = _runaway_edits(m, n, rng)
    w = w0.clone()
    tr = SpectralTracker(w, fn="log", state_dtype=torch.float64, restrain_every=1 if online else None)
    assert tr._shadow is not None and tr._shadow.dtype == torch.float64 and w.dtype == torch.float32
    with caplog.at_level("WARNING", logger="prune_fast"):
        for u, v in edits:
            tr.add_(u, v)
        if not online:
            tr.restrain_()
    assert not [r for r in caplog.records if "rounding" in r.getMessage()]
    want, info = restrain_reference(w0, _raw_sum(edits, m, n), fn="log", sigma_star=tr.sigma_star)
    assert info["n_restrained"] >= 10 and float(info["sigma"][0]) > 1e6 * tr.sigma_star
    err = float((w.double() - want).abs().max())
    assert err <= 4 * torch.finfo(torch.float32).eps * float(want.abs().max()), err
    # resume keeps the float64 state
    state = tr.state_dict()
    assert state["meta"]["state_dtype"] == "torch.float64" and state["qa"].dtype == torch.float64
    w_b = torch.full_like(w0, float("nan"))
    tr_b = SpectralTracker.from_state_dict(w_b, state)
    assert tr_b._acc == torch.float64
    assert float((w_b.double() - want).abs().max()) <= 4 * torch.finfo(torch.float32).eps * float(want.abs().max())


def test_states_written_before_state_dtype_existed_resume_in_fp32(rng):
    m, n = 30, 20
    w = make_w0(m, n, rng).float()
    tr = SpectralTracker(w)
    _feed(tr, _edits(m, n, 5, rng, scale=2.0))
    state = tr.state_dict()
    del state["meta"]["state_dtype"]
    w_b = torch.empty_like(w)
    tr_b = SpectralTracker.from_state_dict(w_b, state)
    assert tr_b._acc == torch.float32 and rel_err(w_b, w.double()) <= 1e-6
    state["meta"]["state_dtype"] = "torch.int8"
    with pytest.raises(InvalidInputError, match="unknown state_dtype"):
        SpectralTracker.from_state_dict(torch.empty_like(w), state)
    with pytest.raises(InvalidInputError, match="float64 weight"):
        SpectralTracker(w.double(), state_dtype=torch.float32)


def test_float64_state_on_the_krylov_path_of_the_core(rng):
    """Δ of rank 90 (beyond the direct-solve size) with 8 runaway directions among small edits:
    the factored core goes through block Krylov, which a float64 state must run to float64 accuracy."""
    m, n = 200, 300  # factors (m + n)·90 stay smaller than m·n: Δ stays factored
    w0 = make_w0(m, n, rng).float()
    edits = _runaway_edits(m, n, rng, count=8) + _edits(m, n, 82, rng, scale=0.05)
    order = torch.randperm(len(edits), generator=rng).tolist()
    edits = [edits[i] for i in order]
    w = w0.clone()
    tr = SpectralTracker(w, fn="log", state_dtype=torch.float64)
    for u, v in edits:
        tr.add_(u, v)
    assert tr.rank == 90
    want, info = restrain_reference(w0, _raw_sum(edits, m, n), fn="log", sigma_star=tr.sigma_star)
    assert info["n_restrained"] == 8
    err = float((w.double() - want).abs().max())
    assert err <= 4 * torch.finfo(torch.float32).eps * float(want.abs().max()), err


@pytest.mark.parametrize("dtype, tol", [(torch.float32, 1e-5), (torch.bfloat16, 1e-2)], ids=["fp32", "bf16"])
def test_add_returns_sigma_max_of_the_live_weight(dtype, tol, rng):
    """with_sigma_max_weight=True: σ_max of the restrained weight, against float64 svdvals of the weight
    itself after every step (bf16: the weight is the rounded shadow, hence the looser tolerance)."""
    m, n = 96, 160
    w = make_w0(m, n, rng).to(dtype)
    tr = SpectralTracker(w, fn="linear")
    for i, (u, v) in enumerate(_edits(m, n, 12, rng, scale=2.0)):
        res = tr.add_(u.float(), v.float(), with_sigma_max_weight=True)
        want = float(torch.linalg.svdvals(w.double())[0])
        assert res.n_restrained >= 1 or i == 0
        assert abs(res.sigma_max_weight - want) <= tol * want
    assert tr.add_(*(t.float() for t in _edits(m, n, 1, rng, scale=0.1)[0])).sigma_max_weight is None  # not asked


def test_sigma_max_weight_only_on_restraining_calls_and_from_restrain_(rng):
    m, n = 40, 70
    w = make_w0(m, n, rng).float()
    tr = SpectralTracker(w, restrain_every=None)
    for u, v in _edits(m, n, 5, rng, scale=2.0):
        assert tr.add_(u.float(), v.float(), with_sigma_max_weight=True) is None  # nothing restrained: no result
    res = tr.restrain_(with_sigma_max_weight=True)
    assert res.n_restrained >= 1
    assert res.sigma_max_weight == pytest.approx(float(torch.linalg.svdvals(w.double())[0]), rel=1e-5)


@pytest.mark.parametrize("flag", [1, "yes", None], ids=repr)
def test_sigma_max_flag_must_be_a_bool_and_is_checked_first(flag, rng):
    m, n = 20, 12
    w = make_w0(m, n, rng).float()
    tr = SpectralTracker(w)
    tr.add_(torch.randn(m, 1), torch.randn(n, 1))
    before, state = w.clone(), tr.state_dict()
    with pytest.raises(InvalidInputError, match="with_sigma_max_weight"):
        tr.add_(torch.randn(m, 1), torch.randn(n, 1), with_sigma_max_weight=flag)
    with pytest.raises(InvalidInputError, match="with_sigma_max_weight"):
        tr.restrain_(with_sigma_max_weight=flag)
    after = tr.state_dict()
    assert torch.equal(w, before) and after["meta"] == state["meta"]
    assert all(torch.equal(after[k], state[k]) for k in state if k != "meta")


def test_tracker_set_passes_the_flag_only_when_asked(rng):
    """A custom tracker without the keyword keeps working; the default one reports σ_max(W) when asked."""
    model = torch.nn.Linear(30, 20, bias=False)
    calls = []

    class Plain:
        def __init__(self, weight):
            self.weight = weight

        def add_(self, u, v):
            calls.append(u.shape)
            self.weight.data += u @ v.T

    upd = FactoredUpdate("weight", torch.randn(20, 1, generator=rng), torch.randn(30, 1, generator=rng))
    TrackerSet(model, tracker_factory=Plain).apply_([upd])
    assert calls == [(20, 1)]
    res = TrackerSet(model).apply_([FactoredUpdate("weight", 10 * upd.u, upd.v)], with_sigma_max_weight=True)
    want = float(torch.linalg.svdvals(model.weight.detach().double())[0])
    assert res["weight"].sigma_max_weight == pytest.approx(want, rel=1e-5)
