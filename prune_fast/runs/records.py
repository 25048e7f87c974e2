"""What a sequential run records: one :class:`StepRecord` per editor call, an :class:`EvalPoint` per
re-scoring, and the :class:`ArmResult` of the whole arm, built by :func:`arm_result` from the steps,
the evaluations and the trackers as they stand at the end (``ArmResult.to_dict()`` is the arm's
entry in ``results.json``, :mod:`prune_fast.runs.results`).
"""
from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

from ..lm.evaluation import EDIT_METRICS

__all__ = ["StepRecord", "EvalPoint", "ArmResult", "arm_result"]


@dataclass
class StepRecord:
    """One editor call (one request for ROME, a batch for MEMIT).

    ``layers`` maps each edited parameter to: ``sigma_star``, ``sigma_max_weight`` (live weight),
    ``ratio`` (= sigma_max_weight / sigma_star), ``cond`` (cond(W) of the live weight where cheap,
    else null: see :meth:`SpectralTracker.spectrum`), ``sigma_max_delta`` (raw Δ), ``n_above`` (singular
    values of Δ ≥ σ*), ``n_restrained`` (restrained by this step; 0 unless ``online``) and
    ``update_ratio`` (σ_max of this step's update / σ*).  Spectrum fields are absent on steps
    skipped by ``spectrum_every``.
    """

    step: int
    edits: int
    case_ids: list[Any]
    editor_s: float
    apply_s: float
    restrain_s: float
    layers: dict[str, dict[str, float]]
    immediate: dict[str, float] = field(default_factory=dict)
    # seconds of the step's other parts (0.0 in journals written before they were recorded):
    # journal staging of the updates, scoring the edit right after it, and the whole step up to
    # the journal commit (editor + staging + apply + records + scoring; a re-scoring point is not in it)
    stage_s: float = 0.0
    score_s: float = 0.0
    step_s: float = 0.0


@dataclass
class EvalPoint:
    """All edits so far re-scored, and the general abilities, after ``edits`` edits.

    ``restrained`` is False for the intermediate points of ``at_end`` (the model is unrestrained
    until the last edit) and for ``none``.
    """

    edits: int
    edit: dict[str, float]
    general: dict[str, float]
    restrained: bool
    eval_s: float = 0.0


@dataclass
class ArmResult:
    """The outcome of one run (one arm); ``to_dict()`` is its JSON form (see README.md (Sequential runs))."""

    name: str
    config: dict[str, Any]
    n_requests: int
    steps: list[StepRecord]
    evals: list[EvalPoint]
    final: dict[str, Any]
    timing: dict[str, float]
    spectrum: dict[str, dict[str, Any]]
    wall_s: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def arm_result(*, name: str, config: dict[str, Any], n_requests: int, steps: list[StepRecord],
               evals: list[EvalPoint], trackers: dict[str, Any], end_restraint: dict[str, Any],
               immediate_scored: bool, wall_s: float) -> ArmResult:
    """The arm's result from its records and its trackers after the last step (and the at-end
    restraint, ``end_restraint``: parameter name → ``RestrainResult.to_dict()``)."""
    immediate = {m: _nanmean([s.immediate.get(m, float("nan")) for s in steps]) for m in EDIT_METRICS} \
        if immediate_scored else {}
    spectrum: dict[str, dict[str, Any]] = {}
    for s in steps:
        for param, rec in s.layers.items():
            sp = spectrum.setdefault(param, {"sigma_star": rec["sigma_star"], "edits": [], "ratio": [],
                                             "sigma_max_weight": [], "sigma_max_delta": [], "n_above": [],
                                             "cond": [], "update_ratio": []})
            sp["update_ratio"].append(rec["update_ratio"])
            if "ratio" in rec:
                sp["edits"].append(s.edits)
                for k in ("ratio", "sigma_max_weight", "sigma_max_delta", "n_above"):
                    sp[k].append(rec[k])
                sp["cond"].append(rec.get("cond"))  # absent in records journaled before it existed
    for param, tr in trackers.items():
        sp = spectrum.setdefault(param, {"sigma_star": tr.sigma_star})
        sp["final"] = tr.spectrum().to_dict()
        sp["cond_final"] = _cond(tr.weight)
        if param in end_restraint:
            sp["at_end_restraint"] = end_restraint[param]
    for sp in spectrum.values():
        ur = sp.get("update_ratio", [])
        sp["update_ratio_median"] = statistics.median(ur) if ur else float("nan")
    timing = {
        "editor_s_median": statistics.median([s.editor_s for s in steps]),
        "apply_s_median": statistics.median([s.apply_s for s in steps]),
        "restrain_s_median": statistics.median([s.restrain_s for s in steps]),
        "restrain_s_at_end": sum(r["elapsed_s"] for r in end_restraint.values()),
        "eval_s_total": sum(e.eval_s for e in evals),
    }
    final = {"after_sequence": evals[-1].edit, "immediate": immediate, "general": evals[-1].general,
             "baseline_general": evals[0].general}
    return ArmResult(name=name, config=config, n_requests=n_requests, steps=steps, evals=evals, final=final,
                     timing=timing, spectrum=spectrum, wall_s=wall_s)


def _nanmean(values: Sequence[float]) -> float:
    vals = [v for v in values if not math.isnan(v)]
    return sum(vals) / len(vals) if vals else float("nan")


def _cond(weight: torch.Tensor, max_elements: int = 4_000_000) -> float | None:
    """cond(W) = σ_max/σ_min from a full SVD, once per run and only for small weights (else None)."""
    if weight.numel() > max_elements:
        return None
    s = torch.linalg.svdvals(weight.detach().double())
    return float(s[0] / s[-1]) if float(s[-1]) > 0 else float("inf")
