"""``restrain_``: PRUNE on one weight, in place, after any editor.

    Ŵ = W − U_k diag(σ_k − F(σ_k)) V_kᵀ,     k = #{σ(Δ) ≥ σ*},  σ* = σ_max(W − Δ)

Only the k triplets of Δ at or above σ* are computed (block Krylov, ``krylov.py``), with a
certificate that no other singular value of Δ reaches σ* (deterministic where the tail of Δ allows
it, else randomized with failure probability ≤ 1e-10 per call: see ``spectral/certificate.py``); the
weight is then corrected by one rank-k update that reads and writes it once. Layout does not matter: Δ and
Δᵀ have the same singular values, so nn.Linear (out×in) and GPT-2 Conv1D (in×out) weights are
handled alike. Random numbers come from a private generator (fixed seed) or the caller's
``generator``: torch's global random stream is never touched, and equal inputs give equal weights.
"""
from __future__ import annotations

import logging
import math
import time

import torch

from . import _scratch, _validate
from ._dtype import compute_dtype
from .kernels import resolve_backend
from .kernels.apply_correction import apply_correction_
from .spectral.certificate import frobenius_sq_bound
from .spectral.direct import direct_triplets
from .spectral.gram import gram_route_blocks, sigma_max_by_gram
from .spectral.krylov import prefer_direct, topk_svd
from .spectral.triplets import Triplets
from .spectral.operators import ImplicitDifferenceOperator
from .spectral.restraint_fn import FnLike, RestraintFn, resolve_fn
from .spectral.results import RestrainResult

__all__ = ["restrain_", "sigma_max"]

logger = logging.getLogger(__name__)


_SIGMA_MAX_BLOCK = 16


def sigma_max(matrix, *, generator: torch.Generator | None = None, backend: str = "torch") -> tuple[float, float]:
    """``(σ_max, relative residual bound)`` of a 2-D tensor or operator, by block Krylov, or through
    the short side's Gram matrix when the top values cluster (``spectral/gram.py``).

    Matrices with a short side ≤ 64 (tiny test weights) take one exact SVD instead. Scale-safe: a
    matrix of 1e-30 or 1e30 is solved after a power-of-two rescaling (``krylov.py``).
    """
    if isinstance(matrix, torch.Tensor) and prefer_direct(tuple(matrix.shape), 1):
        return float(torch.linalg.svdvals(matrix.to(torch.float64))[0]) if matrix.numel() else 0.0, 0.0
    # A 16-wide block: passes over the matrix dominate and cost about the same for 8 or 16 columns,
    # while the wider block needs fewer of them (measured at 1600×6400: 0.40 s vs 0.61 s Gaussian,
    # 0.05 s vs 0.10 s trained-like; bench/RESULTS.md).
    # Only the value is needed: stop once its gap bound puts it within 8 ulp (≈ 1e-6 in fp32), which
    # takes 8 rather than 10 passes for a trained-like W0 and ~40 rather than ~50 for a Gaussian one.
    value_tol = 8 * torch.finfo(matrix.dtype).eps
    gram_ok = _gram_route_possible(matrix)
    give_up = gram_route_blocks(*matrix.shape, _SIGMA_MAX_BLOCK) if gram_ok else None
    t = topk_svd(matrix, k=1, block=_SIGMA_MAX_BLOCK, value_tol=value_tol, generator=generator, backend=backend,
                 give_up_blocks=give_up)
    if not t.converged:
        top = float(t.s[0]) if t.s.numel() else 0.0
        if _GRAM_SAFE_MIN <= top <= _GRAM_SAFE_MAX:
            return sigma_max_by_gram(matrix, value_tol, generator)
        t = topk_svd(matrix, k=1, block=_SIGMA_MAX_BLOCK, value_tol=value_tol, generator=generator, backend=backend)
    return (float(t.s[0]), t.residual) if t.s.numel() else (0.0, 0.0)


# The Gram route squares the entries: it is taken for σ_max in [2⁻⁴⁰, 2⁴⁰] only (squares far from
# fp32's under- and overflow); any other scale stays on the (rescaling) Krylov route.
_GRAM_SAFE_MIN, _GRAM_SAFE_MAX = 2.0 ** -40, 2.0 ** 40


def _gram_route_possible(matrix) -> bool:
    """A dense fp32/fp64 tensor: the Gram route applies (operators and half precision stay on Krylov)."""
    return isinstance(matrix, torch.Tensor) and matrix.dtype in (torch.float32, torch.float64)


