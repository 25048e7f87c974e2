"""The results file of sequential runs: one JSON document, schema ``prune_fast.sequential/1``.

Layout (documented for users in ``README.md (Sequential runs)``)::

    {
      "schema": "prune_fast.sequential/1",
      "config":  {...run settings: model, editor, hparams, n, eval_every, seed, machine...},
      "abilities": {task: {"accuracy": unedited accuracy, "chance": ..., "kept": bool}},   (test bed)
      "arms": {
        "<arm name>": {                   # none | online-<F> | at_end-<F> | online/K-<F>
          "name", "config" {protocol, fn, alpha, restrain_every, ..., "edits_from": "none" in an
                            at_end arm that reused that run's edits}, "n_requests", "wall_s",
          "final": {"after_sequence": {edit metric: value},     # all edits re-scored at the end
                    "immediate": {edit metric: mean},            # each edit scored right after it
                    "general": {ability: value, "perplexity": ...},
                    "baseline_general": {...}},                  # before the first edit
          "evals":  [{"edits", "edit": {...}, "general": {...}, "restrained", "eval_s"}],
          "steps":  [{"step", "edits", "case_ids", "editor_s", "apply_s", "restrain_s",
                      "immediate": {...}, "layers": {param: {"sigma_star", "ratio", ...}},
                      "stage_s", "score_s", "step_s"}],                # optional (older journals lack them)
          "timing": {"editor_s_median", "apply_s_median", "restrain_s_median",
                     "restrain_s_at_end", "eval_s_total"},
          "spectrum": {param: {"sigma_star", "edits": [...], "ratio": [...], "sigma_max_weight": [...],
                               "sigma_max_delta": [...], "n_above": [...], "cond": [...], "update_ratio": [...],
                               "update_ratio_median", "final": SpectrumReport, "cond_final",
                               "at_end_restraint": RestrainResult (at_end only)}}
        }
      }
    }

Edit metrics are ``efficacy``, ``generalization``, ``locality`` (top-1) and the same names with
``_prob`` (P(new) > P(true); for locality P(own answer) > P(new)).  NaN is written as ``null``.

Example::

    doc = results_document(config, {arm.name: arm for arm in arms})
    write_results("out/results.json", doc)
    validate_results(json.load(open("out/results.json")))
"""
from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .._atomic import write_json
from ..errors import InvalidInputError
from ..lm.evaluation import EDIT_METRICS
from ..spectral.restraint_fn import named_base

__all__ = ["SCHEMA", "PROTOCOLS", "results_document", "write_results", "validate_results", "format_table"]

SCHEMA = "prune_fast.sequential/1"
# the restraint protocols of a run: no restraint, after every K edits, once at the end (the paper's)
PROTOCOLS = ("none", "online", "at_end")

_ARM_KEYS = {"name", "config", "n_requests", "final", "evals", "steps", "timing", "spectrum", "wall_s"}
_FINAL_KEYS = {"after_sequence", "immediate", "general", "baseline_general"}
_TIMING_KEYS = {"editor_s_median", "apply_s_median", "restrain_s_median", "restrain_s_at_end", "eval_s_total"}
_STEP_KEYS = {"step", "edits", "case_ids", "editor_s", "apply_s", "restrain_s", "layers", "immediate"}


def _clean(obj: Any) -> Any:
    """NaN/inf → None, tuples → lists, so the file is strict JSON."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, Mapping):
        return {str(k): _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    return obj


def results_document(config: Mapping[str, Any], arms: Mapping[str, Any],
                     abilities: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The results document for ``arms`` (name → ``ArmResult`` or its dict)."""
    doc = {"schema": SCHEMA, "config": dict(config), "abilities": dict(abilities or {}),
           "arms": {name: (a.to_dict() if hasattr(a, "to_dict") else a) for name, a in arms.items()}}
    return _clean(doc)


def write_results(path: str | Path, doc: Mapping[str, Any]) -> Path:
    """Validate and write ``doc`` atomically (temp file in the same folder, fsync, rename)."""
    validate_results(doc)
    return write_json(path, doc)


def _need(d: Any, keys: set[str], where: str) -> None:
    if not isinstance(d, Mapping):
        raise InvalidInputError(f"results: {where} is not an object")
    missing = keys - set(d)
    if missing:
        raise InvalidInputError(f"results: {where} lacks {sorted(missing)}")


