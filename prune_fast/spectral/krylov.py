"""Top singular triplets by block Lanczos bidiagonalisation, with a certificate in threshold mode.

One solver serves both questions PRUNE asks of a matrix A (m×n, seen only through products):

- ``topk_svd(A, k=1)``: σ_max(W0), i.e. σ*;
- ``topk_svd(A, threshold=τ)``: every triplet of Δ with σ ≥ τ = σ*, however many there are, and a
  proof that no other singular value of Δ reaches τ.

Algorithm: block Golub–Kahan–Lanczos (``lanczos.py``), started from an orthonormal block V₁
(Gaussian, optionally warm-started with last step's right singular vectors). Ritz triplets are
returned only after their residuals are measured explicitly. Wide matrices are solved as Aᵀ.
Blocks widen while values keep crossing τ: when most of the basis lies above τ (a repeated value,
or hundreds of values above it) the next block takes twice that many columns, its new ones
Gaussian, so a value repeated more often than the block is wide is still reached. Where 16 or more
values already lie in the band (a dense low-rank Δ such as a MEMIT checkpoint's), a randomized range
finder grown until the Frobenius tail certifies takes over (``_Solver._range_finder``): 200 values
above τ at 1600×6400 in two wide rounds (a 269-column basis) instead of seven widening Krylov blocks
(498 columns).

The certificate (threshold mode, ``certificate.py``): the call returns only when the basis spans
the short side, a direct float64 solve (``direct.py``) gave the answer, the deterministic Frobenius
tail bound lies below τ, or a randomized bound on the deflated rest (Halko–Martinsson–Tropp's
Gaussian-norm bound, Kuczyński–Woźniakowski's Lanczos bound) does, with failure probability at most
``failure_probability`` per call. A value within the rounding margin ρ = ``tol``·θ₁ of τ may be
decided either way.

Scale: when ‖A‖_F lies outside [2⁻⁹⁰, 2⁹⁰] (or a product under/overflows) the operator is wrapped
in a power-of-two :class:`~prune_fast.spectral.operators.ScaledOperator` and the threshold scaled alike, so
a Δ of 1e-30 or 1e30 is solved like one of order 1; results are scaled back exactly.

Random numbers come from ``generator`` or, when none is given, a private generator with a fixed seed
on the operator's device: the caller's global random stream is never read or advanced, and equal
inputs give bit-identical outputs.
"""
from __future__ import annotations

import math

import torch

from ..kernels.orthonormalize import gaussian, orthonormalize, private_generator
from .certificate import (DEFAULT_FAILURE_PROBABILITY, FRESH_COLUMNS, RandomizedBound, frobenius_sq_bound,
                          frobenius_tail_bound)
from .direct import direct_triplets
from .gram import columns_gram
from .lanczos import Chain, explicit_residuals, value_error_bound
from .operators import DenseOperator, MatrixOperator, ScaledOperator, TransposedOperator, magnitude
from .triplets import Triplets, default_tol, orient

__all__ = ["topk_svd", "prefer_direct", "direct_affordable"]


def _as_operator(a: torch.Tensor | MatrixOperator) -> MatrixOperator:
    return DenseOperator(a) if isinstance(a, torch.Tensor) else a


# Outside [2^-90, 2^90] an operator is rescaled by a power of two (see the module docstring): its
# products with orthonormal blocks then stay normal and finite in fp32 (the orthonormalisation
# rescales its own blocks beyond 2^±40).
_SAFE_EXPONENT = 90
# Basis width up to which convergence is tested after every block (see topk_svd).
_CHECK_EVERY_BLOCK_UP_TO = 128
# Columns the range finder (``_Solver._range_finder``) draws beyond the values it expects: the
# returned triplets' residuals then reach the Krylov route's level (a 200-value Δ at 1600×6400:
# 1.2e-6 of σ₁, against 8e-6 in a trial that left 3 spare columns).
_RANGE_OVERSAMPLE = 16
# The range finder is tried once per call, at the first check where this many values (and most of
# the basis) lie in the band; fewer values above τ converge in a few Krylov blocks anyway.
_RANGE_MIN_VALUES = 16


def _unsafe_exponent(norm: float) -> int:
    """Binary exponent of ``norm`` when it lies outside the safe range, else 0."""
    if not (norm > 0.0) or not math.isfinite(norm):
        return 0
    e = math.frexp(norm)[1]
    return e if abs(e) > _SAFE_EXPONENT else 0


