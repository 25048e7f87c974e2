"""kernels/sigma_power.py: σ_max by block power iteration with SVQB, against float64 references."""
from __future__ import annotations

import pytest
import torch

from kernel_cases import DEVICE, assert_within, randn, requires_triton
from prune_fast.kernels.sigma_power import sigma_max_power, svqb
from prune_fast.spectral.operators import ImplicitDifferenceOperator

BACKENDS = [pytest.param("torch", id="torch"), pytest.param("triton", id="triton", marks=requires_triton)]


@pytest.mark.parametrize("backend", BACKENDS)
def test_svqb_orthonormal(backend, rng):
    z = randn(130, 6, g=rng)
    z[:, 3] = z[:, 2] * 1e-3 + z[:, 3] * 1e-6  # nearly dependent column: SVQB must not blow up
    q = svqb(z, backend=backend)
    assert bool(torch.isfinite(q).all())
    # Columns come in descending eigenvalue order: the five well-determined ones are orthonormal;
    # the last (scaled Gram eigenvalue ~1e-6, known to ~u/1e-6 in fp32) is only finite and small-ish.
    good = q[:, :5].double()
    assert_within(good.T @ good, torch.eye(5, dtype=torch.float64), 1e-4, f"{backend} SVQB")


@pytest.mark.parametrize("backend", BACKENDS)
def test_sigma_max_power_implicit_difference(backend, rng):
    """σ_max(W − W0) with a spectral gap, from a bf16 weight and fp32 snapshot, no value read back."""
    m, n = 130, 70
    u, _ = torch.linalg.qr(torch.randn(m, n, dtype=torch.float64, generator=rng))
    v, _ = torch.linalg.qr(torch.randn(n, n, dtype=torch.float64, generator=rng))
    s = torch.logspace(1, -2, n, dtype=torch.float64)
    w0 = torch.randn(m, n, generator=rng)
    w = (w0.double() + (u * s) @ v.T).to(torch.bfloat16)
    w, w0 = w.to(DEVICE), w0.to(DEVICE)
    want = float(torch.linalg.svdvals(w.double() - w0.double())[0])
    res = sigma_max_power(ImplicitDifferenceOperator(w, w0, backend=backend), block=4, iters=15,
                          generator=torch.Generator().manual_seed(0), backend=backend)
    assert res.sigma.dim() == 0 and res.sigma.device.type == DEVICE.type
    assert abs(float(res.sigma) - want) <= 1e-4 * want, (float(res.sigma), want)
    assert float(res.residual) <= 1e-3