@torch.no_grad()
def restrain_(
    weight: torch.Tensor,
    delta: torch.Tensor,
    *,
    alpha: float = math.e,
    fn: FnLike = "log",
    sigma_star: float | None = None,
    backend: str = "auto",
    generator: torch.Generator | None = None,
) -> RestrainResult:
    """Restrain the edit held in ``weight`` in place; ``delta`` is read, never modified.

    On entry ``weight`` holds W0 + Δ (``delta`` = Δ, same shape and device, any floating dtype);
    on return it holds W0 + F(Δ), where F changes only the singular values σ ≥ σ* = σ_max(W0).

    Args:
        weight: 2-D fp32/fp16/bf16 (or fp64) tensor or Parameter, either layout, any strides.
        delta: the accumulated update, same shape and device.
        alpha: log base for ``fn="log"`` (> 1).
        fn: ``"log"``, ``"ln"``, ``"log2"``, ``"log1.5"``, ``"log1.2"``, ``"linear"`` or a callable
            ``(sigma, sigma_star) -> Tensor`` applied to the values ≥ σ*.
        sigma_star: σ_max(W0) if known (a positive normal float of the compute dtype: fp32 for
            fp32/fp16/bf16 weights); otherwise computed from ``weight - delta``.
        backend: ``"auto"``, ``"torch"`` or ``"triton"``.
        generator: source of the solver's Gaussian start blocks; ``None`` uses a private generator with a
            fixed seed (torch's global random stream is never read or advanced either way).

    Returns:
        :class:`RestrainResult`. If nothing reaches σ* the weight is left bit-identical.

    Example::

        res = prune_fast.restrain_(layer.weight, delta)
        print(res)   # RestrainResult(ln, σ*=…: 3 restrained, top σ … → …; … ms, torch)
    """
    start = time.perf_counter()
    _validate.check_matrix("weight", weight)
    _validate.check_matrix("delta", delta)
    _validate.check_same_placement("delta", delta, "weight", weight)
    if _validate.shares_memory(delta, weight):  # writing the weight would change delta under us
        raise _validate.InvalidInputError("delta shares memory with weight (the same tensor or a view of it); "
                                          "restrain_ writes weight and only reads delta: pass a separate delta")
    f = resolve_fn(fn, alpha)
    acc = compute_dtype(weight)
    sigma_star = _validate.check_sigma_star(sigma_star, acc)
    used = resolve_backend(_validate.check_backend(backend), weight.device)

    d = delta.detach().to(acc)
    if d.dtype != delta.dtype:  # a float64 delta beyond the fp32 range overflows in the conversion
        _validate.check_finite(f"delta (in {str(acc).replace('torch.', '')})", d)
    if sigma_star is None:
        sigma_star = _sigma_star_of_difference(weight.detach(), d, acc, used, generator)
    trip = triplets_at_or_above(d, sigma_star, used, generator)
    if trip is None:
        return RestrainResult(0, sigma_star, elapsed_s=time.perf_counter() - start, backend=used, fn=f.describe())
    return apply_triplets_(weight, trip, f, sigma_star, used, start)


def triplets_at_or_above(delta: torch.Tensor, sigma_star: float, backend: str,
                         generator: torch.Generator | None = None) -> Triplets | None:
    """The triplets of ``delta`` with σ ≥ σ* (``None`` when Δ = 0), in ``delta``'s dtype, certified:
    no other singular value of Δ reaches σ* (``Triplets.certificate`` says how that was proved).

    ``restrain_`` is this plus :func:`apply_triplets_`; ``restrain_pair`` calls the two halves
    itself so that one buffer can hold Δ first and the restrained weight after.
    """
    fro_sq = frobenius_sq_bound(delta)
    if fro_sq == 0.0:
        return None
    if prefer_direct(tuple(delta.shape), 0):
        return direct_triplets(delta, sigma_star)
    return topk_svd(delta, threshold=sigma_star, frobenius_sq=fro_sq, generator=generator, backend=backend)