def validate_results(doc: Mapping[str, Any]) -> None:
    """Raise :class:`InvalidInputError` naming the first place where ``doc`` breaks the schema."""
    _need(doc, {"schema", "config", "arms"}, "document")
    if doc["schema"] != SCHEMA:
        raise InvalidInputError(f"results: schema is {doc['schema']!r}, expected {SCHEMA!r}")
    if not doc["arms"]:
        raise InvalidInputError("results: no arms")
    for name, arm in doc["arms"].items():
        where = f"arms[{name!r}]"
        _need(arm, _ARM_KEYS, where)
        _need(arm["final"], _FINAL_KEYS, where + ".final")
        _need(arm["final"]["after_sequence"], set(EDIT_METRICS), where + ".final.after_sequence")
        _need(arm["timing"], _TIMING_KEYS, where + ".timing")
        if arm["config"].get("protocol") not in PROTOCOLS:
            raise InvalidInputError(f"results: {where}.config.protocol is {arm['config'].get('protocol')!r}")
        if not arm["evals"] or arm["evals"][-1]["edits"] != arm["n_requests"]:
            raise InvalidInputError(f"results: {where}.evals must end with the evaluation after all edits")
        for i, step in enumerate(arm["steps"]):
            _need(step, _STEP_KEYS, f"{where}.steps[{i}]")
        for param, sp in arm["spectrum"].items():
            _need(sp, {"sigma_star", "edits", "ratio", "final"}, f"{where}.spectrum[{param!r}]")
            if len(sp["edits"]) != len(sp["ratio"]):
                raise InvalidInputError(f"results: {where}.spectrum[{param!r}] edits and ratio differ in length")


def _fmt(x: Any) -> str:
    return "—" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.3f}"


def format_table(doc: Mapping[str, Any]) -> str:
    """A side-by-side table of the arms' final metrics (markdown), every protocol named."""
    arms = doc["arms"]
    first = next(iter(arms.values()))
    abilities = [k for k in first["final"]["general"]]
    cols = ["arm", "protocol", "F", "eff (after seq)", "eff (immediate)", "gen", "loc",
            *abilities, "σmax(W)/σ*", "edit σ/σ*", "ms restrain/edit"]
    rows = [cols, ["---"] * len(cols)]
    base = first["final"]["baseline_general"]
    rows.append(["unedited", "—", "—", "—", "—", "—", "—", *[_fmt(base.get(a)) for a in abilities], "1.000",
                 "—", "—"])
    for name, arm in arms.items():
        fin, cfg = arm["final"], arm["config"]
        ratios = [sp["final"]["ratio"] for sp in arm["spectrum"].values() if sp.get("final")]
        upd = [sp.get("update_ratio_median") for sp in arm["spectrum"].values()]
        restrain_ms = arm["timing"]["restrain_s_median"] * 1e3 if cfg["protocol"] == "online" else \
            arm["timing"]["restrain_s_at_end"] * 1e3
        rows.append([name, cfg["protocol"], "—" if cfg["protocol"] == "none" else str(cfg["fn"]),
                     _fmt(fin["after_sequence"].get("efficacy")), _fmt(fin["immediate"].get("efficacy")),
                     _fmt(fin["after_sequence"].get("generalization")), _fmt(fin["after_sequence"].get("locality")),
                     *[_fmt(fin["general"].get(a)) for a in abilities],
                     _fmt(max(ratios) if ratios else None), _fmt(max((u for u in upd if u is not None), default=None)),
                     "—" if cfg["protocol"] == "none" else f"{restrain_ms:.2f}" + (" (once)" if cfg["protocol"] == "at_end" else "")])
    lines = ["| " + " | ".join(r) + " |" for r in rows]
    stars = {param: sp["sigma_star"] for arm in arms.values() for param, sp in arm["spectrum"].items()}
    lines.append("σ* = σ_max(W0) per edited weight: " + ", ".join(f"{p} {v:.4g}" for p, v in stars.items()))
    notes: dict[str, str] = {}
    for arm in arms.values():
        alpha = arm["config"].get("alpha")
        fn = str(arm["config"].get("fn"))
        base = named_base(fn) or (alpha if fn.startswith("log(") else None)
        low = [p for p, v in stars.items() if base and v < 1 / math.log(base)]
        if arm["config"]["protocol"] != "none" and low:
            notes[fn] = (f"note: {fn} RAISES singular values just above σ* for {', '.join(low)} "
                         f"(σ* < 1/ln α = {1 / math.log(base):.3g})")
    return "\n".join(lines + list(notes.values()))
