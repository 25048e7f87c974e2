"""The saved form of a :class:`prune_fast.SpectralTracker`: its format tag, the state dtypes, and
the check of a ``state_dict`` against the weight it is loaded into, field by field, before anything
is written (a resumed run either gets an exact tracker or a clear error naming the bad field).
"""
from __future__ import annotations

from typing import Any

import torch

from . import _validate
from ._dtype import compute_dtype
from .errors import InvalidInputError
from .spectral.restraint_fn import resolve_fn

__all__ = ["FORMAT", "STATE_DTYPES", "check_state", "resolve_state_dtype"]

FORMAT = "prune_fast.SpectralTracker/1"
STATE_DTYPES = {str(d): d for d in (torch.float32, torch.float64)}


def check_state(weight: torch.Tensor, state: object, fn: object) -> dict[str, Any]:
    """Every field of a ``state_dict`` checked against ``weight`` and each other, before any write;
    returns its meta. Raises :class:`InvalidInputError` naming the field."""
    meta = state.get("meta") if isinstance(state, dict) else None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise InvalidInputError("state is not a SpectralTracker state_dict (missing or unknown 'meta.format')")
    required = ("shape", "dtype", "sigma_star", "fn", "alpha", "restrain_every", "refresh_every", "n_edits",
                "since_restrain")
    absent = [k for k in required if k not in meta]
    if absent:
        raise InvalidInputError(f"state meta lacks {', '.join(f'meta.{k}' for k in absent)}")
    if meta["shape"] != list(weight.shape) or meta["dtype"] != str(weight.dtype):
        raise InvalidInputError(f"state is for a {meta['dtype']} weight of shape {meta['shape']!r}, "
                                f"got {weight.dtype} {tuple(weight.shape)}")
    try:
        _validate.check_sigma_star(meta["sigma_star"], compute_dtype(weight))
        if meta["sigma_star"] is None:
            raise InvalidInputError("sigma_star is missing")
    except InvalidInputError as e:
        raise InvalidInputError(f"state meta.sigma_star: {e}") from None
    if meta["fn"] is None and fn is None:
        raise InvalidInputError("this state was made with a callable fn: pass fn= to from_state_dict")
    if meta["fn"] is not None and not isinstance(meta["fn"], str):
        raise InvalidInputError(f"state meta.fn must be a name or null, got {meta['fn']!r}")
    try:
        resolve_fn(meta["fn"] if fn is None else fn, meta["alpha"])
    except InvalidInputError as e:
        raise InvalidInputError(f"state meta.fn/meta.alpha: {e}") from None
    if meta["restrain_every"] is not None:
        _validate.check_count("state meta.restrain_every", meta["restrain_every"], minimum=1)
    _validate.check_count("state meta.refresh_every", meta["refresh_every"], minimum=1)
    _validate.check_count("state meta.n_edits", meta["n_edits"])
    _validate.check_count("state meta.since_restrain", meta["since_restrain"])
    saved = meta.get("state_dtype")  # absent in states written before the option existed
    if saved is not None and saved not in STATE_DTYPES:
        raise InvalidInputError(f"state meta.state_dtype: unknown state_dtype {saved!r}")
    needed = {"w0", "applied_u", "applied_c", "applied_v"}
    missing = needed - set(state)
    if missing or not ({"delta"} <= set(state) or {"qa", "qb", "core"} <= set(state)):
        raise InvalidInputError(f"state is missing tensors: {sorted(missing) or 'delta/qa/qb/core'}")
    m, n = weight.shape
    k = state_tensor(state, "applied_c", 1).shape[0]
    shapes: dict[str, tuple[int, ...]] = {"w0": (m, n), "applied_u": (m, k), "applied_v": (n, k)}
    if "delta" in state:
        shapes["delta"] = (m, n)
    else:
        ra, rb = state_tensor(state, "qa", 2).shape[1], state_tensor(state, "qb", 2).shape[1]
        shapes.update(qa=(m, ra), qb=(n, rb), core=(ra, rb))
    for key, want in shapes.items():
        t = state_tensor(state, key, len(want))
        if tuple(t.shape) != want:
            raise InvalidInputError(f"state[{key!r}] has shape {tuple(t.shape)}, expected {want} "
                                    f"for a weight of shape {(m, n)}")
    return meta


def state_tensor(state: dict[str, Any], key: str, dim: int) -> torch.Tensor:
    t = state[key]
    if not isinstance(t, torch.Tensor) or t.dim() != dim or t.dtype not in _validate._FLOATING:
        what = f"a {t.dim()}-D {t.dtype} tensor" if isinstance(t, torch.Tensor) else type(t).__name__
        raise InvalidInputError(f"state[{key!r}] must be a {dim}-D floating tensor, got {what}")
    _validate.check_finite(f"state[{key!r}]", t)
    return t


def resolve_state_dtype(weight: torch.Tensor, state_dtype: object) -> torch.dtype:
    """The tracker's state dtype: fp32 or fp64, never below the weight's own compute dtype."""
    if state_dtype is None:
        return compute_dtype(weight)
    if state_dtype not in STATE_DTYPES.values():
        raise InvalidInputError(f"state_dtype must be None, torch.float32 or torch.float64, got {state_dtype!r}")
    if state_dtype == torch.float32 and weight.dtype == torch.float64:
        raise InvalidInputError("state_dtype=torch.float32 would round a float64 weight's state; use None")
    return state_dtype  # type: ignore[return-value]