def topk_svd(
    a: torch.Tensor | MatrixOperator,
    *,
    k: int | None = None,
    threshold: float | None = None,
    start_u: torch.Tensor | None = None,
    start_v: torch.Tensor | None = None,
    block: int = 8,
    oversample: int = 4,
    tol: float | None = None,
    value_tol: float | None = None,
    frobenius_sq: float | None = None,
    generator: torch.Generator | None = None,
    backend: str = "torch",
    failure_probability: float = DEFAULT_FAILURE_PROBABILITY,
    give_up_blocks: float | None = None,
) -> Triplets:
    """Top-``k`` singular triplets of ``a``, or all with σ ≥ ``threshold`` (exactly one of the two).

    Threshold mode returns only with a certificate that no other singular value reaches the
    threshold (see ``certificate.py``; ``failure_probability`` bounds the randomized one).
    ``start_u``/``start_v``: previous left/right singular vectors to warm-start from (optional).
    ``frobenius_sq``: ‖A‖_F² (or an upper bound) if known; computed here for a tensor ``a``.
    ``value_tol``: top-k mode, when only the values matter (σ*): a wanted value also counts as
    converged once its gap bound r²/δ ≤ ``value_tol``·θ₁ (``lanczos.value_error_bound``), which
    needs far fewer passes than a residual of ``tol`` when the top values are clustered.
    ``give_up_blocks``: top-k mode, for a caller with a cheaper route for slow cases (σ* of a
    clustered W0, ``gram.py``): from the third block on, when the top residual's decay per block
    predicts more than this many further blocks, return at once with ``converged=False``. The
    prediction reads only the iterates, so the same input always takes the same route.
    ``generator``: source of the Gaussian blocks; None uses a private one with a fixed seed.
    ``backend``: resolved kernel backend (``"torch"``/``"triton"``) for the orthonormalisations;
    products go through the operator (which carries its own backend).

    Example::

        t = topk_svd(w0, k=1)                       # σ* = t.s[0]
        t = topk_svd(delta, threshold=float(t.s[0]))  # every σ(Δ) ≥ σ*, certified
    """
    if (k is None) == (threshold is None):
        raise ValueError("topk_svd needs exactly one of k or threshold")
    if value_tol is not None and k is None:
        raise ValueError("value_tol applies to top-k mode only")
    if threshold is not None and not (threshold > 0.0 and math.isfinite(threshold)):
        raise ValueError(f"threshold must be positive and finite, got {threshold!r}")
    if give_up_blocks is not None and k is None:
        raise ValueError("give_up_blocks applies to top-k mode only")
    if not 0.0 < failure_probability < 1.0:
        raise ValueError(f"failure_probability must lie in (0, 1), got {failure_probability!r}")
    dense = a if isinstance(a, torch.Tensor) else None
    op = _as_operator(a)
    gen = generator if generator is not None else private_generator(op.device)
    if threshold is not None and frobenius_sq is None and dense is not None:
        frobenius_sq = frobenius_sq_bound(dense)
    exponent = _unsafe_exponent(math.sqrt(frobenius_sq)) if frobenius_sq else 0
    solver = _Solver(op, dense, k, threshold, start_u, start_v, block, oversample, tol, value_tol, frobenius_sq,
                     gen, backend, failure_probability, give_up_blocks)
    return solver.run(exponent)


