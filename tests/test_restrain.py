"""restrain_ against exact float64 restraints of matrices with a controlled spectrum."""
from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import prune_fast
from prune_fast.errors import InvalidInputError
from prune_fast.spectral.reference import restrain_reference
from prune_fast.spectral.restraint_fn import resolve_fn
from spectral_cases import exact_restrained, make_delta, make_w0, rel_err, spectrum

SHAPES = [(1, 1), (2, 3), (17, 33), (130, 70), (70, 130)]


def _case(m, n, n_above, rank, g):
    sigma_star = 1.0 + float(torch.rand(1, generator=g))
    w0 = make_w0(m, n, g, sigma_star=sigma_star)  # σ_max(w0) = sigma_star by construction
    delta, factors = make_delta(m, n, spectrum(n_above, rank, g, sigma_star), g)
    return w0, delta, factors, sigma_star


# Every shape with every count of values above σ* that it can hold.
LOW_RANK_CASES = [(shape, k) for shape in SHAPES for k in (0, 1, 5, 50) if k <= min(shape)]


@pytest.mark.parametrize("shape,n_above", LOW_RANK_CASES, ids=lambda x: f"{x[0]}x{x[1]}" if isinstance(x, tuple) else f"above{x}")
def test_low_rank_delta_fp32(shape, n_above, rng):
    m, n = shape
    rank = min(min(m, n), n_above + 10)
    w0, delta, factors, sigma_star = _case(m, n, n_above, rank, rng)
    weight = (w0 + delta).float()
    d32 = delta.float()
    d_before = d32.clone()
    # The exact answer for the fp32 inputs actually passed in.
    want, info = restrain_reference(weight.double() - d32.double(), d32.double())
    res = prune_fast.restrain_(weight, d32)
    assert res.n_restrained == info["n_restrained"] == n_above
    assert rel_err(weight, want) <= 1e-5, f"relative error {rel_err(weight, want):.3g}"
    # ...and against the analytic construction, at fp32 input rounding.
    assert rel_err(weight, exact_restrained(w0, factors, sigma_star)) <= 1e-5
    if n_above:
        s_true = factors[1][:n_above]
        got = torch.tensor(res.sigma_before, dtype=torch.float64)
        assert torch.allclose(got, s_true, rtol=1e-5, atol=0), (got - s_true).abs().max()
        after = torch.tensor(res.sigma_after, dtype=torch.float64)
        assert torch.allclose(after, resolve_fn("log")(s_true, sigma_star), rtol=1e-5, atol=0)
    assert torch.equal(d32, d_before), "delta must not be modified"


@pytest.mark.parametrize("shape", [(130, 70), (70, 130), (64, 64)], ids=lambda s: f"{s[0]}x{s[1]}")
def test_dense_full_rank_delta(shape, rng):
    m, n = shape
    w0, delta, factors, sigma_star = _case(m, n, 3, min(m, n), rng)
    weight = (w0 + delta).float()
    want, info = restrain_reference(weight.double() - delta.float().double(), delta.float().double())
    res = prune_fast.restrain_(weight, delta.float())
    assert res.n_restrained == info["n_restrained"] == 3
    assert rel_err(weight, want) <= 1e-5


@pytest.mark.parametrize("dtype,tol", [(torch.float16, 1e-3), (torch.bfloat16, 8e-3)], ids=["fp16", "bf16"])
@pytest.mark.parametrize("shape", [(17, 33), (130, 70)], ids=lambda s: f"{s[0]}x{s[1]}")
def test_half_weights(shape, dtype, tol, rng):
    m, n = shape
    w0, delta, factors, sigma_star = _case(m, n, 4, 12, rng)
    weight = (w0 + delta).to(dtype)
    w_in = weight.double()
    res = prune_fast.restrain_(weight, delta)  # float64 delta is allowed
    want, info = restrain_reference(w_in - delta, delta)
    assert weight.dtype == dtype
    assert res.n_restrained == info["n_restrained"]
    # One rounding of the result to the half type: ≤ half an ulp per element.
    assert rel_err(weight, want) <= tol, rel_err(weight, want)


