"""Factored updates and the one place they reach the weights: a tracker per edited parameter.

Editors return :class:`FactoredUpdate` objects (``ΔW_stored = u @ v.T`` in the parameter's own
layout); :class:`TrackerSet` hands each one to the :class:`prune_fast.SpectralTracker` of its
parameter, creating that tracker lazily the first time the parameter is edited (so ``W0`` is the
weight before the first edit).  PRUNE, journaling and the no-drift promise therefore hold for
every editor.  ``TrackerSet(model, restrain_every=None)`` and never calling :meth:`restrain_`
gives the plain ``W0 + Δ`` (no restraint).

Example::

    trackers = TrackerSet(model, fn="log1.2")             # restrain after every update
    trackers.apply_(compute_rome(model, tok, request, hp, store).updates)
"""
from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from .errors import EditorError, InvalidTypeError
from .tracker import SpectralTracker

__all__ = ["FactoredUpdate", "TrackerSet"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class FactoredUpdate:
    """``ΔW = u @ v.T`` for the parameter ``param_name``, in its stored layout.

    Attributes:
        param_name: e.g. ``"transformer.h.2.mlp.c_proj.weight"``.
        u: ``(rows, r)`` float32, on the parameter's device.
        v: ``(cols, r)`` float32, on the parameter's device.
        layer: the layer index, for reports.
    """

    param_name: str
    u: torch.Tensor
    v: torch.Tensor
    layer: int | None = None

    @property
    def rank(self) -> int:
        return self.u.shape[1]

    def dense(self) -> torch.Tensor:
        """The update as a dense ``(rows, cols)`` matrix (for tests and small models)."""
        return self.u @ self.v.T


class TrackerSet:
    """One tracker per edited parameter of ``model``, created on first use.

    Args:
        model: the model whose parameters the updates name.
        tracker_factory: ``weight -> tracker`` (anything with ``add_(u, v)`` and ``restrain_()``);
            default ``prune_fast.SpectralTracker(weight, **tracker_kwargs)``.
        **tracker_kwargs: ``alpha``, ``fn``, ``sigma_star``, ``restrain_every``, ... for the default.
    """

    def __init__(self, model: nn.Module, tracker_factory: Callable[[torch.Tensor], Any] | None = None,
                 **tracker_kwargs: Any) -> None:
        if tracker_factory is None:
            def tracker_factory(weight: torch.Tensor) -> Any:
                return SpectralTracker(weight, **tracker_kwargs)
        elif tracker_kwargs:
            raise InvalidTypeError("pass tracker keyword arguments or a tracker_factory, not both")
        self.model = model
        self._factory = tracker_factory
        self.trackers: dict[str, Any] = {}
        self._params = dict(model.named_parameters())

    def _check(self, upd: FactoredUpdate) -> None:
        p = self._params.get(upd.param_name)
        if p is None:
            raise EditorError(f"update names {upd.param_name!r}, which is not a parameter of the model")
        if p.dim() != 2:
            raise EditorError(f"{upd.param_name} is not a matrix (shape {tuple(p.shape)})")
        rows, cols = p.shape
        if upd.u.dim() != 2 or upd.v.dim() != 2 or upd.u.shape != (rows, upd.v.shape[1]) or upd.v.shape[0] != cols:
            raise EditorError(f"update of {upd.param_name} {tuple(p.shape)} has factors u {tuple(upd.u.shape)}, "
                              f"v {tuple(upd.v.shape)}; expected ({rows}, r) and ({cols}, r)")
        if not (torch.isfinite(upd.u).all() and torch.isfinite(upd.v).all()):
            raise EditorError(f"update of {upd.param_name} has non-finite entries")

    def apply_(self, updates: Iterable[FactoredUpdate], *, with_sigma_max_weight: bool = False) -> dict[str, Any]:
        """Check every update, then hand each to its parameter's tracker (in order).

        Returns what each tracker's ``add_`` returned, by parameter name (for a
        :class:`prune_fast.SpectralTracker`: its :class:`~prune_fast.RestrainResult` when the call
        restrained, else ``None``; the last one when a parameter is updated twice).
        ``with_sigma_max_weight`` is passed on to ``add_`` (only when true, so a custom tracker
        needs the keyword only if it is asked for).
        """
        updates = list(updates)
        for upd in updates:
            self._check(upd)
        extra = {"with_sigma_max_weight": True} if with_sigma_max_weight else {}
        results: dict[str, Any] = {}
        for upd in updates:
            tracker = self.tracker(upd.param_name)
            p = self._params[upd.param_name]
            results[upd.param_name] = tracker.add_(upd.u.to(p.device, torch.float32), upd.v.to(p.device, torch.float32),
                                                   **extra)
        return results

    def tracker(self, param_name: str) -> Any:
        """The tracker of ``param_name``, created (snapshotting ``W0``) on first call."""
        if param_name not in self.trackers:
            if param_name not in self._params:
                raise EditorError(f"{param_name!r} is not a parameter of the model")
            self.trackers[param_name] = self._factory(self._params[param_name])
            logger.debug("tracking %s", param_name)
        return self.trackers[param_name]

    def restrain_(self) -> dict[str, Any]:
        """Restrain every tracked parameter now; the trackers' results by parameter name."""
        return {name: tr.restrain_() for name, tr in self.trackers.items()}
