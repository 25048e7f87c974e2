"""Backend choice, and restrain_ / SpectralTracker end to end on the Triton kernels vs float64."""
from __future__ import annotations

import pytest
import torch

import prune_fast
from kernel_cases import DEVICE, randn, requires_triton
from prune_fast.errors import InvalidInputError
from prune_fast.kernels import apply_correction as apply_mod
from prune_fast.kernels import orthonormalize as ortho_mod
from prune_fast.kernels.dispatch import resolve_backend
from prune_fast.spectral.reference import restrain_reference


def test_auto_is_torch_on_cpu():
    assert resolve_backend("auto", torch.device("cpu")) == "torch"
    assert resolve_backend("torch", torch.device("cpu")) == "torch"


def test_triton_on_cpu_without_interpreter_is_refused(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(InvalidInputError, match="TRITON_INTERPRET=1"):
        resolve_backend("triton", torch.device("cpu"))


def test_unknown_backend_is_refused():
    with pytest.raises(InvalidInputError, match="backend must be"):
        resolve_backend("cuda", torch.device("cpu"))


@requires_triton
def test_triton_on_cpu_under_interpreter(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert resolve_backend("triton", torch.device("cpu")) == "triton"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="auto picks Triton only on CUDA tensors; no GPU here")
def test_auto_is_triton_on_cuda():
    assert resolve_backend("auto", torch.device("cuda")) == "triton"


@pytest.fixture
def kernel_calls(monkeypatch):
    """Count launches of the Triton correction kernel and of CholeskyQR2."""
    calls = {"correction": 0, "cholesky_qr2": 0}

    def counting(name, fn):
        def wrapper(*a, **k):
            calls[name] += 1
            return fn(*a, **k)
        return wrapper

    monkeypatch.setattr(apply_mod, "apply_correction_triton_", counting("correction", apply_mod.apply_correction_triton_))
    monkeypatch.setattr(ortho_mod, "cholesky_qr2", counting("cholesky_qr2", ortho_mod.cholesky_qr2))
    return calls


def _rel(got: torch.Tensor, want: torch.Tensor) -> float:
    return float((got.double() - want).norm() / want.norm())


@requires_triton
@pytest.mark.parametrize("dtype,tol", [(torch.float32, 2e-5), (torch.bfloat16, 8e-3)], ids=["fp32", "bf16"])
def test_restrain_triton_end_to_end(dtype, tol, rng, kernel_calls):
    m, n = 33, 17
    w0 = randn(m, n, g=rng)
    delta = 4 * randn(m, 2, g=rng) @ randn(n, 2, g=rng).T
    weight = (w0 + delta).to(dtype)
    d = weight.double() - w0.double()  # the Δ actually stored, so the reference sees the same W0
    res = prune_fast.restrain_(weight, d.float(), backend="triton")
    want, info = restrain_reference(w0, d.float())
    assert res.backend == "triton" and res.n_restrained == info["n_restrained"] > 0
    assert kernel_calls["correction"] > 0 and kernel_calls["cholesky_qr2"] > 0  # CGS2 uses it too
    assert _rel(weight, want) <= tol, _rel(weight, want)


@requires_triton
@pytest.mark.parametrize("dtype,tol", [(torch.float32, 2e-5), (torch.bfloat16, 8e-3)], ids=["fp32", "bf16"])
def test_tracker_triton_end_to_end(dtype, tol, rng, kernel_calls):
    m, n = 17, 33
    weight = randn(m, n, g=rng, dtype=dtype, order="col")
    w0 = weight.clone()
    tr = prune_fast.SpectralTracker(weight, backend="triton", refresh_every=2)
    for _ in range(3):
        tr.add_(3 * randn(m, g=rng), randn(n, g=rng))
    want, info = restrain_reference(w0.double(), tr.delta(), sigma_star=tr.sigma_star)
    assert tr.backend == "triton" and info["n_restrained"] > 0
    assert kernel_calls["correction"] > 0 and kernel_calls["cholesky_qr2"] > 0
    assert _rel(weight, want) <= tol, _rel(weight, want)
    assert weight.device.type == DEVICE.type
