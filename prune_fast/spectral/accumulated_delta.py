"""The raw accumulated update Δ = Σ u_i v_iᵀ of one weight, kept in the cheapest exact form.

Factored form (while it is smaller than a dense matrix):

    Δ = Q_a C Q_bᵀ,   Q_a: m×r_a, Q_b: n×r_b orthonormal (fp32), C: r_a×r_b (float64).

Appending ``u vᵀ`` (u: m×r, v: n×r) orthogonalises u against Q_a and v against Q_b (CGS2), grows
the bases by the new directions and adds ``[p_a; R_a][p_b; R_b]ᵀ`` to C: O((m+n)(r_a+r)r) work,
no pass over an m×n matrix. The singular values of Δ are exactly those of the small core C, whose
top triplets come from a direct SVD when C is tiny and from the warm-started block Krylov solver
otherwise; mapped back through Q_a, Q_b they are Δ's. This is the QR(A), QR(B), SVD(R_A R_Bᵀ)
route of the design, kept up to date column block by column block instead of redone.

Dense form: once r_a·m + r_b·n + r_a·r_b ≥ m·n the factors would outweigh Δ itself, so Δ becomes a
dense fp32 matrix and triplets come from the block Krylov solver on Δ, warm-started.
"""
from __future__ import annotations

from collections.abc import Callable

import torch

from ..kernels.orthonormalize import orthonormalize
from .certificate import frobenius_sq_bound
from .direct import direct_triplets
from .krylov import direct_affordable, prefer_direct, topk_svd
from .lanczos import append_columns
from .triplets import Triplets

# The dense solve stays the route after an exact ending while 1/_DIRECT_SHARE of the short side's
# values lie above τ; with fewer, after _EXACT_STREAK Krylov solves in a row that ended in it, for
# the next _DIRECT_RUN solves, then Krylov is tried again (see AccumulatedDelta._solve).
_DIRECT_SHARE = 8
_EXACT_STREAK = 2
_DIRECT_RUN = 8
# Relative residual asked of the Krylov solver on the float64 core: finer than the factors Q_a, Q_b
# can represent is wasted work (fp32 by default; a float64 tracker state asks for more).
_CORE_TOL = {torch.float32: 1e-7, torch.float64: 1e-13}


