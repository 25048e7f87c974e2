"""``restrain_model_``: PRUNE on an edited model in memory, against a copy of its original weights.

Common editing toolkits hand back the edited model together with the original tensors of the
modules they changed (``{parameter name: W0}``); or the original model is on disk. Either way each
edited 2-D weight W_N becomes W0 + F(W_N − W0), computed on the parameter's own device (models
dispatched with ``device_map`` are fine: no weight moves between devices; only W0 is copied to the
parameter's device).

All-or-nothing: every input is checked and every restrained weight is computed before the first
parameter is written, so on any error every parameter is bit-identical to what it was.
"""
from __future__ import annotations

import logging
import math
import os
import time
from pathlib import Path
from typing import Mapping, Sequence

import torch

from .. import _validate
from .restrain_saved import (RestrainReport, TensorReport, _check_options, _compile_modules, _dtype_name,
                                  _selected, restrain_pair)
from .safetensors_io import _Source
from ..errors import InvalidInputError
from ..spectral.restraint_fn import FnLike

__all__ = ["restrain_model_"]

log = logging.getLogger(__name__)

_FLOATING = _validate._FLOATING


@torch.no_grad()
def restrain_model_(
    model: torch.nn.Module,
    original_weights: "Mapping[str, torch.Tensor] | str | os.PathLike[str]",
    *,
    fn: FnLike = "log",
    alpha: float = math.e,
    modules: Sequence[str] | str | None = None,
    backend: str = "auto",
    allow_pickle: bool = False,
) -> RestrainReport:
    """Restrain, in place, every parameter of ``model`` that differs from its original.

    Args:
        model: the edited model (any ``nn.Module``; parameters on any devices).
        original_weights: ``{parameter name: W0}`` (names as in ``model.named_parameters()``;
            each W0 has the parameter's shape, any floating dtype and device), or a path to the
            original checkpoint (folder or ``.safetensors`` file, read tensor by tensor; every
            parameter it holds is compared with the model and the differing ones restrained, W0
            taken in the parameter's dtype).
        fn, alpha: the restraint function; modules: regex(es) restricting which parameters are
            restrained (``re.search`` on the name); backend: as in :func:`prune_fast.restrain_`.
        allow_pickle: with a path, allow ``.bin``/``.pt`` files via ``torch.load(weights_only=True)``.

    Returns:
        :class:`~prune_fast.checkpoint.RestrainReport`, one entry per differing parameter.

    Raises:
        InvalidInputError: unknown names, shape mismatches, non-floating or non-finite tensors,
            parameters on the meta device (offloaded); then no parameter has changed.

    Example::

        weights_copy = editor.edit(model, requests)          # {name: original tensor}
        report = prune_fast.restrain_model_(model, weights_copy, fn="log1.2")
    """
    start = time.perf_counter()
    fn_name = _check_options(fn, alpha, backend)
    pats = _compile_modules(modules)
    params = dict(model.named_parameters(remove_duplicate=False))
    staged: list[tuple[torch.nn.Parameter, torch.Tensor]] = []
    reports: list[TensorReport] = []
    if isinstance(original_weights, (str, os.PathLike)):
        source = _Source("BASE", Path(original_weights), allow_pickle)
        try:
            pairs = _pairs_from_source(params, source, pats)
            for name, param in pairs:
                w0 = source.load(source.entries[name]).to(device=param.device, dtype=param.dtype)
                _stage(name, param, w0, fn, alpha, backend, staged, reports)
        finally:
            source.close()
        base = str(original_weights)
    elif isinstance(original_weights, Mapping):
        pairs = _pairs_from_dict(params, original_weights, pats)
        for name, param in pairs:
            _stage(name, param, original_weights[name], fn, alpha, backend, staged, reports)
        base = None
    else:
        raise InvalidInputError("original_weights must be a dict of parameter name → tensor or a path, "
                                f"got {type(original_weights).__name__}")
    for param, new in staged:  # commit: nothing below can fail on valid, same-shape tensors
        param.copy_(new)  # the parameter itself (under no_grad): its version counter sees the write
    return RestrainReport(fn=fn_name, n_tensors=len(pairs), tensors=reports,
                          elapsed_s=time.perf_counter() - start, base=base)


