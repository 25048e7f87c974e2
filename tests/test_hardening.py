"""Hostile and careless inputs to the tensor-level API: refused with the library's own error before
any write, and every failure leaves the weight and the tracker exactly as they were (issue 19)."""
from __future__ import annotations

import math

import pytest
import torch

from prune_fast import SpectralTracker, restrain_, restrain_model_
from prune_fast.errors import InvalidInputError, PruneFastError
from spectral_cases import make_w0, rel_err


def _state_copy(tracker: SpectralTracker) -> dict:
    state = tracker.state_dict()
    return {k: (v.clone() if isinstance(v, torch.Tensor) else dict(v)) for k, v in state.items()}


def _assert_same_state(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    assert a["meta"] == b["meta"]
    for k in a:
        if k != "meta":
            assert a[k].dtype == b[k].dtype and torch.equal(a[k], b[k]), k


def _rank1(m, n, g, scale=1.0):
    return (scale * torch.randn(m, 1, generator=g, dtype=torch.float64) / m ** 0.5,
            torch.randn(n, 1, generator=g, dtype=torch.float64) / n ** 0.25)


# ---------------------------------------------------------------------------------- overflow
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
def test_add_refuses_an_update_whose_product_overflows(dtype, rng):
    m, n = 30, 20
    w = make_w0(m, n, rng).to(dtype)
    tr = SpectralTracker(w, fn="linear")
    tr.add_(*_rank1(m, n, rng))
    before, state = w.clone(), _state_copy(tr)
    big = 1e20  # each factor finite in fp32, u vᵀ beyond the fp32 state's range
    u, v = _rank1(m, n, rng)
    with pytest.raises(InvalidInputError, match="overflow"):
        tr.add_(u * big / u.abs().max(), v * big / v.abs().max())
    assert torch.equal(w, before)
    _assert_same_state(_state_copy(tr), state)
    assert bool(torch.isfinite(w).all())


# ------------------------------------------------------------------------- from_state_dict
def _corrupt(field):
    def nan_at(key):
        def f(state):
            state[key] = state[key].clone()
            state[key].view(-1)[0] = float("nan")
        return f

    def meta(key, value):
        def f(state):
            state["meta"][key] = value
        return f

    def drop_meta(key):
        def f(state):
            del state["meta"][key]
        return f

    def cut(key, rows):
        def f(state):
            state[key] = state[key][:rows].clone()
        return f

    table = {
        "w0 NaN": (nan_at("w0"), "w0"),
        "core NaN": (nan_at("core"), "core"),
        "applied_u NaN": (nan_at("applied_u"), "applied_u"),
        "sigma_star NaN": (meta("sigma_star", float("nan")), "sigma_star"),
        "sigma_star -1": (meta("sigma_star", -1.0), "sigma_star"),
        "sigma_star 0": (meta("sigma_star", 0.0), "sigma_star"),
        "sigma_star str": (meta("sigma_star", "1.5"), "sigma_star"),
        "shape missing": (drop_meta("shape"), "shape"),
        "n_edits str": (meta("n_edits", "abc"), "n_edits"),
        "n_edits negative": (meta("n_edits", -3), "n_edits"),
        "since_restrain float": (meta("since_restrain", 1.5), "since_restrain"),
        "refresh_every 0": (meta("refresh_every", 0), "refresh_every"),
        "restrain_every str": (meta("restrain_every", "1"), "restrain_every"),
        "fn unknown": (meta("fn", "cube"), "fn"),
        "qa cut": (cut("qa", 7), "qa"),
        "core cut": (cut("core", 1), "core"),
        "applied_v cut": (cut("applied_v", 3), "applied_v"),
        "w0 not a tensor": (meta_free := (lambda s: s.__setitem__("w0", [[1.0]])), "w0"),
    }
    del meta_free
    return table[field]


FIELDS = ["w0 NaN", "core NaN", "applied_u NaN", "sigma_star NaN", "sigma_star -1", "sigma_star 0", "sigma_star str",
          "shape missing", "n_edits str", "n_edits negative", "since_restrain float", "refresh_every 0",
          "restrain_every str", "fn unknown", "qa cut", "core cut", "applied_v cut", "w0 not a tensor"]


@pytest.mark.parametrize("field", FIELDS)
def test_from_state_dict_names_each_bad_field_before_writing(field, rng):
    m, n = 40, 24
    tr = SpectralTracker(make_w0(m, n, rng), fn="log1.2")
    for _ in range(3):
        tr.add_(*_rank1(m, n, rng, scale=3.0))
    assert tr.rank is not None and tr._applied[0].shape[1] > 0  # factored, with a correction applied
    state = tr.state_dict()
    state["meta"] = dict(state["meta"])
    corrupt, key = _corrupt(field)
    corrupt(state)
    target = torch.randn(m, n, generator=rng, dtype=torch.float64)
    before = target.clone()
    with pytest.raises(InvalidInputError, match=key):
        SpectralTracker.from_state_dict(target, state)
    assert torch.equal(target, before)


def test_from_state_dict_refuses_a_cut_dense_delta_before_the_first_row_block(rng):
    # 1100 rows: the block-wise write would rewrite the first 512 rows before failing on the rest.
    m, n = 1100, 8
    tr = SpectralTracker(make_w0(m, n, rng), fn="linear")
    for _ in range(9):
        tr.add_(*_rank1(m, n, rng, scale=3.0))
    assert tr.rank is None  # stored dense
    state = tr.state_dict()
    state["delta"] = state["delta"][:600].clone()
    target = torch.randn(m, n, generator=rng, dtype=torch.float64)
    before = target.clone()
    with pytest.raises(InvalidInputError, match="delta"):
        SpectralTracker.from_state_dict(target, state)
    assert torch.equal(target, before)


# ---------------------------------------------------------------------- all-or-nothing add_
class _Flaky:
    """F = linear, or an error / a broken return value on demand."""

    __name__ = "flaky"

    def __init__(self):
        self.mode = "ok"

    def __call__(self, sigma, sigma_star):
        if self.mode == "raise":
            raise ZeroDivisionError("user F failed")
        if self.mode == "none":
            return None
        if self.mode == "str":
            return "sigma"
        return 0.5 * sigma + 0.5 * sigma_star


@pytest.mark.parametrize("mode,error", [("raise", ZeroDivisionError), ("none", InvalidInputError),
                                        ("str", InvalidInputError)])
@pytest.mark.parametrize("shape", [(40, 24), (24, 6)], ids=["factored", "dense"])
def test_a_failing_fn_leaves_weight_and_state_exactly_as_before(mode, error, shape, rng):
    m, n = shape
    f = _Flaky()
    w = make_w0(m, n, rng)
    twin_w = w.clone()
    tr, twin = SpectralTracker(w, fn=f), SpectralTracker(twin_w, fn=f)
    edits = [_rank1(m, n, rng, scale=3.0) for _ in range(12)]
    for u, v in edits[:8]:
        tr.add_(u, v)
        twin.add_(u, v)
    assert (tr.rank is None) == (shape == (24, 6))
    before, state = w.clone(), _state_copy(tr)
    f.mode = mode
    with pytest.raises(error):
        tr.add_(*edits[8])  # every edit is above σ*, so F runs
    assert torch.equal(w, before)
    _assert_same_state(_state_copy(tr), state)
    with pytest.raises(error):
        tr.restrain_()
    assert torch.equal(w, before)
    _assert_same_state(_state_copy(tr), state)
    f.mode = "ok"  # the run goes on as if the failed edit had never been offered
    for u, v in edits[9:]:
        tr.add_(u, v)
        twin.add_(u, v)
    assert torch.equal(w, twin_w)
    _assert_same_state(_state_copy(tr), _state_copy(twin))


def test_failing_fn_in_restrain_leaves_weight(rng):
    m, n = 30, 20
    w0 = make_w0(m, n, rng)
    delta = 5 * torch.randn(m, 1, generator=rng) @ torch.randn(1, n, generator=rng)
    for ret in (None, "x", ["a"]):
        w = w0 + delta
        before = w.clone()
        with pytest.raises(InvalidInputError, match="custom fn"):
            restrain_(w, delta, fn=lambda s, s0, ret=ret: ret)
        assert torch.equal(w, before)


# -------------------------------------------------------------------- aliasing and autograd
@pytest.mark.parametrize("alias", ["same", "view", "overlapping slices", "transposed copy-free view"])
def test_restrain_refuses_a_delta_sharing_the_weights_memory(alias, rng):
    w = make_w0(30, 20, rng) * 10
    if alias == "same":
        weight, delta = w, w
    elif alias == "view":
        weight, delta = w, w.view(30, 20)
    elif alias == "overlapping slices":
        big = torch.randn(60, 20, generator=rng, dtype=torch.float64)
        weight, delta = big[:30], big[20:50]
    else:
        sq = torch.randn(20, 20, generator=rng, dtype=torch.float64)
        weight, delta = sq, sq.T
    before_w, before_d = weight.clone(), delta.clone()
    with pytest.raises(InvalidInputError, match="shares memory"):
        restrain_(weight, delta)
    assert torch.equal(weight, before_w) and torch.equal(delta, before_d)


def test_disjoint_slices_of_one_buffer_are_fine(rng):
    big = torch.empty(60, 20, dtype=torch.float64)
    w0 = make_w0(30, 20, rng)
    delta = 5 * torch.randn(30, 1, generator=rng, dtype=torch.float64) @ torch.randn(1, 20, generator=rng,
                                                                                    dtype=torch.float64)
    big[:30], big[30:] = w0 + delta, delta
    res = restrain_(big[:30], big[30:])
    assert res.n_restrained == 1 and torch.equal(big[30:], delta)


def _graph_saving(weight):
    x = torch.randn(3, weight.shape[0], dtype=weight.dtype, requires_grad=True)
    return (x @ weight).sum()


def test_restrain_write_is_seen_by_autograd(rng):
    m, n = 30, 20
    w0 = make_w0(m, n, rng)
    delta = 5 * torch.randn(m, 1, generator=rng) @ torch.randn(1, n, generator=rng)
    weight = torch.nn.Parameter(w0 + delta)
    loss = _graph_saving(weight)
    version = weight._version
    res = restrain_(weight, delta)
    assert res.n_restrained == 1 and weight._version > version
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        loss.backward()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_tracker_write_is_seen_by_autograd(dtype, rng):
    m, n = 30, 20
    weight = torch.nn.Parameter(make_w0(m, n, rng).to(dtype))
    tr = SpectralTracker(weight)
    loss = _graph_saving(weight)
    tr.add_(*_rank1(m, n, rng, scale=3.0))
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        loss.backward()


def test_restrain_model_write_is_seen_by_autograd(rng):
    model = torch.nn.Linear(20, 30, bias=False)
    w0 = model.weight.detach().clone()
    with torch.no_grad():
        model.weight.add_(5 * torch.randn(30, 1, generator=rng) @ torch.randn(1, 20, generator=rng))
    loss = model(torch.randn(3, 20, requires_grad=True)).sum()
    rep = restrain_model_(model, {"weight": w0})
    assert rep.restrained
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        loss.backward()


def test_tracker_sees_writes_through_data(rng):
    m, n = 30, 20
    weight = torch.nn.Parameter(make_w0(m, n, rng))
    tr = SpectralTracker(weight)
    tr.add_(*_rank1(m, n, rng))
    u, v = _rank1(m, n, rng)
    weight.data.add_(u @ v.T)  # an editor writing behind the tracker's back, as many toolkits do
    before = weight.detach().clone()
    with pytest.raises(InvalidInputError, match="outside"):
        tr.add_(*_rank1(m, n, rng))
    assert torch.equal(weight.detach(), before)


# ----------------------------------------------------------------------- wrong error types
def test_meta_tensors_are_refused_with_the_librarys_error():
    w = torch.empty(30, 20, device="meta")
    with pytest.raises(InvalidInputError, match="meta"):
        restrain_(w, torch.empty(30, 20, device="meta"))
    with pytest.raises(InvalidInputError, match="meta"):
        SpectralTracker(w, sigma_star=1.0)


def test_an_overflowing_w0_is_refused(rng):
    w = torch.full((30, 20), 3e38)
    delta = torch.full((30, 20), -3e38) + torch.randn(30, 20, generator=rng)
    before = w.clone()
    with pytest.raises(InvalidInputError, match="W0"):
        restrain_(w, delta)
    assert torch.equal(w, before)
    # a float64 delta that does not fit the weight's fp32 arithmetic
    with pytest.raises(InvalidInputError, match="delta"):
        restrain_(torch.ones(30, 20), torch.full((30, 20), 1e300, dtype=torch.float64), sigma_star=1.0)


def test_an_overflowing_delta_between_two_models_is_refused():
    model = torch.nn.Linear(20, 30, bias=False)
    with torch.no_grad():
        model.weight.fill_(3e38)
    before = model.weight.detach().clone()
    with pytest.raises(InvalidInputError, match="overflow"):
        restrain_model_(model, {"weight": torch.full((30, 20), -3e38) + torch.eye(30, 20)})
    assert torch.equal(model.weight.detach(), before)


def test_every_refusal_here_is_a_prune_fast_error_and_a_value_error():
    assert issubclass(InvalidInputError, PruneFastError) and issubclass(InvalidInputError, ValueError)


def test_restrain_still_exact_after_the_checks(rng):
    """The added checks change nothing on good input: restrain_ against the float64 reference."""
    from prune_fast.spectral.reference import restrain_reference

    m, n = 50, 30
    w0 = make_w0(m, n, rng).double()
    delta = 4 * torch.randn(m, 2, generator=rng, dtype=torch.float64) @ torch.randn(2, n, generator=rng,
                                                                                   dtype=torch.float64)
    w = (w0 + delta).float()
    restrain_(w, delta.float())
    want, _ = restrain_reference(w0, delta, fn="log")
    assert rel_err(w, want) <= 1e-5, rel_err(w, want)
    assert math.isfinite(float(w.sum()))
