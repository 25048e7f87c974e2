"""``SpectralTracker``: one weight under sequential editing, restrained without compounding or drift.

State (full precision, never the half-precision weight itself):

    W0                      a snapshot of the original weight (its own dtype, bit-exact)
    Δ                       the RAW accumulated update Σ u_i v_iᵀ (``AccumulatedDelta``)
    (U_a, c_a, V_a)         the correction currently applied: live = W0 + Δ − U_a diag(c_a) V_aᵀ

Restraining recomputes (U, c, V) from the raw Δ, so restraining after every edit and once at the
end give the same weight (no compounding: F is never applied to its own output). The live weight
moves by the exact low-rank difference u vᵀ + U_a c_a V_aᵀ − U c Vᵀ, accumulated in the state dtype
(fp32 by default, float64 on request) — in the weight itself when it has that dtype, else in a
shadow copy (fp16/bf16 weights; fp32 weights with a float64 state), the weight then being only
ever written by rounding the shadow — and is recomputed from W0 + Δ − U_a c_a V_aᵀ every
``refresh_every`` steps, so rounding cannot drift (no drift).
"""
from __future__ import annotations

import contextlib
import json
import logging
import math
import time
from typing import Any, Iterator

import torch

from . import _validate
from .spectral.accumulated_delta import AccumulatedDelta
from .errors import InvalidInputError
from .kernels import resolve_backend
from .kernels.apply_correction import apply_correction_, write_restrained_
from .spectral.krylov import prefer_direct, topk_svd
from ._dtype import compute_dtype
from .restrain import correction_for, rounding_note, sigma_max
from .spectral.restraint_fn import FnLike, resolve_fn
from .spectral.condition import cheap_cond
from .spectral.results import RestrainResult, SpectrumReport
from ._tracker_state import FORMAT, STATE_DTYPES, check_state, resolve_state_dtype

logger = logging.getLogger(__name__)

__all__ = ["SpectralTracker"]