class _Solver:
    """One call of :func:`topk_svd`: the search chain (phase A), its checks, and the certificate
    (Frobenius on the search chain, or a fresh deflated chain for the randomized bounds, phase B)."""

    def __init__(self, op, dense, k, threshold, start_u, start_v, block, oversample, tol, value_tol, frobenius_sq,
                 generator, backend, failure_probability, give_up_blocks=None):
        self.op0, self.dense = op, dense
        self.k, self.threshold0, self.frobenius_sq0 = k, threshold, frobenius_sq
        self.start_u, self.start_v = start_u, start_v
        self.block, self.oversample, self.tol0, self.value_tol = block, oversample, tol, value_tol
        self.generator, self.backend, self.delta = generator, backend, failure_probability
        self.give_up_blocks = give_up_blocks

    # -- set-up ----------------------------------------------------------------------------------
    def run(self, exponent: int) -> Triplets:
        out = self._solve(exponent)
        if out is None:  # a product under- or overflowed: rescale by the operator's magnitude, redo
            norm = magnitude(self.op0)
            exponent = math.frexp(norm)[1] if norm > 0.0 and math.isfinite(norm) else 0
            out = self._solve(exponent, rescaled=True)
        return out

    def _randn(self, rows: int, cols: int) -> torch.Tensor:
        return gaussian(rows, cols, self.dt, self.dev, self.generator)

    def _orth(self, x: torch.Tensor, against: torch.Tensor | None = None):
        return orthonormalize(x, against, backend=self.backend, generator=self.generator)

    def _solve(self, exponent: int, rescaled: bool = False) -> Triplets | None:
        op = self.op0 if exponent == 0 else ScaledOperator(self.op0, -exponent)
        self.exponent = exponent
        start_u, start_v = self.start_u, self.start_v
        self.transposed = op.shape[0] < op.shape[1]
        if self.transposed:
            op = TransposedOperator(op)
            start_u, start_v = start_v, start_u
        self.op = op
        m, n = op.shape
        self.m, self.n = m, n
        self.dt, self.dev = op.dtype, op.device
        self.tol = default_tol(self.dt) if self.tol0 is None else self.tol0
        self.threshold = None if self.threshold0 is None else math.ldexp(self.threshold0, -exponent)
        self.fro = None if self.frobenius_sq0 is None else math.ldexp(self.frobenius_sq0, -2 * exponent)
        self.round_no = 0
        self.range_tried = False
        self.top_residuals: list[tuple[int, float]] = []  # (blocks, top residual / θ₁) at each check
        if n == 0 or m == 0 or self.k == 0:
            return self._finish(self._empty())

        want_k = 0 if self.k is None else min(self.k, n)
        starts = [] if start_v is None or start_v.shape[1] == 0 else [start_v.to(self.dt)]
        n_start = min(sum(s.shape[1] for s in starts), n)
        b = min(n, max(self.block, want_k + self.oversample, n_start + self.oversample))
        n_gauss = b - min(n_start, b)
        chain = Chain(self, torch.cat(starts + [self._randn(n, n_gauss)], 1)[:, :b])
        if not rescaled and not _product_in_range(chain.first_product):
            return None
        # Round 1 of the randomized certificate deflates nothing (B = A), so the search chain's own
        # Gaussian start columns serve it for as long as no value reaches τ − ρ.
        self.round1 = None
        if self.threshold is not None and n_gauss > 0:
            self.round_no = 1
            self.round1 = RandomizedBound(chain.r_start[:, b - n_gauss:], n, self.delta / 2)
        return self._search(chain, want_k)

    def _empty(self) -> Triplets:
        z = torch.zeros
        return Triplets(z(self.m, 0, dtype=self.dt, device=self.dev), z(0, dtype=torch.float64),
                        z(self.n, 0, dtype=self.dt, device=self.dev), 0.0, 0.0, 0, 0, True,
                        "exact" if self.threshold is not None else "none")

    # -- phase A: the search chain ----------------------------------------------------------------
    def _search(self, chain: Chain, want_k: int) -> Triplets:
        n, threshold = self.n, self.threshold
        verified_failures = 0
        n_want = want_k
        since_check = 0
        pending: torch.Tensor | None = None  # directions a failed certificate round found, to add
        while True:
            ub, vb = chain.u_basis.view, chain.v_basis.view
            z = chain.close()
            dim = vb.shape[1]
            remaining = n - dim
            b_last = chain.u_last.shape[1]
            # The dense SVD of the projected dim×dim matrix grows like dim³ and outweighs a block's
            # two products beyond dim ≈ 128 (13 ms at 368, against ~4 ms of products at 1600×6400).
            # Past that size, test convergence only every ~dim/128 blocks (every block while the
            # blocks are wide against the basis, as when hundreds of values lie above τ).
            since_check += 1
            due = (since_check * _CHECK_EVERY_BLOCK_UP_TO >= dim or remaining <= b_last or 4 * b_last >= dim
                   or pending is not None)
            if due:
                since_check = 0
                p, theta, qt = torch.linalg.svd(chain.t_mat)
                scale = float(theta[0])
                rho = self.tol * scale
                if threshold is None:
                    if scale == 0.0:
                        return self._finish(self._empty())
                    n_want = min(want_k, dim)
                else:
                    # Values in the rounding band [τ − ρ, τ) are deflated (certified against) too.
                    n_want = int((theta >= threshold - rho).sum()) if scale > 0.0 else 0
            if due and n_want > dim // 2 and n_want >= _RANGE_MIN_VALUES and remaining > 0:
                # Most of the basis lies above τ, and many values: likely more beyond (a low-rank Δ
                # such as a long MEMIT run's, or a repeated value). A range finder grown until the
                # Frobenius tail certifies costs a few wide passes instead of Krylov blocks that
                # widen one after another; it hands back (None) where the mass left lies below τ.
                out = self._try_range_finder(theta, n_want, float((chain.t_mat ** 2).sum()), chain.products)
                if out is not None:
                    return out
            saturated = threshold is not None and n_want > dim // 2
            if saturated:  # most of the basis lies above τ: more values (or copies) are likely beyond
                b_next = min(remaining, max(b_last, 2 * n_want + self.oversample))
            else:
                b_next = min(remaining, max(b_last, min(2 * b_last, max(self.block, n_want + self.oversample))))
            widen = None  # new columns beyond z, orthonormalised only if the chain goes on
            if remaining > 0:
                extra = b_next - b_last
                parts = ([self._randn(n, extra)] if extra > 0 else []) + ([pending] if pending is not None else [])
                pending = None
                if remaining < b_last + sum(t.shape[1] for t in parts):
                    x = self._randn(n, remaining)  # complete the basis; coupling read off below
                    v_next, _, _ = self._orth(x, against=vb)
                    s_coupling = v_next.T @ z
                else:
                    # z alone first: its coupling gives the residuals, and a wide block of Gaussian
                    # columns (hundreds when many values lie above τ) is not orthonormalised on the
                    # step that returns.
                    v_next, s_coupling, _ = self._orth(z, against=vb)
                    widen = torch.cat(parts, 1) if parts else None
                if due:
                    res = torch.linalg.vector_norm(s_coupling.to(torch.float64) @ p[-b_last:, :dim], dim=0)
            else:
                v_next = None
                res = torch.zeros(dim, dtype=torch.float64)
            if not due:
                chain.extend(v_next if widen is None else self._widen(vb, v_next, widen))
                continue
            wanted_ok = bool((res[:n_want] <= self.tol * scale).all())
            if self.value_tol is not None and not wanted_ok:
                wanted_ok = bool((value_error_bound(theta, res, n_want) <= self.value_tol * scale).all())
            if threshold is None:
                certified, bound, how = True, 0.0, "none"
                if not wanted_ok and v_next is not None and self._too_slow(chain.blocks, theta, res):
                    u_k, v_k = ub @ p[:, :n_want].to(self.dt), vb @ qt[:n_want].T.to(self.dt)
                    nxt = float(theta[n_want]) if n_want < dim else 0.0
                    return self._finish(Triplets(u_k, theta[:n_want].clone(), v_k, float(res[0]) / scale, nxt, dim,
                                                 chain.products, False, "none", converged=False))
            else:
                certified, bound, how = self._certify_search(chain, theta, n_want, dim, remaining)
            nxt = float(theta[n_want]) if n_want < dim else 0.0
            # Ready to certify with a fresh chain: the wanted triplets converged, the next Ritz value's
            # residual interval lies below the band, and the basis is not saturated with values above.
            ready = (threshold is not None and wanted_ok and not saturated and v_next is not None
                     and (n_want >= dim or nxt + float(res[n_want]) < threshold - rho))
            if (wanted_ok and certified) or v_next is None or ready:
                n_ret = n_want if threshold is None else int((theta[:n_want] >= threshold).sum())
                u_k = ub @ p[:, :n_ret].to(self.dt)
                v_k = vb @ qt[:n_ret].T.to(self.dt)
                s_k = theta[:n_ret].clone()
                residuals = explicit_residuals(chain.z_basis.view @ p[:, :n_ret].to(self.dt), s_k, v_k)
                explicit = float(residuals.max()) / scale if n_ret else 0.0
                # Accept when the explicit residual agrees with the cheap estimate (rounding aside), or
                # the basis is complete and nothing more can be gained.
                accepted = explicit <= max(4 * self.tol, 16 * default_tol(self.dt))
                if self.value_tol is not None and not accepted:
                    bound_v = value_error_bound(theta, torch.cat([residuals, res[n_ret:]]), n_ret)
                    accepted = bool((bound_v <= 4 * self.value_tol * scale).all())
                if not (accepted or v_next is None or verified_failures >= 3):
                    verified_failures += 1
                elif (wanted_ok and certified) or v_next is None:
                    next_value = nxt if threshold is None or n_ret == n_want else float(theta[n_ret])
                    cert = "exact" if threshold is not None and v_next is None else how
                    out = Triplets(u_k, s_k, v_k, explicit, next_value, dim, chain.products, remaining == 0, cert,
                                   0.0 if cert in ("exact", "none") else bound,
                                   self.delta if cert == "randomized" else 0.0)
                    return self._finish(out)
                else:
                    # Phase B: prove the rest lies below τ from a fresh Gaussian chain on A(I − V₀V₀ᵀ).
                    v0 = vb @ qt[:n_want].T.to(self.dt) if n_want else vb[:, :0]
                    status, bound, found = self._certify_fresh(v0, theta[:n_want], scale)
                    if status == "direct":
                        return self._direct()
                    if status in ("randomized", "frobenius", "exact"):
                        next_value = nxt if n_ret == n_want else float(theta[n_ret])
                        out = Triplets(u_k, s_k, v_k, explicit, next_value, dim, chain.products + self.products_b,
                                       False, status, 0.0 if status == "exact" else bound,
                                       self.delta if status == "randomized" else 0.0)
                        return self._finish(out)
                    pending = found  # more values at or above the band: search on with them
            width = v_next.shape[1] + (0 if widen is None else widen.shape[1])
            if saturated:
                # The widening doubles the basis until it holds every value above τ: where the values
                # still expected would take it past half the short side, the chain would end in the
                # switch below after more wide steps; switch now.
                width = max(width, 2 * self._expected_count(theta, n_want, float((chain.t_mat ** 2).sum()))
                            + self.oversample - dim)
            if (self.dense is not None and threshold is not None and not certified and pending is None
                    and dim + width > n // 2):
                # The basis would cover half the short side: one dense solve is cheaper, or the range
                # finder where the values expected fit in its first round (a low-rank Δ).
                out, t_sq = None, float((chain.t_mat ** 2).sum())
                if self._expected_count(theta, n_want, t_sq) <= n // 4:
                    out = self._try_range_finder(theta, n_want, t_sq, chain.products)
                return out or self._direct()
            more = [t for t in (widen, pending) if t is not None]
            if more:
                v_next = self._widen(vb, v_next, torch.cat(more, 1) if len(more) > 1 else more[0])
                pending = None
            chain.extend(v_next)

    def _too_slow(self, blocks: int, theta: torch.Tensor, res: torch.Tensor) -> bool:
        """Top-k mode with ``give_up_blocks``: whether the top residual, decaying at its rate since the
        last check, needs more than that many further blocks to reach the level the stopping rule
        accepts (the gap bound r²/δ ≤ value_tol·θ₁ with δ = θ₁ − θ₂, or the residual tol)."""
        if self.give_up_blocks is None or theta.numel() < 2 or float(theta[0]) <= 0.0:
            return False
        top = float(theta[0])
        r = float(res[0]) / top
        history = self.top_residuals
        history.append((blocks, r))
        if blocks < 3 or len(history) < 2:
            return False
        (b0, r0), (b1, r1) = history[-2], history[-1]
        if r1 <= 0.0 or b1 <= b0:
            return False
        gap = max((top - float(theta[1])) / top, 0.0)
        target = max(self.tol, math.sqrt((self.value_tol or 0.0) * gap))
        if r1 <= target:
            return False
        rate = (r1 / r0) ** (1.0 / (b1 - b0)) if r0 > 0.0 else 1.0
        if rate >= 1.0:
            return True
        return math.log(target / r1) / math.log(rate) > self.give_up_blocks

    def _expected_count(self, theta: torch.Tensor, n_want: int, t_sq: float) -> int:
        """An estimate (not a bound) of how many values reach the band: the ``n_want`` found, plus the
        Frobenius mass the basis has not captured, ‖A‖_F² − ‖T‖_F², counted at the found values' mean
        square (not the smallest: a Ritz value only now crossing τ is often an unconverged large
        one). A cost-model input only: the answer never depends on it."""
        if self.fro is None or n_want == 0:
            return n_want
        mean_sq = float((theta[:n_want] ** 2).sum()) / n_want
        return n_want + int(max(self.fro - t_sq, 0.0) / mean_sq)

    def _try_range_finder(self, theta: torch.Tensor, n_want: int, t_sq: float, products: int) -> Triplets | None:
        """:meth:`_range_finder`, once per call, for a dense matrix in threshold mode without a warm
        start (a tracker's warm-started solves keep their Krylov route)."""
        if (self.range_tried or self.threshold is None or self.fro is None or self.dense is None
                or self.start_v is not None or n_want == 0):
            return None
        self.range_tried = True
        return self._range_finder(theta, n_want, t_sq, products)

    def _range_finder(self, theta: torch.Tensor, n_want: int, t_sq: float, products: int) -> Triplets | None:
        """Every triplet above τ from a randomized range finder of the short side, grown block by block
        until the Frobenius certificate holds (Halko, Martinsson & Tropp, SIAM Review 53 (2011), §4.4,
        with the exact tail ‖A‖_F² − ‖AQ‖_F² of Martinsson & Voronin, SIAM J. Sci. Comput. 38 (2016)).

        Each round draws Ω (m×b), orthonormalises Aᵀ Ω against the basis Q so far (n×ℓ, the short
        side) and appends B = A Q_new; the singular values of AQ come from the ℓ×ℓ float64 Gram
        matrix of B. The first round's width is the count the Krylov block's Ritz values and the
        Frobenius mass predict (``_expected_count``, at most a quarter of the short side) plus an
        oversampling, later ones the mass still missing over the smallest value found. Stops when
        σ_{k+1}(A)² ≤ θ_{k+1}² + ‖A‖_F² − ‖B‖_F² lies below τ (the certificate of the Krylov route,
        ``certificate.py``; ‖B‖_F² is the trace of B's Gram matrix) and the returned triplets'
        explicit residuals ‖Aᵀu − σv‖ (one more pass) are at the solver's level. A round whose space
        already holds values below τ while the tail does not certify gets one more round sized for
        the mass left at the size of the next value (a low-rank Δ straddling τ); after that, or when
        that would pass half the short side (a dense Δ with mass below τ), it returns ``None`` for
        the Krylov chain to go on, as it does when the residuals are not reached. Where the values
        above τ alone would fill half the short side: the dense solve.
        """
        m, n, tau = self.m, self.n, self.threshold
        # The first count comes from unconverged Ritz values (often far too many when they are
        # small): capped at a quarter of the short side, the next rounds size from what is left.
        width = min(self._expected_count(theta, n_want, t_sq), n // 4) + _RANGE_OVERSAMPLE
        q = b_all = None
        below_tried = False
        while True:
            dim = 0 if q is None else q.shape[1]
            if dim + width > n // 2:
                # that many values above τ: one dense solve is cheaper; that much mass below: Krylov
                return None if below_tried else self._direct()
            q_new, _, _ = self._orth(self.op.rmatmul(self._randn(m, width)), against=q)
            b_new = self.op.matmul(q_new)
            products += 2
            q = q_new if q is None else torch.cat([q, q_new], 1)
            b_all = b_new if b_all is None else torch.cat([b_all, b_new], 1)
            dim = q.shape[1]
            gram = columns_gram(b_all.to(torch.float64))
            captured = float(gram.diagonal().sum())
            lam, w = torch.linalg.eigh(gram)
            s_all, w = lam.flip(0).clamp_min(0.0).sqrt(), w.flip(1)
            scale = float(s_all[0])
            rho = self.tol * scale
            k_band = int((s_all >= tau - rho).sum())
            nxt = float(s_all[k_band]) if k_band < dim else 0.0
            bound = self._frobenius_bound(nxt, captured, dim) + rho
            if bound < tau:
                break
            left = max(self.fro - captured, 0.0)
            if k_band < dim - _RANGE_OVERSAMPLE // 2:
                # The values above τ are in, mass below them is not. A low-rank Δ's few values just
                # below τ: one more round holding that mass at the next value's size; a dense tail
                # (more than that, or already tried): Krylov's randomized certificate.
                if below_tried or nxt == 0.0:
                    return None
                below_tried = True
                width = int(left / nxt ** 2) + _RANGE_OVERSAMPLE
            else:
                width = int(left / float(s_all[k_band - 1]) ** 2) + _RANGE_OVERSAMPLE
        n_ret = int((s_all[:k_band] >= tau).sum())
        s_k = s_all[:n_ret].clone()
        w_k = w[:, :n_ret]
        v_k = q @ w_k.to(self.dt)
        u_k = b_all @ (w_k / s_k).to(self.dt)
        residuals = explicit_residuals(self.op.rmatmul(u_k), s_k, v_k)
        products += 1
        explicit = float(residuals.max()) / scale if n_ret else 0.0
        if explicit > max(4 * self.tol, 16 * default_tol(self.dt)):
            return None
        next_value = nxt if n_ret == k_band else float(s_all[n_ret])
        return self._finish(Triplets(u_k, s_k, v_k, explicit, next_value, dim, products, False, "frobenius",
                                     math.ldexp(bound, self.exponent), 0.0))

    def _widen(self, vb: torch.Tensor, v_next: torch.Tensor, new: torch.Tensor) -> torch.Tensor:
        """``v_next`` followed by the orthonormalised part of ``new`` outside span(vb, v_next)."""
        v_more, _, _ = self._orth(new, against=torch.cat([vb, v_next], 1))
        return torch.cat([v_next, v_more], 1)

    def _certify_search(self, chain: Chain, theta: torch.Tensor, n_want: int, dim: int,
                        remaining: int) -> tuple[bool, float, str]:
        """Certificates available on the search chain itself: complete basis, Frobenius tail, and
        round 1 of the randomized bounds (nothing deflated, the chain's own Gaussian start)."""
        if remaining == 0:
            return True, 0.0, "exact"
        tau = self.threshold
        rho = self.tol * float(theta[0])
        nxt = float(theta[n_want]) if n_want < dim else 0.0
        if self.fro is not None:
            bound_f = self._frobenius_bound(nxt, float((chain.t_mat ** 2).sum()), dim) + rho
            if bound_f < tau:
                return True, math.ldexp(bound_f, self.exponent), "frobenius"
        rnd = self.round1
        if rnd is not None:
            theta_hat = float(theta[0])
            if theta_hat >= tau - rho:
                self.round1 = None  # something reaches the band: round 1 cannot certify
            else:
                bound_r = rnd.bound(chain.t_mat, theta_hat, chain.blocks - 1, tau - rho) + rho
                if bound_r < tau:
                    return True, math.ldexp(bound_r, self.exponent), "randomized"
        return False, math.inf, "pending"

    def _frobenius_bound(self, nxt: float, t_sq: float, dim: int, removed_sq: float = 0.0) -> float:
        return frobenius_tail_bound(nxt, self.fro, t_sq, dim, (self.m, self.n), torch.finfo(self.dt).eps, removed_sq)

    # -- phase B: a fresh chain on the deflated operator ------------------------------------------
    def _certify_fresh(self, v0: torch.Tensor, theta0: torch.Tensor, scale: float
                       ) -> tuple[str, float, torch.Tensor | None]:
        """Bound ‖A(I − V₀V₀ᵀ)‖ from a chain started at a fresh Gaussian block (independent of V₀).

        Returns ``(status, bound, found)``: status ``"randomized"``/``"frobenius"``/``"exact"`` with the
        bound (unscaled), ``"found"`` with right vectors of values ≥ τ − ρ the deflated space still
        holds, or ``"direct"`` when a dense solve is cheaper than the blocks the bound still needs.
        """
        tau, n = self.threshold, self.n
        rho = self.tol * scale
        self.round_no += 1
        rnd = RandomizedBound(torch.zeros(0, 0), n, self.delta * 0.5 ** self.round_no)
        width = min(FRESH_COLUMNS, n - v0.shape[1])
        self.products_b = 0
        if width <= 0:
            return "exact", 0.0, None
        chain = Chain(self, self._randn(n, width), deflate=v0)
        rnd.coords, rnd.n_gauss = chain.r_start.to(torch.float64), width
        removed_sq = float((theta0 ** 2).sum())  # ‖A V₀‖_F² = Σ θ_i² for Ritz vectors V₀
        while True:
            z = chain.close()
            self.products_b = chain.products
            dim = chain.v_basis.view.shape[1]
            remaining = n - v0.shape[1] - dim
            theta_hat = float(torch.linalg.matrix_norm(chain.t_mat, 2))
            if theta_hat >= tau - rho:
                p, theta, qt = torch.linalg.svd(chain.t_mat)
                keep = max(1, int((theta >= tau - rho).sum()))
                return "found", math.inf, chain.v_basis.view @ qt[:keep].T.to(self.dt)
            if remaining <= 0:
                return "exact", 0.0, None
            if self.fro is not None:
                bound_f = self._frobenius_bound(theta_hat, float((chain.t_mat ** 2).sum()), dim, removed_sq) + rho
                if bound_f < tau:
                    return "frobenius", math.ldexp(bound_f, self.exponent), None
            bound_r = rnd.bound(chain.t_mat, theta_hat, chain.blocks - 1, tau - rho) + rho
            if bound_r < tau:
                return "randomized", math.ldexp(bound_r, self.exponent), None
            if self.dense is not None and _direct_is_cheaper(self.m, self.n, rnd.blocks_needed, dim, width):
                return "direct", math.inf, None
            x = z if remaining >= z.shape[1] else z[:, :remaining]
            v_next, _, _ = self._orth(x, against=chain.against())
            chain.extend(v_next)

    def _direct(self) -> Triplets:
        """The whole answer from one float64 solve of the dense matrix (exact to rounding)."""
        return direct_triplets(self.dense, self.threshold0)

    def _finish(self, out: Triplets) -> Triplets:
        """Undo the power-of-two scaling (exact) and the transposition."""
        if self.exponent:
            out.s = out.s * math.ldexp(1.0, self.exponent)
            out.next_value = math.ldexp(out.next_value, self.exponent)
        return orient(out, self.transposed)


def _product_in_range(y: torch.Tensor) -> bool:
    """Whether a first product is finite and of a size whose squares fp32 holds (else rescale)."""
    if y.numel() == 0:
        return True
    lo, hi = torch.aminmax(y)
    amax = max(-float(lo), float(hi))
    if not math.isfinite(amax):
        return False
    return amax == 0.0 or abs(math.frexp(amax)[1]) <= _SAFE_EXPONENT


# Below this short side, or when a large share of the spectrum is wanted, one dense float64 solve
# of the (small) matrix costs less than Krylov iterations: e.g. a 128-wide MLP weight of the test
# model, or the r×r core of a factored Δ after many edits that each cross σ*. With a quarter of
# the spectrum wanted the direct route wins up to large cores (measured, 35 % wanted: 38 vs 231 ms
# at 600×600, 118 vs 700 ms at 1000×1000, 360 vs 2083 ms at 1500×1500), so it is bounded by its
# own cost, m·n·min(m, n) ≤ 2³³ (a 2048² core), which keeps weight-sized matrices (1600×6400:
# 1.6e10) on the Krylov path.
DIRECT_MAX_SHORT_SIDE = 64
DIRECT_MAX_WORK_FOR_MANY = 2 ** 33


def direct_affordable(shape: tuple[int, int]) -> bool:
    """Whether one dense float64 solve of a matrix of ``shape`` is within :data:`DIRECT_MAX_WORK_FOR_MANY`."""
    return shape[0] * shape[1] * min(shape) <= DIRECT_MAX_WORK_FOR_MANY


def prefer_direct(shape: tuple[int, int], expected: int) -> bool:
    """Whether :func:`direct_triplets` beats the Krylov solver for ``expected`` wanted values."""
    short = min(shape)
    return short <= DIRECT_MAX_SHORT_SIDE or (4 * expected >= short and direct_affordable(shape))


def _direct_is_cheaper(m: int, n: int, blocks_needed: int, dim: int, b: int) -> bool:
    """Whether one dense float64 solve of the m×n matrix costs less than the ``blocks_needed`` blocks
    of width ``b`` the randomized bound still needs beyond a ``dim``-wide basis (a cost model in
    milliseconds fitted on the 2-core CPU machine; only the ratio matters)."""
    direct = 5e-9 * m * n * n + 2e-7 * n ** 3
    future = dim + blocks_needed * b // 2
    per_step = 2 * 9e-9 * m * n * b + 7e-8 * (m + n) * future * b + 2e-7 * future ** 3
    return blocks_needed * per_step > direct