def _sigma_star_of_difference(weight: torch.Tensor, d: torch.Tensor, acc: torch.dtype, backend: str,
                              generator: torch.Generator | None = None) -> float:
    """σ_max(W − Δ) for ``restrain_`` when σ* was not given; refuses a W0 that is exactly zero."""
    if backend == "triton":
        # Never formed: an overflowing W − Δ shows as a non-finite σ*.
        op = ImplicitDifferenceOperator(weight, d, backend=backend)
        sigma = sigma_max(op, generator=generator, backend=backend)[0]
        if not math.isfinite(sigma):
            raise _validate.InvalidInputError(f"weight - delta (W0) overflows {acc}: σ_max(W0) = {sigma}")
        if sigma == 0.0:
            _refuse_zero_w0(bool(torch.equal(weight.to(acc), d)))
        return sigma
    if weight.device.type != "cpu":
        w0 = weight.to(acc) - d
        _validate.check_finite("weight - delta (W0)", w0)
        sigma = sigma_max(w0, generator=generator, backend=backend)[0]
        if sigma == 0.0:
            _refuse_zero_w0(not bool(w0.any()))
        return sigma
    # On the CPU one fp32 W0 is cheaper than re-forming W − Δ in every product, and writing it into
    # a reused buffer avoids the first-touch cost of a fresh weight-sized tensor (17 ms of 20 at
    # 1600×6400, see _scratch.py).
    with _scratch.borrow(tuple(weight.shape), acc) as w0:
        torch.sub(weight, d, out=w0)
        _validate.check_finite("weight - delta (W0)", w0)  # W and Δ finite, W − Δ may still overflow
        sigma = sigma_max(w0, generator=generator, backend=backend)[0]
        if sigma == 0.0:
            _refuse_zero_w0(not bool(w0.any()))
        return sigma


def _refuse_zero_w0(is_zero: bool) -> None:
    """σ_max(W0) came out 0: say "W0 is zero" only when every entry of W0 = W − Δ is."""
    if is_zero:
        raise _validate.InvalidInputError("weight - delta (W0) is zero, so σ* = σ_max(W0) = 0; pass sigma_star")
    raise _validate.InvalidInputError(
        "σ_max(weight - delta) could not be computed (it came out 0 for a nonzero W0; "
        "entries beyond the compute dtype's range?); pass sigma_star")


def rounding_note(sigma_delta_max: float, sigma_star: float, dtype: torch.dtype) -> str | None:
    """A warning text when Δ is so large that rounding swamps what the restraint leaves, else None.

    Δ and the correction are held in ``dtype`` (fp32 for fp32 and half weights): rounding at
    ε·σ_max(Δ) is no longer small against σ*, the scale of the restrained values, once
    σ_max(Δ) ≳ 10⁴σ* in fp32 (runaway sequential edits); the restrained weight is then accurate
    only to about that level.
    """
    rounding = sigma_delta_max * torch.finfo(dtype).eps
    if rounding <= 1e-3 * sigma_star:
        return None
    return (f"σ_max(Δ) = {sigma_delta_max:.3g} is {sigma_delta_max / sigma_star:.2g} × σ*; its "
            f"{str(dtype).replace('torch.', '')} rounding ({rounding:.2g}) exceeds 1e-3·σ*, so the restrained "
            f"weight is accurate only to about that (runaway edits?)")


def correction_for(s: torch.Tensor, f: RestraintFn, sigma_star: float) -> tuple[torch.Tensor, torch.Tensor]:
    """``(F(σ), σ − F(σ))`` for the triplets to restrain (float64)."""
    s_new = f(s.to(torch.float64), sigma_star)
    return s_new, s.to(torch.float64) - s_new


def apply_triplets_(weight: torch.Tensor, trip: Triplets, f: RestraintFn, sigma_star: float, backend: str,
                    start: float) -> RestrainResult:
    """``weight −= U diag(σ − F(σ)) Vᵀ`` for the triplets from :func:`triplets_at_or_above`."""
    u, s, v, residual = trip.u, trip.s, trip.v, trip.residual
    if s.numel() == 0:
        return RestrainResult(0, sigma_star, elapsed_s=time.perf_counter() - start, backend=backend,
                              fn=f.describe(), residual=residual)
    note = rounding_note(float(s[0]), sigma_star, u.dtype)
    if note:
        logger.warning("restrain_: %s", note)
    s_new, c = correction_for(s, f, sigma_star)
    # The tensor itself, not .data: the write bumps its version counter, so autograd refuses a
    # later backward through a graph that saved the old weight (as for any in-place change).
    apply_correction_(weight, -(u * c.to(u.dtype)), v, backend=backend)
    return RestrainResult(
        n_restrained=int(s.numel()), sigma_star=sigma_star, sigma_before=s.tolist(), sigma_after=s_new.tolist(),
        elapsed_s=time.perf_counter() - start, backend=backend, fn=f.describe(), residual=residual,
    )
