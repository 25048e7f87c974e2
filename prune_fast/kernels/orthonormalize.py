"""Orthonormal bases of tall-skinny blocks, optionally orthogonal to an existing basis.

``orthonormalize(X, against=Q)`` returns ``(Q_new, R, C)`` with

    X = Q C + Q_new R + E,     Q_newᵀ Q_new = I,   Qᵀ Q_new ≈ 0,   ‖E‖ ≤ δ max_j‖x_j‖,  δ = 16 ulp.

Classical Gram–Schmidt is applied twice (CGS2: "twice is enough", Giraud et al. 2005), the second
pass skipped when no column lost more than 1 − 1/√2 of its norm (Kahan–Parlett criterion). Directions of
X that lie numerically inside span(Q) are *deflated*: what is left of them is rounding noise, whose
normalised direction would not be orthogonal to Q, so it is dropped (its part of R is zero) and a
random direction orthogonal to Q takes its place. This keeps block Krylov bases orthonormal when the
matrix has lower rank than the basis (every low-rank edit), which Rayleigh–Ritz needs.

Scale safety: the column norms, Gram matrices and deflation tests square the entries, which under- or
overflows in fp32 for blocks below ~1e-19 or above ~1e19 (a Δ of 1e-25 would look like zero). Both
versions therefore first scale X by a power of two that brings its largest entry near 1 (exact: only
the exponent changes) when it lies outside [2⁻⁴⁰, 2⁴⁰], and scale R and C back. Random replacement
directions come from ``generator``, or from a private generator with a fixed seed: never from torch's
global random stream, so calling this does not change the caller's random numbers.
"""
from __future__ import annotations

import math

import torch

from .apply_correction import apply_correction_
from .cpu_matmul import skinny_matmul_cpu
from .skinny_matmul import skinny_matmul

# Blocks whose largest entry lies in [2^-_SAFE_EXPONENT, 2^_SAFE_EXPONENT] are left as they are: their
# squares and Gram sums stay far inside the fp32 range (squares ≥ 2^-80, sums of 2^24 squares ≤ 2^104).
_SAFE_EXPONENT = 40
# Seed of the private generator used when the caller passes none (deterministic, never the global one).
PRIVATE_SEED = 0x5EED


def private_generator(device: torch.device | str) -> torch.Generator:
    """A fresh generator on ``device`` seeded with :data:`PRIVATE_SEED` (torch's global stream untouched)."""
    return torch.Generator(device=device).manual_seed(PRIVATE_SEED)


def gaussian(rows: int, cols: int, dtype: torch.dtype, device: torch.device,
             generator: torch.Generator | None) -> torch.Tensor:
    """Standard normal ``rows × cols`` block on ``device`` from ``generator`` (private when None), drawn
    on the generator's own device and moved if the two differ."""
    g = private_generator(device) if generator is None else generator
    if g.device == torch.device(device) or (g.device.type == torch.device(device).type == "cpu"):
        return torch.randn(rows, cols, dtype=dtype, device=device, generator=g)
    return torch.randn(rows, cols, dtype=dtype, device=g.device, generator=g).to(device)


def power_of_two_exponent(x: torch.Tensor) -> int:
    """``e`` such that ``x · 2^-e`` has its largest |entry| in [0.5, 1), or 0 when x is zero, non-finite, or
    already in the safe range [2^-40, 2^40] (then nothing needs scaling)."""
    if x.numel() == 0:
        return 0
    lo, hi = torch.aminmax(x.detach())
    amax = max(-float(lo), float(hi))
    if not (amax > 0.0) or amax == float("inf"):
        return 0
    _, e = math.frexp(amax)
    return 0 if -_SAFE_EXPONENT <= e <= _SAFE_EXPONENT else e


def times_power_of_two(t: torch.Tensor, k: int) -> torch.Tensor:
    """``t · 2^k``, exact, in steps of at most 2^±100 so that no factor itself under/overflows fp32."""
    while k:
        step = max(-100, min(100, k))
        t = t * (2.0 ** step)
        k -= step
    return t


def _scale_safe(fn):
    """Run an orthonormalisation ``fn(x, against, ...) -> (q, r, coeff)`` on x·2^-e (see module doc)."""
    def wrapped(x: torch.Tensor, against: torch.Tensor | None = None, *args, **kwargs):
        e = power_of_two_exponent(x)
        if e == 0:
            return fn(x, against, *args, **kwargs)
        q, r, coeff = fn(times_power_of_two(x, -e), against, *args, **kwargs)
        return q, times_power_of_two(r, e), None if coeff is None else times_power_of_two(coeff, e)
    wrapped.__doc__, wrapped.__name__, wrapped.__wrapped__ = fn.__doc__, fn.__name__, fn
    return wrapped