class SpectralTracker:
    """Track the raw update of one 2-D weight and keep it restrained: weight = W0 + F(Δ).

    Args:
        weight: the parameter to manage (fp32/fp16/bf16, either layout); written in place.
        alpha, fn: the restraint function, as in :func:`restrain_`.
        sigma_star: σ_max(W0) if known; otherwise computed once here (block Krylov) and cached.
        restrain_every: restrain after every K-th ``add_`` (default 1); ``None`` restrains only
            when :meth:`restrain_` is called. Between restraints the raw updates are added as is.
        refresh_every: recompute the live weight exactly from W0 + Δ every this many steps.
        state_dtype: dtype of Δ, the corrections and the live weight's full-precision copy.
            ``None``: fp32 (fp64 for fp64 weights). ``torch.float64`` for runs whose raw Δ grows
            far past σ* (≳ 10⁴σ*, runaway sequential edits), where fp32 rounding of Δ would swamp
            what the restraint leaves; it costs a float64 copy of the weight and slower products.

    Example::

        tr = SpectralTracker(model.transformer.h[3].mlp.c_proj.weight, fn="log1.2")
        tr.add_(u, v)           # Δ += u vᵀ, weight ← W0 + F(Δ)
        print(tr.spectrum())
    """

    def __init__(self, weight: torch.Tensor, *, alpha: float = math.e, fn: FnLike = "log",
                 sigma_star: float | None = None, restrain_every: int | None = 1, refresh_every: int = 256,
                 backend: str = "auto", seed: int = 0, state_dtype: torch.dtype | None = None):
        _validate.check_matrix("weight", weight)
        sigma_star = _validate.check_sigma_star(sigma_star, compute_dtype(weight))
        self._build(weight, fn=fn, alpha=alpha, fn_spec_name=fn if isinstance(fn, str) else None,
                    restrain_every=restrain_every, refresh_every=refresh_every, backend=backend, seed=seed,
                    state_dtype=state_dtype, w0=weight.detach().clone())
        with torch.no_grad():
            if sigma_star is None:
                sigma_star, self.sigma_star_residual = sigma_max(self._compute_copy(), generator=self._generator,
                                                                 backend=self.backend)
                if sigma_star == 0.0:
                    raise InvalidInputError("the weight is zero, so σ* = σ_max(W0) = 0; pass sigma_star")
        self.sigma_star = float(sigma_star)

    def _build(self, weight: torch.Tensor, *, fn: FnLike, alpha: float, fn_spec_name: str | None,
               restrain_every: int | None, refresh_every: int, backend: str, seed: int,
               state_dtype: torch.dtype | None, w0: torch.Tensor,
               delta_state: dict[str, torch.Tensor] | None = None,
               applied: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None,
               n_edits: int = 0, since_restrain: int = 0) -> None:
        """Set every field of the tracker: the one path shared by ``__init__`` and :meth:`from_state_dict`.

        ``w0`` is the tracker's own snapshot (already a copy, on the weight's device and dtype);
        ``delta_state``/``applied``/counters restore a saved run (defaults: a fresh tracker).  σ* is
        set by the caller (computed or read from the state).
        """
        self._fn = resolve_fn(fn, alpha)
        self._fn_spec = (fn_spec_name, float(alpha))
        if restrain_every is not None and (not isinstance(restrain_every, int) or restrain_every < 1):
            raise InvalidInputError(f"restrain_every must be a positive int or None, got {restrain_every!r}")
        if not isinstance(refresh_every, int) or refresh_every < 1:
            raise InvalidInputError(f"refresh_every must be a positive int, got {refresh_every!r}")
        self.backend = resolve_backend(_validate.check_backend(backend), weight.device)
        self.weight = weight
        self.restrain_every = restrain_every
        self.refresh_every = refresh_every
        self._acc = resolve_state_dtype(weight, state_dtype)
        # The tracker's own random stream, on the weight's device: the global one is never touched.
        self._generator = torch.Generator(device=weight.device).manual_seed(seed)
        self._w0 = w0
        # A weight in the state dtype is its own full-precision state; others (half weights, or
        # fp32 weights with a float64 state) get a shadow in the state dtype (from W0: a restored
        # tracker rewrites the live weight from the state right after).
        self._shadow = None if weight.dtype == self._acc else w0.to(self._acc)
        self.sigma_star, self.sigma_star_residual = float("nan"), float("nan")
        m, n = weight.shape
        if delta_state is None:
            self._delta = AccumulatedDelta(m, n, self._acc, weight.device, self.backend)
        else:
            self._delta = AccumulatedDelta.from_state_tensors(m, n, self._acc, weight.device, delta_state, self.backend)
        if applied is None:
            self._applied = self._empty_correction()
        else:
            u_a, c_a, v_a = applied
            dev = weight.device
            self._applied = (u_a.to(dev, self._acc), c_a.to(dev, torch.float64), v_a.to(dev, self._acc))
        self._last_triplets: tuple[torch.Tensor, torch.Tensor] | None = None
        self._weight_top: tuple[torch.Tensor, torch.Tensor] | None = None  # warm start of sigma_max_weight
        self._stamp: tuple[int, int, torch.Tensor] | None = None  # set by _publish
        self._precision_warned = False
        self._write_started = False
        self.n_edits = n_edits
        self._since_restrain = since_restrain
        self._since_refresh = 0
        self._probe = _probe_positions(weight)

    # -- public ----------------------------------------------------------------------------------
    @property
    def rank(self) -> int | None:
        """Rank of the stored raw Δ (``None`` once it is stored dense)."""
        return self._delta.rank

    @property
    def fn_name(self) -> str:
        return self._fn.describe()

    @torch.no_grad()
    def add_(self, u: torch.Tensor, v: torch.Tensor, *, with_sigma_max_weight: bool = False) -> RestrainResult | None:
        """Raw Δ += u vᵀ (u: m×r, v: n×r, in the weight's layout); restrain if it is due.

        Returns the :class:`RestrainResult` when this call restrained, else ``None``. The result
        holds the singular values of Δ the restraint solved for; ``with_sigma_max_weight=True``
        adds σ_max of the restrained live weight (:meth:`sigma_max_weight`, warm-started), so a
        step record needs no second spectral pass over Δ (:meth:`spectrum` would solve it again).
        """
        _validate.check_flag("with_sigma_max_weight", with_sigma_max_weight)
        u, v = _validate.check_factors(u, v, self.weight)
        _validate.check_update_finite(u, v, self._acc)  # Δ accumulates u vᵀ in the state dtype
        self._check_weight_unchanged()
        u, v = u.detach().to(self._acc), v.detach().to(self._acc)
        with self._all_or_nothing():
            self._delta.append_(u, v)
            self.n_edits += 1
            self._since_restrain += 1
            self._since_refresh += 1
            if self.restrain_every is not None and self._since_restrain >= self.restrain_every:
                result = self._restrain(raw=(u, v))
            else:
                self._write_started = True
                apply_correction_(self._live(), u, v, backend=self.backend)
                self._publish()
                return None
        if with_sigma_max_weight:  # after the block: the weight is written, nothing left to undo
            result.sigma_max_weight = self.sigma_max_weight()
        return result

    @torch.no_grad()
    def restrain_(self, *, with_sigma_max_weight: bool = False) -> RestrainResult:
        """Restrain now: weight ← W0 + F(Δ) for the raw Δ accumulated so far (``with_sigma_max_weight``:
        as in :meth:`add_`)."""
        _validate.check_flag("with_sigma_max_weight", with_sigma_max_weight)
        self._check_weight_unchanged()
        with self._all_or_nothing():
            result = self._restrain(raw=None)
        if with_sigma_max_weight:
            result.sigma_max_weight = self.sigma_max_weight()
        return result

    @torch.no_grad()
    def spectrum(self) -> SpectrumReport:
        """Top singular values of the raw Δ (all ≥ σ*, then the next), σ*, σ_max(live weight), and
        cond(live weight) where it is cheap.

        cond(W) needs σ_min, which no top-k method gives; it comes from the eigenvalues of the
        short side's float64 Gram matrix when m·n·min(m, n) ≤ 2²⁵ (a 512×128 test-model weight:
        under a millisecond), and is ``None`` for larger weights, where it would cost a full SVD.
        """
        trip = self._triplets()
        values = trip.s.tolist() + ([trip.next_value] if trip.next_value > 0 else [])
        return SpectrumReport(sigma_delta=values, sigma_star=self.sigma_star, sigma_max_weight=self.sigma_max_weight(),
                              n_above=int(trip.s.numel()), n_edits=self.n_edits, rank=self.rank,
                              cond_weight=cheap_cond(self._live()))

    @torch.no_grad()
    def sigma_max_weight(self) -> float:
        """σ_max of the live weight, by block Krylov warm-started from the previous call's top
        singular vectors (a step moves them little: about a third of the passes of a cold start)."""
        w = self._compute_copy()
        if prefer_direct(tuple(w.shape), 1):
            return sigma_max(w)[0]
        start_u, start_v = self._weight_top or (None, None)
        t = topk_svd(w, k=1, block=_WARM_BLOCK, value_tol=8 * torch.finfo(w.dtype).eps, start_u=start_u,
                     start_v=start_v, generator=self._generator, backend=self.backend)
        if not t.s.numel():
            return 0.0
        self._weight_top = (t.u[:, :1], t.v[:, :1])
        return float(t.s[0])

    def cheap_cond(self) -> float | None:
        """cond(live weight) where it is cheap (see :meth:`spectrum`), else ``None``."""
        return cheap_cond(self._live())

    def delta(self) -> torch.Tensor:
        """The raw accumulated Δ as a new dense tensor (for tests and the at-end protocol)."""
        return self._delta.dense_delta()

    @property
    def w0(self) -> torch.Tensor:
        """The snapshot of the original weight (read-only by convention)."""
        return self._w0

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to resume exactly: tensors plus a JSON-able ``meta`` dict."""
        fn_name, alpha = self._fn_spec
        u_a, c_a, v_a = self._applied
        meta = {
            "format": FORMAT, "shape": list(self.weight.shape), "dtype": str(self.weight.dtype),
            "sigma_star": self.sigma_star, "fn": fn_name, "alpha": alpha,
            "restrain_every": self.restrain_every, "refresh_every": self.refresh_every,
            "n_edits": self.n_edits, "since_restrain": self._since_restrain, "state_dtype": str(self._acc),
        }
        tensors = {"w0": self._w0, "applied_u": u_a, "applied_c": c_a, "applied_v": v_a}
        tensors.update(self._delta.state_tensors())
        return {"meta": meta, **{k: t.detach().cpu().contiguous() for k, t in tensors.items()}}

    def meta_json(self) -> str:
        return json.dumps(self.state_dict()["meta"], sort_keys=True)

    @classmethod
    @torch.no_grad()
    def from_state_dict(cls, weight: torch.Tensor, state: dict[str, Any], *, fn: FnLike | None = None,
                        backend: str = "auto") -> "SpectralTracker":
        """Rebuild a tracker for ``weight`` and write the live weight W0 + Δ − applied correction.

        ``fn`` is needed only when the tracker was created with a callable.
        """
        _validate.check_matrix("weight", weight, finite=False)  # its content is rewritten from the state
        meta = check_state(weight, state, fn)
        saved = meta.get("state_dtype")  # absent in states written before the option existed
        tr = cls.__new__(cls)
        tr._build(weight, fn=meta["fn"] if fn is None else fn, alpha=meta["alpha"],
                  fn_spec_name=meta["fn"] if fn is None or isinstance(fn, str) else None,
                  restrain_every=meta["restrain_every"], refresh_every=meta["refresh_every"], backend=backend,
                  seed=0, state_dtype=None if saved is None else STATE_DTYPES[saved],
                  w0=state["w0"].to(weight.device, weight.dtype, copy=True), delta_state=state,
                  applied=(state["applied_u"], state["applied_c"], state["applied_v"]),
                  n_edits=int(meta["n_edits"]), since_restrain=int(meta["since_restrain"]))
        tr.sigma_star = float(meta["sigma_star"])
        tr._refresh()
        return tr

    def __repr__(self) -> str:
        rank = "dense" if self.rank is None else f"rank {self.rank}"
        return (f"SpectralTracker({tuple(self.weight.shape)} {str(self.weight.dtype).replace('torch.', '')}, "
                f"{self.fn_name}, σ*={self.sigma_star:.4g}, {self.n_edits} edits, Δ {rank})")

    # -- internals -------------------------------------------------------------------------------
    def _live(self) -> torch.Tensor:
        """The full-precision live weight: the weight itself (fp32/fp64) or its shadow.

        The tensor itself, never ``.data``: writes (under ``no_grad``) bump its version counter, so
        autograd refuses a backward through a graph that saved the old weight."""
        return self.weight if self._shadow is None else self._shadow

    def _compute_copy(self) -> torch.Tensor:
        """The live weight in the weight's compute dtype, for σ_max: a float64 state would make
        those Krylov runs several times slower for no gain in what the model computes with."""
        live, acc = self._live(), compute_dtype(self.weight)
        return live if live.dtype == acc else live.to(acc)

    def _publish(self) -> None:
        if self._shadow is not None:
            self.weight.copy_(self._shadow)
        self._stamp = self._weight_stamp()

    def _weight_stamp(self) -> tuple[int, int, torch.Tensor]:
        """(storage address, version counter, the values at the probe positions).

        The version counter sees every in-place write to the tensor or its views, but not writes
        through ``.data`` (a separate counter); those are caught by the probe values, a fixed sample
        of up to 1,024 entries, which any dense update (a rank-one edit changes every entry) alters.
        """
        rows, cols = self._probe
        w = self.weight.detach()
        return w.data_ptr(), self.weight._version, w[rows, cols]  # advanced indexing copies

    def _check_weight_unchanged(self) -> None:
        """Refuse to go on if something wrote the weight behind the tracker's back."""
        stamp = self._stamp
        if stamp is None:
            return
        now = self._weight_stamp()
        if stamp[:2] != now[:2] or not torch.equal(stamp[2], now[2]):
            raise InvalidInputError(
                "the weight was modified outside this SpectralTracker since its last update; "
                "route every update through add_() (or rebuild the tracker)"
            )

    @contextlib.contextmanager
    def _all_or_nothing(self) -> Iterator[None]:
        """Undo every state change of the block if it raises before the weight is written.

        The weight is written last (``_write_started`` marks it), so an error before that point — a
        callable F that raises or returns garbage, an interrupt — leaves the weight untouched and
        the tracker is put back exactly (``state_dict()`` equal tensor for tensor); the snapshot is
        references plus the small factored core, never a weight-sized copy.
        """
        snap = (self._delta.snapshot(), self._applied, self._last_triplets, self.n_edits, self._since_restrain,
                self._since_refresh, self._precision_warned, self._generator.get_state())
        self._write_started = False
        try:
            yield
        except BaseException:
            if not self._write_started:
                (delta, self._applied, self._last_triplets, self.n_edits, self._since_restrain, self._since_refresh,
                 self._precision_warned, gen) = snap
                self._delta.restore(delta)
                self._generator.set_state(gen)
            raise

    def _empty_correction(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        m, n = self.weight.shape
        dev = self.weight.device
        return (torch.zeros(m, 0, dtype=self._acc, device=dev), torch.zeros(0, dtype=torch.float64, device=dev),
                torch.zeros(n, 0, dtype=self._acc, device=dev))

    def _triplets(self):
        start_u, start_v = self._last_triplets or (None, None)
        trip = self._delta.triplets_above(self.sigma_star, start_u, start_v, generator=self._generator)
        if trip.s.numel():
            self._last_triplets = (trip.u, trip.v)
        return trip

    def _restrain(self, raw: tuple[torch.Tensor, torch.Tensor] | None) -> RestrainResult:
        start = time.perf_counter()
        trip = self._triplets()
        self._warn_if_precision_lost(trip.s)
        s_new, c = correction_for(trip.s, self._fn, self.sigma_star)
        new = (trip.u, c, trip.v)
        u_a, c_a, v_a = self._applied
        self._applied = new
        self._since_restrain = 0
        if self._since_refresh >= self.refresh_every:
            self._write_started = True
            self._refresh()
        else:
            lefts = [u_a * c_a.to(self._acc), -(trip.u * c.to(self._acc))]
            rights = [v_a, trip.v]
            if raw is not None:
                lefts.insert(0, raw[0])
                rights.insert(0, raw[1])
            left, right = torch.cat(lefts, 1), torch.cat(rights, 1)
            self._write_started = True
            apply_correction_(self._live(), left, right, backend=self.backend)
            self._publish()
        return RestrainResult(
            n_restrained=int(trip.s.numel()), sigma_star=self.sigma_star, sigma_before=trip.s.tolist(),
            sigma_after=s_new.tolist(), elapsed_s=time.perf_counter() - start, backend=self.backend,
            fn=self._fn.describe(), residual=trip.residual, sigma_next=float(trip.next_value),
        )

    def _warn_if_precision_lost(self, s: torch.Tensor) -> None:
        """Log once per tracker when Δ is so large that the restrained weight drowns in rounding."""
        if self._precision_warned or s.numel() == 0:
            return
        note = rounding_note(float(s[0]), self.sigma_star, self._acc)
        if note:
            self._precision_warned = True
            if self._acc != torch.float64:
                note += "; SpectralTracker(..., state_dtype=torch.float64) keeps such runs exact"
            logger.warning("%r: %s", self, note)

    def _refresh(self) -> None:
        """live ← W0 + Δ − U_a diag(c_a) V_aᵀ, exactly, from the full-precision state."""
        u_a, c_a, v_a = self._applied
        correction_left = -(u_a * c_a.to(self._acc))
        if self._delta.is_dense:
            write_restrained_(self._live(), self._w0, correction_left, v_a, dense=self._delta.dense,
                              backend=self.backend)
        else:
            left, right = self._delta.low_rank_parts()
            write_restrained_(self._live(), self._w0, torch.cat([left, correction_left], 1),
                              torch.cat([right, v_a], 1), backend=self.backend)
        self._since_refresh = 0
        self._publish()


# Warm-started σ_max(W): 8 columns beat 16 once the start block already holds the top vector
# (576×1536, 200 steps: 3.5 ms at 8, 3.9 ms at 4, 5.4 ms at 16, 9.4 ms cold).
_WARM_BLOCK = 8
_PROBES = 1024


def _probe_positions(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """A fixed sample of (row, column) positions of the weight for the written-behind-my-back check
    (its own generator: the tracker's random stream is not touched), on the weight's device."""
    m, n = weight.shape
    if m * n <= _PROBES:
        idx = torch.arange(m * n)
    else:
        idx = torch.randint(0, m * n, (_PROBES,), generator=torch.Generator().manual_seed(0x5EED))
    return (idx // n).to(weight.device), (idx % n).to(weight.device)
