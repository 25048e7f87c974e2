"""kernels/small_eigh.py: the one-program Jacobi eigensolver and the small SVD, against float64 references."""
from __future__ import annotations

import pytest
import torch

from kernel_cases import DEVICE, assert_within, randn, requires_triton
from prune_fast.kernels.settings import launch_config
from prune_fast.kernels.small_eigh import small_eigh, small_svd

BACKENDS = [pytest.param("torch", id="torch"), pytest.param("triton", id="triton", marks=requires_triton)]
EPS = torch.finfo(torch.float32).eps


def _symmetric(batch, k, g):
    x = randn(batch, k, k, g=g).double()
    return (x + x.mT).float()


@pytest.mark.usefixtures("poison_empty")
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("k", [1, 2, 5, 17, 33], ids=lambda k: f"k{k}")
def test_small_eigh(k, backend, rng):
    a = _symmetric(2, k, rng)
    w, v = small_eigh(a, backend=backend)
    a64 = a.double()
    want = torch.linalg.eigvalsh(a64).flip(-1)
    norm = float(torch.linalg.matrix_norm(a64, 2).max())
    # Jacobi with dot-product rotations on the padded BLOCK×BLOCK matrix: ~BLOCK rounds per sweep,
    # each two BLOCK-wide products, so rounding grows like u·BLOCK·‖A‖ (BLOCK ≥ 16).
    block = launch_config("jacobi_eigh", m=k, n=k).block_m
    assert_within(w, want, 32 * EPS * block * norm + 1e-30, f"{backend} eigenvalues (descending)")
    eye = torch.eye(k, dtype=torch.float64).expand(2, k, k)
    assert_within(v.double().mT @ v.double(), eye, 32 * EPS * block, f"{backend} VᵀV = I")
    recon = v.double() @ torch.diag_embed(w.double()) @ v.double().mT
    assert_within(recon, a64, 32 * EPS * block * norm, f"{backend} V diag(w) Vᵀ = A")


@pytest.mark.parametrize("backend", BACKENDS)
def test_small_eigh_degenerate(backend):
    """Repeated and zero eigenvalues (a projector) and an already diagonal matrix."""
    q, _ = torch.linalg.qr(torch.randn(6, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(1)))
    proj = (q[:, :3] @ q[:, :3].T).float().to(DEVICE)
    diag = torch.diag(torch.tensor([3.0, -1.0, 2.0, 0.0], device=DEVICE))
    for a, want in ((proj, [1, 1, 1, 0, 0, 0]), (diag, [3, 2, 0, -1])):
        w, v = small_eigh(a, backend=backend)
        assert_within(w, torch.tensor(want, dtype=torch.float64), 64 * EPS, f"{backend} eigenvalues")
        assert_within(v.double() @ torch.diag(w.double()) @ v.double().T, a.double(), 64 * EPS, f"{backend} recon")


@pytest.mark.parametrize("backend", BACKENDS)
def test_small_svd(backend, rng):
    t = randn(9, 5, g=rng)
    u, s, v = small_svd(t, backend=backend)
    want = torch.linalg.svdvals(t.double())
    assert_within(s, want, 1e-4 * float(want[0]), f"{backend} singular values")
    assert_within((u.double() * s.double()) @ v.double().T, t.double(), 1e-4 * float(want[0]), f"{backend} U S Vᵀ")