@pytest.mark.parametrize("layout", ["linear_out_in", "conv1d_in_out_view", "strided_columns"])
def test_layouts_and_views(layout, rng):
    m, n = 40, 90
    w0, delta, factors, sigma_star = _case(m, n, 3, 8, rng)
    if layout == "linear_out_in":
        storage = (w0 + delta).float().contiguous()
        weight, d = storage, delta.float()
    elif layout == "conv1d_in_out_view":
        storage = (w0 + delta).float().T.contiguous()  # stored in×out, viewed out×in
        weight, d = storage.T, delta.float()
    else:
        storage = torch.zeros(m, 2 * n)
        storage[:, ::2] = (w0 + delta).float()
        weight, d = storage[:, ::2], delta.float()
    untouched = storage[:, 1::2].clone() if layout == "strided_columns" else None
    assert not weight.is_contiguous() or layout == "linear_out_in"
    prune_fast.restrain_(weight, d)
    want, _ = restrain_reference((w0 + delta).float().double() - d.double(), d.double())
    assert rel_err(weight, want) <= 1e-5
    if untouched is not None:
        assert torch.equal(storage[:, 1::2], untouched), "restrain_ wrote outside the view"


def test_parameter_with_grad(rng):
    w0, delta, _, _ = _case(30, 20, 2, 5, rng)
    p = torch.nn.Parameter((w0 + delta).float())
    res = prune_fast.restrain_(p, delta.float())
    want, _ = restrain_reference((w0 + delta).float().double() - delta.float().double(), delta.float().double())
    assert res.n_restrained == 2 and p.requires_grad
    assert rel_err(p.detach(), want) <= 1e-5


def test_gpt2_xl_shape(rng):
    m, n = 1600, 6400
    w0, delta, factors, sigma_star = _case(m, n, 5, 16, rng)
    weight = (w0 + delta).float()
    res = prune_fast.restrain_(weight, delta.float())
    assert res.n_restrained == 5
    assert rel_err(weight, exact_restrained(w0, factors, sigma_star)) <= 1e-5
    assert math.isclose(res.sigma_star, sigma_star, rel_tol=1e-5)
    assert torch.allclose(torch.tensor(res.sigma_before, dtype=torch.float64), factors[1][:5], rtol=1e-5, atol=0)


@pytest.mark.parametrize("fn", ["log", "ln", "log2", "log1.5", "log1_5", "log1.2", "linear", "callable"])
def test_every_restraint_function(fn, rng):
    w0, delta, factors, sigma_star = _case(50, 35, 4, 9, rng)
    f = (lambda s, star: star + torch.sqrt(s - star)) if fn == "callable" else fn
    weight = (w0 + delta).float()
    res = prune_fast.restrain_(weight, delta.float(), fn=f)
    want, _ = restrain_reference((w0 + delta).float().double() - delta.float().double(), delta.float().double(),
                                 fn=f)
    assert res.n_restrained == 4
    assert rel_err(weight, want) <= 1e-5


def test_alpha_changes_the_base(rng):
    w0, delta, factors, sigma_star = _case(40, 30, 3, 6, rng)
    weight = (w0 + delta).float()
    prune_fast.restrain_(weight, delta.float(), alpha=1.2)
    want, _ = restrain_reference((w0 + delta).float().double() - delta.float().double(), delta.float().double(),
                                 fn="log1.2")
    assert rel_err(weight, want) <= 1e-5


def test_known_sigma_star_is_used(rng):
    w0, delta, factors, sigma_star = _case(40, 30, 3, 6, rng)
    weight = (w0 + delta).float()
    res = prune_fast.restrain_(weight, delta.float(), sigma_star=2 * sigma_star)
    want, info = restrain_reference((w0 + delta).float().double() - delta.float().double(), delta.float().double(),
                                    sigma_star=2 * sigma_star)
    assert res.sigma_star == 2 * sigma_star and res.n_restrained == info["n_restrained"]
    assert rel_err(weight, want) <= 1e-5


def test_zero_delta_and_nothing_above_leave_weight_bit_identical(rng):
    w0, delta, _, _ = _case(30, 20, 0, 5, rng)
    for d in (torch.zeros(30, 20), delta.float()):
        weight = (w0 + delta).float()
        before = weight.clone()
        res = prune_fast.restrain_(weight, d)
        assert res.n_restrained == 0
        assert torch.equal(weight, before)


def test_result_prints_one_line(rng):
    w0, delta, _, _ = _case(30, 20, 2, 4, rng)
    res = prune_fast.restrain_((w0 + delta).float(), delta.float())
    line = str(res)
    assert "\n" not in line and "2 restrained" in line and "σ*" in line