def _project_out(x: torch.Tensor, basis: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor | None]:
    if basis is None or basis.shape[1] == 0:
        return x, None
    # Through the routed product: ``basis.T @ x`` with a basis sliced from a row-major buffer is a
    # column-major operand, for which the CPU BLAS can be 10× slower with 8 or 9 columns (6400×200
    # basis, AMD EPYC: 4.9 against 0.43 ms as (xᵀ basis)ᵀ; see ``cpu_matmul``).
    c1 = skinny_matmul_cpu(basis.T, x)
    y = x - skinny_matmul_cpu(basis, c1)
    # Kahan–Parlett: a column that kept ≥ 1/√2 of its norm is already orthogonal to working
    # precision after one pass; only otherwise is the second pass needed.
    if bool((torch.linalg.vector_norm(y, dim=0) >= 0.7071 * torch.linalg.vector_norm(x, dim=0)).all()):
        return y, c1
    c2 = skinny_matmul_cpu(basis.T, y)
    return y - skinny_matmul_cpu(basis, c2), c1 + c2


@_scale_safe
def orthonormalize_torch(x: torch.Tensor, against: torch.Tensor | None = None,
                         generator: torch.Generator | None = None
                         ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Return ``(q, r, coeff)``: ``x ≈ against @ coeff + q @ r``, q orthonormal and ⟂ ``against``."""
    rows, cols = x.shape
    # Rounding noise left by the projection is ~ulp × the column's own norm: judge against the
    # largest column, not the whole block's Frobenius norm (which would drop real content).
    scale = float(torch.linalg.vector_norm(x, dim=0).max()) if cols else 0.0
    x, coeff = _project_out(x, against)
    q0, r0 = torch.linalg.qr(x)
    if cols == 0 or scale == 0.0:
        return q0, torch.zeros_like(r0), coeff
    p, sig, ht = torch.linalg.svd(r0)
    keep = sig > 16 * torch.finfo(x.dtype).eps * scale
    n_keep = int(keep.sum())
    q_keep = q0 @ p[:, :n_keep]
    r_keep = sig[:n_keep, None] * ht[:n_keep]
    if against is not None and against.shape[1] and n_keep:
        # A direction that was mostly inside span(against) keeps ~ulp·scale/σ of it after CGS2;
        # one more pass (on the unit directions) restores orthogonality to working precision.
        c3 = skinny_matmul_cpu(against.T, q_keep)
        if float(c3.abs().max()) > 8 * torch.finfo(x.dtype).eps:
            q_keep, r3 = torch.linalg.qr(q_keep - skinny_matmul_cpu(against, c3))
            coeff = coeff + c3 @ r_keep
            r_keep = r3 @ r_keep
    if n_keep == cols:
        return q_keep, r_keep, coeff
    # Random replacements (orthogonal to everything so far) for the deflated directions.
    basis = q_keep if against is None else torch.cat([against, q_keep], 1)
    fill = gaussian(rows, cols - n_keep, x.dtype, x.device, generator)
    fill, _ = _project_out(fill, basis)
    fill, _ = torch.linalg.qr(fill)
    q = torch.cat([q_keep, fill], 1)
    r = torch.zeros_like(r0)
    r[:n_keep] = r_keep
    return q, r, coeff


# ---- CholeskyQR2 on the kernels (the Triton version, and wide fp32 blocks on the torch backend) ---
# CholeskyQR2 (Fukaya et al. 2014; Yamamoto et al. 2015): the Gram matrix G = XᵀX comes from the
# skinny-product kernel (one pass over X, fp32 accumulation), R = chol(G)ᵀ in float64 (b×b, cheap),
# Q = X R⁻¹ by a triangular solve, done twice. It needs cond(X) ≲ u^(−1/2) (≈ 3e3 in fp32). When
# Cholesky fails, the first factor's diagonal ratio exceeds u^(−1/2)/4, the second pass is not near
# the identity, or a column was (numerically) inside span(against) (a pivot below 16 ulp of the
# largest input column: its normalised rounding noise would not be ⟂ against), it falls back to the
# torch version on the original X, whose deflation handles every rank-deficient case. A result more
# than 8 ulp off ⟂ against gets a third projection pass, as in the torch version. These decisions
# read a few scalars on the host; the Krylov loop that calls this reads its residuals there anyway.


def _cond_limit(dtype: torch.dtype) -> float:
    """Largest diagonal ratio of the first Cholesky factor CholeskyQR2 accepts: u^(−1/2) / 4."""
    return 0.25 / torch.finfo(dtype).eps ** 0.5


def _cholesky_qr(x: torch.Tensor, backend: str) -> tuple[torch.Tensor, torch.Tensor, bool, float]:
    """One CholeskyQR pass: ``(q, r, ok, diag_ratio)`` with x = q r (q meaningless unless ok)."""
    gram = skinny_matmul(x.mT, x, backend=backend).to(torch.float64)
    low, info = torch.linalg.cholesky_ex(0.5 * (gram + gram.mT))
    r = low.mT
    diag = torch.diagonal(r).abs()
    ratio = float(diag.max() / diag.min().clamp_min(torch.finfo(torch.float64).tiny))
    q = torch.linalg.solve_triangular(r.to(x.dtype), x, upper=True, left=False)
    return q, r, int(info) == 0 and ratio == ratio, ratio


@_scale_safe
def cholesky_qr2(x: torch.Tensor, against: torch.Tensor | None = None, *, backend: str = "triton",
                 generator: torch.Generator | None = None
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """CGS2 against ``against`` on the kernels, then CholeskyQR2, with the torch version as fallback.

    x: (m, b) fp32 (or fp64); against: (m, a) orthonormal or None. Same contract as
    :func:`orthonormalize_torch`: ``x ≈ against @ coeff + q @ r``; coeff is None without ``against``.
    """
    if x.shape[1] == 0 or x.shape[0] < x.shape[1]:
        return orthonormalize_torch(x, against, generator=generator)
    y, coeff = x, None
    if against is not None and against.shape[1]:
        y = x.clone()
        for _ in range(2):
            c = skinny_matmul(against.mT, y, backend=backend).to(x.dtype)
            apply_correction_(y, against, -c.mT, backend=backend)  # y ← y − against c
            coeff = c if coeff is None else coeff + c
    q1, r1, ok, ratio = _cholesky_qr(y, backend)
    if ok and coeff is not None:
        # A column (numerically) inside span(against) leaves rounding noise, well conditioned on its
        # own: the torch version's deflation test (against the largest input column) catches it.
        scale = float(torch.linalg.vector_norm(x, dim=0).max())
        ok = float(torch.diagonal(r1).abs().min()) > 16 * torch.finfo(x.dtype).eps * scale
    if ok and ratio <= _cond_limit(x.dtype):
        q, r2, ok, ratio = _cholesky_qr(q1, backend)
        ok = ok and ratio <= 2.0
        r = r2 @ r1
        if ok and coeff is not None:
            # As in the torch version: orthogonal to ``against`` to working precision (the Krylov
            # solver's Frobenius certificate assumes orthonormal bases), by a third pass if needed.
            c3 = skinny_matmul(against.mT, q, backend=backend).to(x.dtype)
            worst = float(c3.abs().max())
            ok = worst <= 1e-3
            if ok and worst > 8 * torch.finfo(x.dtype).eps:
                apply_correction_(q, against, -c3.mT, backend=backend)
                q, r3, ok, ratio = _cholesky_qr(q, backend)
                ok = ok and ratio <= 2.0
                coeff = coeff + c3 @ r.to(x.dtype)
                r = r3 @ r
        if ok:
            return q, r.to(x.dtype), coeff
    return orthonormalize_torch(x, against, generator=generator)


# ---- front-end ----------------------------------------------------------------------------------
# From this many columns a fp32 block takes CholeskyQR2 on the torch backend too (a Gram product,
# a b×b Cholesky and a triangular solve, twice): Householder QR of a tall block plus the SVD of its R
# runs at a fraction of the matrix-product rate, and blocks this wide come from Δs with hundreds of
# values above σ*. Narrow blocks keep the torch version.
CHOLESKY_QR_MIN_COLUMNS = 64


def orthonormalize(x: torch.Tensor, against: torch.Tensor | None = None, backend: str = "torch",
                   generator: torch.Generator | None = None
                   ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Dispatch to the torch (Householder + deflation) or CholeskyQR2 version; same contract.

    ``backend``: a resolved name (``resolve_backend``); fp64 blocks always take the torch version,
    fp32 blocks CholeskyQR2 on the Triton backend or from :data:`CHOLESKY_QR_MIN_COLUMNS` columns.
    """
    if x.dtype != torch.float64 and (backend == "triton" or x.shape[1] >= CHOLESKY_QR_MIN_COLUMNS):
        return cholesky_qr2(x, against, backend=backend, generator=generator)
    return orthonormalize_torch(x, against, generator=generator)
