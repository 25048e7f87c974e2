"""AlphaEdit (Fang et al., ICLR 2025, arXiv 2410.02355): MEMIT projected onto the preserved keys' null space.

For a batch of ``b`` requests and edited layers l_1 < ... < l_L (down projections, math layout
``(d_out, d_in)``), the targets ``z*``, keys ``K: (d_in, b)`` and residuals ``R: (d_out, b)`` are
MEMIT's (:func:`prune_fast.editors.memit.spread_over_layers`); only the per-layer solve differs::

    C       = E[k kᵀ] of the unedited model on a corpus (CovarianceStore)               (d_in, d_in)
    P       = N Nᵀ,  N = the eigenvectors of C with eigenvalue < nullspace_threshold      projector
    C_prev  = Σ over earlier batches of K_i K_iᵀ (keys measured after their batch)        the cache
    ΔW_lᵀ   = (P (K Kᵀ + C_prev) + l2 · I)⁻¹ P K Rᵀ                                        (d_in, d_out)

as in the reference code (``AlphaEdit_main.py``: it solves for the ``(d_in, d_out)`` matrix and
transposes it into a Linear's layout; ``l2 · I`` is added to the whole product, which is not
symmetric).  The update is returned factored, ``ΔW_l = R Fᵀ`` with ``F = (P M + l2 I)⁻¹ P K``
``(d_in, b)`` and ``M = K Kᵀ + C_prev``: its rank is at most the batch size.

Why it preserves: ``P M F + l2 F = P K`` gives ``F = P (K − M F) / l2``, so every column of ``F``
lies in the range of ``P`` exactly, and ``ΔW k = R Fᵀ P k = 0`` for a key ``k`` in C's dominant
eigenspace (``P k = 0``).  Keys of earlier edits are protected softly, through ``C_prev`` in the
least-squares term.

The cache follows the reference: after a batch, each layer's keys are measured again with all of
the batch's updates in place (as forward hooks, nothing written) and ``K Kᵀ`` is added to that
layer's ``C_prev``.  With PRUNE online, the next batch is computed on the restrained weights while
the cache holds the keys under the raw updates the editor asked for — the editor's own view, as
PRUNE's tracker keeps the raw Δ.  The cache is the editor's state: :meth:`AlphaEdit.state_dict` /
:meth:`AlphaEdit.load_state_dict`, and each result's :attr:`AlphaEditResult.state_update` (the keys
it added) replays one batch on top of a checkpoint (:meth:`AlphaEdit.replay`), so a journaled run
resumes exactly.

The projector (route and why).  ``P`` needs *every* eigenvector of ``C`` whose eigenvalue is at or
above the threshold.  On the test bed, at its preset threshold, that is 137–283 of the 512 key
directions per layer (27–55 %); the library's block Krylov solver (:func:`prune_fast.spectral.krylov.topk_svd`
in threshold mode) pays per value found, and measured on PSD matrices with such spectra
(``bench/bench_alphaedit.py``, bench/RESULTS.md) it takes 0.13 s against 0.019 s at d = 512 and
2.0 s against 0.32 s at d = 1536 with half the values above, tying only when 5 % lie above.  So
``P`` comes from one float64 ``torch.linalg.eigh`` of the symmetric ``d × d`` matrix (the reference
takes an SVD of the same matrix; for a symmetric positive semi-definite matrix eigh gives the same
pairs for less work): exact to rounding (eigenvalues within ~ε·λ_max), ``O(d³)`` once per layer,
cached per (model key, module, samples, corpus, threshold) in this editor.  At d ≈ 14k (7B models)
the float64 matrix takes ~1.6 GB and the decomposition is a one-off cost per layer.

Example::

    editor = AlphaEdit(model, tok, AlphaEditHyperParams.preset("testbed"), store)
    trackers = TrackerSet(model, restrain_every=None)
    for batch in batches:
        trackers.apply_(editor.compute(batch).updates)
    state = editor.state_dict()                 # the edit-key cache, for a checkpoint
"""
from __future__ import annotations

import logging
from collections.abc import Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from ..errors import InvalidTypeError
from ..updates import FactoredUpdate
from .architectures import EditSite, resolve_module, resolve_site
from .base import Editor, EditResult
from .covariance import CovarianceStore
from ..errors import EditorCheckpointError, EditorError
from .hparams import AlphaEditHyperParams
from .memit import spread_over_layers
from ..lm.requests import EditRequest
from .rome import check_requests, covariance_for, mean_key
from .values import ValueResult