BAD = {
    "1-D weight": lambda w, d: (w[0], d[0]),
    "3-D weight": lambda w, d: (w[None], d[None]),
    "shape mismatch": lambda w, d: (w, d[:, :-1]),
    "int delta": lambda w, d: (w, d.to(torch.int32)),
    "bool delta": lambda w, d: (w, d > 0),
    "complex delta": lambda w, d: (w, d.to(torch.complex64)),
    "NaN in delta": lambda w, d: (w, d.index_put((torch.tensor([1]), torch.tensor([2])), torch.tensor(float("nan")))),
    "Inf in delta": lambda w, d: (w, d.index_put((torch.tensor([0]), torch.tensor([0])), torch.tensor(float("inf")))),
    "not a tensor": lambda w, d: (w, d.numpy()),
}


@pytest.mark.parametrize("case", list(BAD), ids=list(BAD))
def test_bad_tensors_raise_before_writing(case, rng):
    w0, delta, _, _ = _case(12, 9, 2, 4, rng)
    weight = (w0 + delta).float()
    before = weight.clone()
    w_arg, d_arg = BAD[case](weight, delta.float())
    with pytest.raises(InvalidInputError):
        prune_fast.restrain_(w_arg, d_arg)
    assert torch.equal(weight, before)


def test_non_finite_weight_and_integer_weight_raise(rng):
    w0, delta, _, _ = _case(12, 9, 2, 4, rng)
    weight = (w0 + delta).float()
    weight[3, 3] = float("nan")
    before = weight.clone()
    with pytest.raises(InvalidInputError, match="non-finite"):
        prune_fast.restrain_(weight, delta.float())
    assert torch.equal(weight.nan_to_num(), before.nan_to_num())
    with pytest.raises(InvalidInputError, match="dtype"):
        prune_fast.restrain_(torch.ones(3, 3, dtype=torch.int64), torch.zeros(3, 3))


@pytest.mark.parametrize("kwargs,match", [
    ({"alpha": 1.0}, "alpha"), ({"alpha": 0.5}, "alpha"), ({"alpha": float("nan")}, "alpha"),
    ({"sigma_star": 0.0}, "sigma_star"), ({"sigma_star": -1.0}, "sigma_star"),
    ({"sigma_star": float("nan")}, "sigma_star"), ({"fn": "log3"}, "unknown fn"),
    ({"fn": "log2", "alpha": 3.0}, "fixes its own base"), ({"backend": "cuda"}, "backend"),
], ids=lambda x: str(x))
def test_bad_options_raise_before_writing(kwargs, match, rng):
    w0, delta, _, _ = _case(12, 9, 2, 4, rng)
    weight = (w0 + delta).float()
    before = weight.clone()
    with pytest.raises(InvalidInputError, match=match):
        prune_fast.restrain_(weight, delta.float(), **kwargs)
    assert torch.equal(weight, before)


@settings(max_examples=40, deadline=None)
@given(m=st.integers(1, 40), n=st.integers(1, 40), n_above=st.integers(0, 8), extra=st.integers(0, 10),
       fn=st.sampled_from(["log", "log2", "log1.2", "linear"]), seed=st.integers(0, 2**31 - 1))
def test_property_matches_full_svd(m, n, n_above, extra, fn, seed):
    g = torch.Generator().manual_seed(seed)
    k = min(m, n)
    n_above = min(n_above, k)
    rank = min(k, n_above + extra)
    if rank == 0:
        return
    w0, delta, factors, sigma_star = _case(m, n, n_above, rank, g)
    weight = (w0 + delta).float()
    res = prune_fast.restrain_(weight, delta.float(), fn=fn)
    want, info = restrain_reference((w0 + delta).float().double() - delta.float().double(), delta.float().double(), fn=fn)
    assert res.n_restrained == info["n_restrained"]
    assert rel_err(weight, want) <= 1e-5


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16],
                         ids=["fp32", "fp64", "fp16", "bf16"])
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")], ids=["nan", "inf", "-inf"])
def test_finite_check_finds_one_bad_value_anywhere(dtype, bad, rng):
    """The fast finite checks (a sum; aminmax for half types) must see a single NaN/±Inf at any
    position, in either layout, also in tensors large enough for vectorised and threaded reductions."""
    from prune_fast._validate import check_finite

    for t in (torch.randn(40, 70, generator=rng).to(dtype), torch.randn(70, 40, generator=rng).to(dtype).T,
              torch.randn(257, 4099, generator=rng).to(dtype)):
        check_finite("x", t)
        i, j = (int(torch.randint(n, (1,), generator=rng)) for n in t.shape)
        t[i, j] = bad
        with pytest.raises(InvalidInputError, match="1 non-finite"):
            check_finite("x", t)