class AccumulatedDelta:
    """Δ for a weight of shape (m, n), stored in ``dtype`` (fp32, or fp64 for fp64 weights).

    ``backend``: resolved kernel backend for orthonormalisation and the Krylov solver.
    """

    def __init__(self, m: int, n: int, dtype: torch.dtype, device: torch.device, backend: str = "torch"):
        self.m, self.n, self.dtype, self.device, self.backend = m, n, dtype, device, backend
        self._qa = torch.empty(m, 0, dtype=dtype, device=device)
        self._qb = torch.empty(n, 0, dtype=dtype, device=device)
        self._core = torch.zeros(0, 0, dtype=torch.float64, device=device)
        self._ra = self._rb = 0
        self.dense: torch.Tensor | None = None
        # Set when a solve (of the dense Δ or of the factored core) ended in a full solve with many
        # values above τ: the next solves go straight to the dense solve (see _solve).
        self._direct_next = False
        # Krylov solves in a row that ended in the full solve, and dense solves left before Krylov
        # is tried again (see _solve).
        self._exact_streak = 0
        self._direct_left = 0

    # -- state ---------------------------------------------------------------------------------
    @property
    def is_dense(self) -> bool:
        return self.dense is not None

    @property
    def rank(self) -> int | None:
        """Rank of the stored factorisation (None when dense)."""
        return None if self.is_dense else min(self._ra, self._rb)

    @property
    def qa(self) -> torch.Tensor:
        return self._qa[:, : self._ra]

    @property
    def qb(self) -> torch.Tensor:
        return self._qb[:, : self._rb]

    @property
    def core(self) -> torch.Tensor:
        return self._core[: self._ra, : self._rb]

    def frobenius_sq(self) -> float:
        return frobenius_sq_bound(self.dense if self.is_dense else self.core)

    def state_tensors(self) -> dict[str, torch.Tensor]:
        if self.is_dense:
            return {"delta": self.dense.contiguous()}
        return {"qa": self.qa.contiguous(), "qb": self.qb.contiguous(), "core": self.core.contiguous()}

    @classmethod
    def from_state_tensors(cls, m: int, n: int, dtype: torch.dtype, device: torch.device,
                           tensors: dict[str, torch.Tensor], backend: str = "torch") -> "AccumulatedDelta":
        out = cls(m, n, dtype, device, backend)
        if "delta" in tensors:
            out.dense = tensors["delta"].to(device, dtype, copy=True)
        else:
            qa, qb, core = tensors["qa"], tensors["qb"], tensors["core"]
            out._qa, out._qb = qa.to(device, dtype, copy=True), qb.to(device, dtype, copy=True)
            out._core = core.to(device, torch.float64, copy=True)
            out._ra, out._rb = qa.shape[1], qb.shape[1]
        return out

    # -- transactions --------------------------------------------------------------------------
    def snapshot(self) -> tuple:
        """What :meth:`restore` needs to undo the next :meth:`append_` exactly.

        References only, except the used block of the factored core, which ``append_`` updates in
        place (an r_a×r_b float64 copy: small against the work on the core that follows every
        append). The bases grow into columns past the used ones and the dense form is written into
        a second buffer, so their current tensors stay as they are.
        """
        core = None if self.is_dense or self._core.numel() == 0 else self._core[: self._ra, : self._rb].clone()
        return (self._qa, self._qb, self._core, self._ra, self._rb, self.dense, core,
                getattr(self, "_last_core", None), (self._direct_next, self._exact_streak, self._direct_left))

    def restore(self, snap: tuple) -> None:
        """Undo everything since :meth:`snapshot` (Δ bit-identical to what it was)."""
        self._qa, self._qb, core_buf, ra, rb, self.dense, core, self._last_core, route = snap
        self._direct_next, self._exact_streak, self._direct_left = route
        if core is not None and core_buf is self._core:  # updated in place: clear the grown block, put back the old
            self._core[: max(ra, self._ra), : max(rb, self._rb)].zero_()
            self._core[:ra, :rb].copy_(core)
        self._core, self._ra, self._rb = core_buf, ra, rb

    # -- updates -------------------------------------------------------------------------------
    def append_(self, u: torch.Tensor, v: torch.Tensor) -> None:
        """Δ += u vᵀ  (u: m×r, v: n×r, already validated and in ``dtype``)."""
        if self.is_dense:
            # Into the spare buffer (the same one pass as an in-place addmm_), then swap: the
            # previous Δ stays intact for restore() until the next append.
            spare = getattr(self, "_spare", None)
            if spare is None or spare.shape != self.dense.shape or spare is self.dense:
                spare = torch.empty_like(self.dense)
            self._spare = self.dense
            self.dense = torch.addmm(self.dense, u, v.T, out=spare)
            return
        pa, qa_new, ra_new = self._extend(u, self.qa)
        pb, qb_new, rb_new = self._extend(v, self.qb)
        ra, rb = self._ra + qa_new.shape[1], self._rb + qb_new.shape[1]
        if ra * self.m + rb * self.n + ra * rb >= self.m * self.n:
            self.dense = self.dense_delta()
            self.dense.addmm_(u, v.T)
            self._qa = self._qb = torch.empty(0, 0, dtype=self.dtype, device=self.device)
            self._core = torch.zeros(0, 0, dtype=torch.float64, device=self.device)
            self._ra = self._rb = 0
            return
        self._qa = append_columns(self._qa, self._ra, qa_new)
        self._qb = append_columns(self._qb, self._rb, qb_new)
        # The core lives in a zero-filled buffer that doubles when full: re-allocating and copying
        # an r×r float64 core every edit cost ~1.5 ms at r ≈ 1000.
        self._core = _grow_zero_filled(self._core, self._ra, self._rb, ra, rb)
        left = torch.cat([pa, ra_new], 0).to(torch.float64)
        right = torch.cat([pb, rb_new], 0).to(torch.float64)
        self._core[:ra, :rb].addmm_(left, right.T)
        self._ra, self._rb = ra, rb

    def _extend(self, x: torch.Tensor, basis: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Split x = basis p + q r with q ⟂ basis; drop directions below rounding level."""
        q, r, p = orthonormalize(x, against=basis, backend=self.backend)
        if p is None:
            p = torch.zeros(0, x.shape[1], dtype=x.dtype, device=x.device)
        # r may be rank-deficient (x inside the span, or repeated columns): keep its significant part.
        pr, sr, hr = torch.linalg.svd(r.to(torch.float64))
        floor = 32 * torch.finfo(self.dtype).eps * float(torch.linalg.vector_norm(x.to(torch.float64)))
        keep = sr > floor
        q_new = q @ pr[:, keep].to(self.dtype)
        r_new = (sr[keep, None] * hr[keep]).to(self.dtype)
        return p, q_new, r_new

    def _core_start(self, start_u: torch.Tensor | None, start_v: torch.Tensor | None
                    ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """Warm start in core coordinates: last solve's core vectors (the bases only grew since, so
        they stay valid padded with zeros), else the projections of the full-space start vectors."""
        last = getattr(self, "_last_core", None)
        if last is not None and last[0].shape[0] <= self._ra and last[1].shape[0] <= self._rb:
            return _pad_rows(last[0], self._ra), _pad_rows(last[1], self._rb)
        su = None if start_u is None else (self.qa.T @ start_u.to(self.dtype)).to(torch.float64)
        sv = None if start_v is None else (self.qb.T @ start_v.to(self.dtype)).to(torch.float64)
        return su, sv

    def dense_delta(self) -> torch.Tensor:
        """Δ as a dense m×n matrix in ``dtype`` (a new tensor)."""
        if self.is_dense:
            return self.dense.clone()
        left = (self.qa.to(torch.float64) @ self.core).to(self.dtype) if self._ra else self.qa
        return left @ self.qb.T if self._rb else torch.zeros(self.m, self.n, dtype=self.dtype, device=self.device)

    def low_rank_parts(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(L, R)`` with Δ = L Rᵀ (factored form only)."""
        return (self.qa.to(torch.float64) @ self.core).to(self.dtype), self.qb

    # -- spectrum ------------------------------------------------------------------------------
    def triplets_above(self, threshold: float, start_u: torch.Tensor | None = None,
                       start_v: torch.Tensor | None = None, generator: torch.Generator | None = None) -> Triplets:
        """Every singular triplet of Δ with σ ≥ threshold, plus the next value as a bound.

        ``start_u``/``start_v``: last step's triplets (warm start; their count predicts how many
        values are wanted, which decides between a direct SVD of a small matrix and Krylov).
        """
        expected = 0 if start_v is None else start_v.shape[1]
        if self.is_dense:
            return self._solve(self.dense, threshold, expected, lambda: (start_u, start_v), generator, None)
        if min(self._ra, self._rb) == 0:
            z = torch.zeros
            return Triplets(z(self.m, 0, dtype=self.dtype, device=self.device), z(0, dtype=torch.float64),
                            z(self.n, 0, dtype=self.dtype, device=self.device), 0.0, 0.0, 0, 0, True)
        t = self._solve(self.core, threshold, expected, lambda: self._core_start(start_u, start_v), generator,
                        _CORE_TOL[self.dtype])
        self._last_core = (t.u, t.v)
        u = self.qa @ t.u.to(self.dtype)
        v = self.qb @ t.v.to(self.dtype)
        return Triplets(u, t.s.to(torch.float64), v, t.residual, t.next_value, t.basis_size, t.products, t.exact)

    def _solve(self, a: torch.Tensor, threshold: float, expected: int,
               starts: Callable[[], tuple[torch.Tensor | None, torch.Tensor | None]], generator: torch.Generator | None,
               tol: float | None) -> Triplets:
        """Every triplet of ``a`` (the dense Δ or the factored core) with σ ≥ threshold: the dense solve
        where it is cheaper, else warm-started Krylov (``starts()`` gives its start vectors).

        A Krylov solve that ended "exact" did the dense solve's work after its Krylov steps (its search
        or certificate found the basis would cover the short side). Δ only changes by an edit per step,
        so the next solves go straight to the dense solve while it is affordable and at least an
        eighth of the short side's values lie above τ: SmolLM2's layer 5 after 1,000 ROME edits, 79
        values above σ* of 576, 57–103 ms direct against 102–182 ms Krylov-then-direct; a 450×450 core
        with 71 values above σ*, 26 ms against 80–98 ms (one thread, bench/RESULTS.md). With fewer
        above, one exact ending says little: the 1600×6400 tracker bench's ~1000×1000 core with 8
        values above σ* took 120–190 ms direct against 64 ms for a whole Krylov step, and its Krylov
        solves end in the full solve only now and then. Where they do so every time (the same
        SmolLM2 layer in mid-run, 46 values above σ*: 88 ms Krylov-then-direct against 44 ms direct),
        two such endings in a row send the next eight solves straight to the dense solve, after
        which Krylov is tried again. The route depends only on the solves' outcomes, never on timing.
        """
        if prefer_direct(a.shape, expected) or (direct_affordable(a.shape)
                                                 and (self._direct_next or self._direct_left > 0)):
            t = direct_triplets(a, threshold)
            self._direct_left = max(self._direct_left - 1, 0)
        else:
            start_u, start_v = starts()
            t = topk_svd(a, threshold=threshold, start_u=start_u, start_v=start_v, tol=tol,
                         frobenius_sq=self.frobenius_sq(), generator=generator, backend=self.backend)
            self._exact_streak = self._exact_streak + 1 if t.certificate == "exact" else 0
            if self._exact_streak >= _EXACT_STREAK:
                self._direct_left = _DIRECT_RUN
        self._direct_next = t.certificate == "exact" and _DIRECT_SHARE * t.s.numel() >= min(a.shape)
        return t


def _pad_rows(x: torch.Tensor, rows: int) -> torch.Tensor:
    return torch.cat([x, x.new_zeros(rows - x.shape[0], x.shape[1])], 0) if rows > x.shape[0] else x


def _grow_zero_filled(buf: torch.Tensor, used_rows: int, used_cols: int, rows: int, cols: int) -> torch.Tensor:
    """``buf`` with room for ``rows × cols``; everything outside the used block stays zero."""
    if rows <= buf.shape[0] and cols <= buf.shape[1]:
        return buf
    grown = torch.zeros(max(rows, 2 * buf.shape[0], 8), max(cols, 2 * buf.shape[1], 8), dtype=buf.dtype,
                        device=buf.device)
    grown[:used_rows, :used_cols] = buf[:used_rows, :used_cols]
    return grown