__all__ = ["AlphaEdit", "AlphaEditResult", "null_space_projector", "projected_key_factor"]

logger = logging.getLogger(__name__)

Covariance = CovarianceStore | torch.Tensor | dict[int, torch.Tensor]


def null_space_projector(cov: torch.Tensor, threshold: float) -> tuple[torch.Tensor, torch.Tensor]:
    """``(P, eigenvalues)``: the float64 projector onto the span of ``cov``'s eigenvectors with
    eigenvalue ``< threshold``, and all eigenvalues (ascending), from one float64 ``eigh``.

    ``cov``: ``(d, d)`` symmetric (its lower triangle is read, as ``eigh`` does).
    """
    lam, vecs = torch.linalg.eigh(cov.to(torch.float64))
    null = vecs[:, lam < threshold]
    return null @ null.T, lam


def projected_key_factor(p: torch.Tensor, keys: torch.Tensor, cache: torch.Tensor, l2: float) -> torch.Tensor:
    """``F = (P (K Kᵀ + C_prev) + l2 · I)⁻¹ P K``: the key side of ``ΔW = R Fᵀ`` ``(d_in, b)``.

    ``p``: the projector ``(d, d)``; ``keys``: ``K (d, b)``; ``cache``: ``C_prev (d, d)``; all float64
    on one device.  ``F`` lies in the range of ``p`` (see the module docstring).
    """
    a = p @ (keys @ keys.T + cache)
    a.diagonal().add_(l2)
    return torch.linalg.solve(a, p @ keys)


@dataclass
class AlphaEditResult(EditResult):
    """One AlphaEdit batch: the updates (one per layer, rank ≤ b) and what produced them.

    ``keys``/``residuals``: per layer, the ``K: (d_in, b)`` and ``R: (d_out, b)`` the solve used
    (float64); ``cache_keys``: per layer, the keys measured with the batch's updates in place, added
    to the cache; ``diagnostics``: per layer ``null_dim`` (dim of P's range), ``keys_in_null``
    (‖P K‖_F / ‖K‖_F: how much of the edit's keys the projector lets through), ``update_norm``
    (‖ΔW‖_F) and ``cache_edits`` (edits in the cache after this batch).
    """

    sites: list[EditSite]
    targets: torch.Tensor
    value_searches: list[ValueResult]
    keys: dict[int, torch.Tensor] = field(default_factory=dict)
    residuals: dict[int, torch.Tensor] = field(default_factory=dict)
    cache_keys: dict[int, torch.Tensor] = field(default_factory=dict)
    diagnostics: dict[int, dict[str, float]] = field(default_factory=dict)

    @property
    def state_update(self) -> dict[str, torch.Tensor]:
        """What this batch added to the editor's state, for :meth:`AlphaEdit.replay` (JSON-free tensors)."""
        return {f"keys.{layer}": k for layer, k in self.cache_keys.items()}