def test_finite_weights_whose_sum_overflows_are_accepted(rng):
    """Values near the fp32 maximum sum to Inf: the exact check must then accept them, not reject."""
    from prune_fast._validate import check_finite

    big = torch.full((8, 8), 3.0e38) * torch.sign(torch.rand(8, 8, generator=rng) + 0.1)
    assert not torch.isfinite(big.sum())
    check_finite("weight", big)


def test_scratch_buffer_is_reused_and_never_shared():
    from prune_fast import _scratch

    _scratch.release()
    with _scratch.borrow((30, 40), torch.float32) as a:
        ptr = a.data_ptr()
        with _scratch.borrow((30, 40), torch.float32) as inner:  # re-entrant: a different tensor
            assert inner.data_ptr() != ptr
    with _scratch.borrow((20, 10), torch.float32) as b:  # smaller: the same memory
        assert b.data_ptr() == ptr and b.shape == (20, 10) and b.is_contiguous()
    with _scratch.borrow((20, 30), torch.float64) as c:  # another dtype, as many bytes: the same memory
        assert c.dtype == torch.float64 and c.shape == (20, 30) and c.data_ptr() == ptr and c.is_contiguous()
        c.fill_(1.5)
        assert float(c.sum()) == 1.5 * 600
    with _scratch.borrow((30, 40), torch.float64) as d:  # more bytes: a new, larger buffer
        assert d.dtype == torch.float64 and d.shape == (30, 40)
        grown = d.data_ptr()
    with _scratch.borrow((30, 40), torch.float32) as e:  # which the next, smaller request reuses
        assert e.data_ptr() == grown and e.dtype == torch.float32
    _scratch.release()


def test_restrain_twice_in_a_row_gives_identical_results(rng):
    """The reused W0 buffer must not leak one call's W0 into the next (different weights, same shape)."""
    outs = []
    for _ in range(2):
        w0, delta, _, _ = _case(300, 200, 4, 6, rng)
        w = (w0 + delta).float()
        ref, info = restrain_reference(w.double() - delta.float().double(), delta.float().double())
        assert info["n_restrained"] == 4
        prune_fast.restrain_(w, delta.float())
        outs.append((w.double() - ref).norm() / ref.norm())
    assert max(outs) <= 1e-5


def test_runaway_delta_is_warned_about_and_normal_delta_is_not(rng, caplog):
    """fp32 cannot hold the restrained remainder of a Δ ~1e6 σ*: say so instead of failing silently."""
    w0, delta, _, sigma_star = _case(120, 80, 3, 5, rng)
    with caplog.at_level("WARNING", logger="prune_fast"):
        prune_fast.restrain_((w0 + delta).float(), delta.float())
        assert not caplog.records
        huge = delta * (1e6 / float(torch.linalg.matrix_norm(delta, 2)) * sigma_star)
        prune_fast.restrain_((w0 + huge).float(), huge.float(), sigma_star=sigma_star)
    assert any("rounding" in r.getMessage() and "σ*" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize("full_matrices", [True, False], ids=["as-paper-code", "thin-variant"])
@pytest.mark.parametrize("shape,rank", [((40, 90), 7), ((90, 40), 40)], ids=["wide-low-rank", "tall-full-rank"])
def test_paper_procedure_matches_the_float64_reference(full_matrices, shape, rank, rng):
    """Both forms of the benchmarked paper procedure compute PRUNE itself (what the speed-ups compare)."""
    from prune_fast.spectral.reference import paper_procedure

    m, n = shape
    w0, delta, _, sigma_star = _case(m, n, min(3, rank), rank, rng)
    got = torch.from_numpy(paper_procedure(w0.numpy(), (w0 + delta).numpy(), fn="log1.2",
                                           full_matrices=full_matrices))
    want, info = restrain_reference(w0, delta, fn="log1.2")
    assert info["n_restrained"] == min(3, rank)
    assert got.shape == want.shape and bool(torch.isfinite(got).all())
    torch.testing.assert_close(got, want, rtol=0, atol=1e-12 * float(want.abs().max()))
    assert float((got - (w0 + delta)).abs().max()) > 1e-3  # the restraint changed the weight