def _check_param(name: str, param: torch.Tensor) -> None:
    if param.device.type == "meta":
        raise InvalidInputError(f"parameter {name!r} is on the meta device (offloaded?); it cannot be restrained "
                                "in memory: restrain the checkpoint with restrain_checkpoint instead")


def _pairs_from_dict(params: dict[str, torch.nn.Parameter], weights: Mapping[str, torch.Tensor],
                     pats) -> list[tuple[str, torch.nn.Parameter]]:
    unknown = [n for n in weights if n not in params]
    if unknown:
        raise InvalidInputError(f"original_weights names {', '.join(map(repr, unknown[:5]))} "
                                f"{'…' if len(unknown) > 5 else ''}which are not parameters of the model")
    pairs = []
    for name, w0 in weights.items():
        param = params[name]
        if not isinstance(w0, torch.Tensor):
            raise InvalidInputError(f"original_weights[{name!r}] must be a tensor, got {type(w0).__name__}")
        _check_param(name, param)
        if tuple(w0.shape) != tuple(param.shape):
            raise InvalidInputError(f"original_weights[{name!r}] has shape {tuple(w0.shape)} but the parameter "
                                    f"has shape {tuple(param.shape)}")
        if w0.dtype not in _FLOATING or param.dtype not in _FLOATING:
            raise InvalidInputError(f"{name!r}: parameter ({param.dtype}) and original ({w0.dtype}) must be floating")
        if w0.device.type == "meta":
            raise InvalidInputError(f"original_weights[{name!r}] is on the meta device")
        if _selected(name, pats):
            pairs.append((name, param))
    return pairs


def _pairs_from_source(params: dict[str, torch.nn.Parameter], source: _Source,
                       pats) -> list[tuple[str, torch.nn.Parameter]]:
    names: list[str] = []
    seen: set[int] = set()
    for n, p in params.items():  # aliases of one tied parameter are restrained once
        if n in source.entries and _selected(n, pats) and id(p) not in seen:
            names.append(n)
            seen.add(id(p))
    missing = [n for n, p in params.items() if n not in source.entries and _selected(n, pats)
               and not any(p is params[m] for m in names)]
    if missing:
        raise InvalidInputError(f"BASE {source.path} lacks parameter(s) {', '.join(map(repr, missing[:5]))}"
                                f"{' …' if len(missing) > 5 else ''} of the model")
    pairs = []
    for name in names:
        param, e = params[name], source.entries[name]
        _check_param(name, param)
        if e.shape != tuple(param.shape):
            raise InvalidInputError(f"{e.where()} has shape {e.shape} but the parameter has shape {tuple(param.shape)}")
        if e.dtype not in ("F64", "F32", "F16", "BF16") or param.dtype not in _FLOATING:
            continue  # integer buffers and the like are never edited by PRUNE's editors
        w0 = source.load(e).to(device=param.device, dtype=param.dtype)
        if not torch.equal(w0, param.detach()):
            pairs.append((name, param))
    return pairs


def _stage(name: str, param: torch.nn.Parameter, w0: torch.Tensor, fn: FnLike, alpha: float, backend: str,
           staged: list, reports: list[TensorReport]) -> None:
    """Check one pair and compute its restrained value (not written yet)."""
    w = param.detach()
    _validate.check_finite(f"parameter {name!r}", w)
    _validate.check_finite(f"original weight of {name!r}", w0)
    w0 = w0.detach().to(device=w.device)
    if torch.equal(w0.to(w.dtype), w) and w0.dtype == w.dtype:
        return
    if w.dim() != 2:
        reports.append(TensorReport(name, tuple(w.shape), _dtype_name(w.dtype), "not_2d"))
        return
    new, rep = restrain_pair(name, w0, w, fn=fn, alpha=alpha, backend=backend, check_finite=False)
    reports.append(rep)
    if new is not None:
        staged.append((param, new))