class AlphaEdit(Editor):
    """The AlphaEdit editor of ``model``: ``compute(requests)`` returns factored updates, writes nothing.

    Args:
        model, tokenizer: the model to edit (its architecture in the table, or templates in ``hparams``).
        hparams: :class:`~prune_fast.editors.AlphaEditHyperParams`.
        covariance: a :class:`CovarianceStore`, or the unedited model's ``C`` per layer ``{layer: C}``
            (or one tensor for every layer).  ``P`` is built from it on first use: call
            :meth:`prepare` while the model is still unedited if the store has no disk cache.

    State: the edit-key cache ``C_prev`` per layer (float64, on the module's device), advanced by
    every :meth:`compute`; :meth:`state_dict`, :meth:`load_state_dict`, :meth:`replay`.
    Raises :class:`EditorError` subclasses for a bad architecture, layer, request, covariance or
    settings, and when the threshold leaves no null space (``P = 0``: no edit could land);
    :class:`~prune_fast.errors.InvalidTypeError` for arguments of the wrong type.
    """

    name = "alphaedit"
    hparams_class = AlphaEditHyperParams

    def __init__(self, model: nn.Module, tokenizer: Any, hparams: AlphaEditHyperParams,
                 covariance: Covariance) -> None:
        if not isinstance(hparams, AlphaEditHyperParams):
            raise InvalidTypeError(f"hparams must be AlphaEditHyperParams, got {type(hparams).__name__}")
        hparams.validate()
        if not isinstance(covariance, (CovarianceStore, torch.Tensor, dict)):
            raise InvalidTypeError("covariance must be a CovarianceStore, a tensor or {layer: tensor}, "
                              f"got {type(covariance).__name__}")
        self.model, self.tokenizer, self.hparams, self.covariance = model, tokenizer, hparams, covariance
        self.sites = [resolve_site(model, layer, hparams.mlp_out_template, hparams.layer_template)
                      for layer in hparams.layers]
        if isinstance(covariance, dict):
            missing = [s.layer for s in self.sites if s.layer not in covariance]
            if missing:
                raise EditorError(f"covariance has no matrix for layer(s) {missing}")
        self._projectors: dict[tuple[Any, ...], tuple[torch.Tensor, int]] = {}
        self._cache: dict[int, torch.Tensor] = {}
        self.n_edits = 0

    # -- the projector ---------------------------------------------------------------------------
    def _projector_key(self, site: EditSite) -> tuple[Any, ...]:
        if isinstance(self.covariance, CovarianceStore):
            source: tuple[Any, ...] = self.covariance.key(self.model, site, self.hparams.cov_samples)
        else:  # given matrices: fixed for this editor's lifetime
            source = ("given", site.module_name)
        return (*source, self.hparams.nullspace_threshold)

    def projector(self, site: EditSite) -> tuple[torch.Tensor, int]:
        """``(P, null_dim)`` of ``site``: float64 ``(d_in, d_in)`` on the module's device (cached)."""
        key = self._projector_key(site)
        if key not in self._projectors:
            cov = self.covariance[site.layer] if isinstance(self.covariance, dict) else self.covariance
            c = covariance_for(self.model, self.tokenizer, site, self.hparams, cov)
            p, lam = null_space_projector(c, self.hparams.nullspace_threshold)
            null_dim = int((lam < self.hparams.nullspace_threshold).sum())
            if null_dim == 0:
                raise EditorError(
                    f"AlphaEdit at {site.module_name}: nullspace_threshold {self.hparams.nullspace_threshold:g} "
                    f"is below every eigenvalue of the key covariance (range {float(lam[0]):.3g} .. "
                    f"{float(lam[-1]):.3g}): the projector is zero and no edit could land; raise the threshold")
            if null_dim == site.d_in:
                logger.warning("AlphaEdit at %s: every eigenvalue of C (max %.3g) is below the threshold %g: "
                               "P = I, no knowledge is preserved by projection", site.module_name,
                               float(lam[-1]), self.hparams.nullspace_threshold)
            logger.info("AlphaEdit projector of %s: null space %d of %d (threshold %g, eigenvalues %.3g .. %.3g)",
                        site.module_name, null_dim, site.d_in, self.hparams.nullspace_threshold,
                        float(lam[0]), float(lam[-1]))
            self._projectors[key] = (p, null_dim)
        return self._projectors[key]

    def prepare(self) -> None:
        """Build every layer's projector now (from the unedited model's statistics)."""
        for site in self.sites:
            self.projector(site)

    # -- the edit-key cache ------------------------------------------------------------------------
    def _cache_of(self, site: EditSite) -> torch.Tensor:
        if site.layer not in self._cache:
            dev = resolve_module(self.model, site.module_name).weight.device
            self._cache[site.layer] = torch.zeros((site.d_in, site.d_in), dtype=torch.float64, device=dev)
        return self._cache[site.layer]

    def _add_keys(self, keys: dict[int, torch.Tensor]) -> None:
        """``C_prev += K Kᵀ`` per layer: the one place the cache grows (compute and replay alike)."""
        for site in self.sites:
            k = keys[site.layer]
            cache = self._cache_of(site)
            cache.add_(k.to(cache.device, torch.float64) @ k.to(cache.device, torch.float64).T)
        self.n_edits += keys[self.sites[0].layer].shape[1]

    def replay(self, state_update: dict[str, torch.Tensor]) -> None:
        """Advance the cache by one batch's :attr:`AlphaEditResult.state_update` (resuming a run)."""
        keys = {}
        for site in self.sites:
            k = state_update.get(f"keys.{site.layer}")
            if k is None or k.dim() != 2 or k.shape[0] != site.d_in or not torch.isfinite(k).all():
                raise EditorCheckpointError(f"AlphaEdit state update lacks finite keys.{site.layer} of shape "
                                            f"({site.d_in}, b); got {None if k is None else tuple(k.shape)}")
            keys[site.layer] = k
        self._add_keys(keys)

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The cache per layer (``cache.<layer>``, float64) and the number of cached edits (``n_edits``)."""
        state = {f"cache.{s.layer}": self._cache_of(s).detach().clone() for s in self.sites}
        return state | {"n_edits": torch.tensor(self.n_edits, dtype=torch.int64)}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Restore :meth:`state_dict`; every tensor checked (names, shape, dtype, finiteness) before any is used."""
        want = {f"cache.{s.layer}" for s in self.sites} | {"n_edits"}
        if set(state) != want:
            raise EditorCheckpointError(f"AlphaEdit state has {sorted(state)}, expected {sorted(want)}")
        for site in self.sites:
            c = state[f"cache.{site.layer}"]
            if c.shape != (site.d_in, site.d_in) or c.dtype != torch.float64 or not torch.isfinite(c).all():
                raise EditorCheckpointError(f"AlphaEdit cache.{site.layer}: expected finite float64 "
                                            f"({site.d_in}, {site.d_in}), got {c.dtype} {tuple(c.shape)}")
        n = state["n_edits"]
        if n.numel() != 1 or n.is_floating_point() or int(n) < 0:
            raise EditorCheckpointError(f"AlphaEdit n_edits must be one integer >= 0, got {n!r}")
        for site in self.sites:
            dev = resolve_module(self.model, site.module_name).weight.device
            self._cache[site.layer] = state[f"cache.{site.layer}"].to(dev).clone()
        self.n_edits = int(n)

    # -- one batch ---------------------------------------------------------------------------------
    def compute(self, requests: Sequence[EditRequest]) -> AlphaEditResult:
        """The updates for ``requests`` on the current model, and the cache advanced by their keys.

        Nothing is written to the model; hand ``result.updates`` to a :class:`TrackerSet`.
        """
        reqs = check_requests(requests)
        projectors = [self.projector(s) for s in self.sites]     # before anything: unedited statistics
        caches = [self._cache_of(s) for s in self.sites]
        l2 = self.hparams.l2
        keys_used: dict[int, torch.Tensor] = {}
        resid_used: dict[int, torch.Tensor] = {}

        def alphaedit_factor(j: int, keys: torch.Tensor, resid: torch.Tensor) -> torch.Tensor:
            keys_used[self.sites[j].layer], resid_used[self.sites[j].layer] = keys, resid
            return projected_key_factor(projectors[j][0].to(keys.device), keys, caches[j].to(keys.device), l2)

        res, pending = spread_over_layers(self.model, self.tokenizer, reqs, self.hparams, self.sites,
                                          alphaedit_factor, name="AlphaEdit")
        with torch.no_grad(), ExitStack() as stack:
            pending.hooks(stack)
            after = {s.layer: mean_key(self.model, self.tokenizer, resolve_module(self.model, s.module_name), reqs,
                                       self.hparams).double().T for s in self.sites}
        self._add_keys(after)
        diagnostics = {}
        for (p, null_dim), site, upd in zip(projectors, self.sites, res.updates):
            k = keys_used[site.layer]
            diagnostics[site.layer] = {
                "null_dim": float(null_dim),
                "keys_in_null": float((p.to(k.device) @ k).norm() / k.norm()) if float(k.norm()) > 0 else 0.0,
                "update_norm": _factored_norm(upd),
                "cache_edits": float(self.n_edits),
            }
        return AlphaEditResult(updates=res.updates, sites=res.sites, targets=res.targets,
                               value_searches=res.value_searches, keys=keys_used, residuals=resid_used,
                               cache_keys=after, diagnostics=diagnostics)



def _factored_norm(upd: FactoredUpdate) -> float:
    """‖u vᵀ‖_F from the factors: ‖u vᵀ‖_F² = Σ (uᵀu) ⊙ (vᵀv), both Gram matrices symmetric."""
    u, v = upd.u.double(), upd.v.double()
    return float(((u.T @ u) * (v.T @ v)).sum().clamp_min(0).sqrt())
