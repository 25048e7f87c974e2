"""Restrain a model that another tool already edited, from its checkpoints on disk.

    restrain_checkpoint(base, edited, out)       BASE = W0 of every tensor, EDITED = W_N

For every tensor of EDITED that differs (bit for bit) from BASE and is a 2-D floating weight, PRUNE
is applied once, as in the paper's protocol (Ma et al., ICLR 2025, arXiv 2405.16821)::

    σ* = σ_max(W0),   Δ = W_N − W0 (fp32; fp64 for fp64 weights),   Ŵ = W0 + F(Δ) = restrain_(W_N, Δ)

and Ŵ is written in the tensor's own dtype. Every other tensor is copied byte for byte; the
sharding, the index JSON, the config, the tokenizer and every other file of EDITED are kept.

Streaming: the safetensors files are memory-mapped and read in place, never copied into the
process: tensors are compared as raw bytes (int64 words), a differing pair is used as zero-copy
views, and unchanged tensors are written out straight from the mapping; each tensor's pages are
unmapped once it is done. Δ and then Ŵ live in one reused fp32 buffer. Output shards are written
tensor by tensor (the safetensors header is known in advance, since dtypes and shapes do not
change). Resident memory is about one tensor pair plus that buffer, never a whole model.

Nothing is written until the inputs are checked (names, shapes, dtypes, OUT), and the output goes to
a temporary folder beside OUT that is renamed into place only when complete, so a failure midway
(non-finite values found in a tensor, Ctrl-C, a full disk) never leaves a half-written OUT.
Pickle checkpoints (``.bin``, ``.pt``) are refused unless ``allow_pickle=True``, which reads them
with ``torch.load(weights_only=True)`` and writes safetensors.

Example::

    report = prune_fast.restrain_checkpoint("gpt2-xl", "gpt2-xl-memit", "gpt2-xl-memit-prune", fn="log")
    print(report.format_table())
"""
from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import re
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Sequence

import torch
from tqdm.auto import tqdm

from .. import _scratch, _validate
from ..errors import InvalidInputError
from ..kernels import resolve_backend
from ..restrain import apply_triplets_, sigma_max, triplets_at_or_above
from .._dtype import compute_dtype
from ..spectral.restraint_fn import FnLike, resolve_fn
from .safetensors_io import _FLOAT_CODES, _ST_TO_TORCH, _Entry, _resolve, _same_bytes, _Source, _Staging

__all__ = ["restrain_checkpoint", "RestrainReport", "TensorReport", "restrain_pair"]

log = logging.getLogger(__name__)

# --------------------------------------------------------------------------------------- reports
@dataclass
class TensorReport:
    """One tensor that differs between BASE and EDITED, and what was done with it.

    ``action``: ``"restrained"`` (some σ(Δ) ≥ σ*, written restrained), ``"below_sigma_star"``
    (2-D float, nothing reached σ*: written unchanged), ``"not_2d"`` / ``"not_float"`` (copied
    unchanged), ``"not_selected"`` (excluded by ``modules``, copied unchanged).
    ``sigma_delta_before``/``after``: the top singular value of Δ before and after F.
    ``sigma_before``/``sigma_after``: every restrained singular value of Δ (descending).
    """

    name: str
    shape: tuple[int, ...]
    dtype: str
    action: str
    sigma_star: float | None = None
    sigma_delta_before: float | None = None
    sigma_delta_after: float | None = None
    n_restrained: int = 0
    seconds: float = 0.0
    sigma_before: list[float] = field(default_factory=list)
    sigma_after: list[float] = field(default_factory=list)
    residual: float = 0.0
    file: str | None = None


@dataclass
class RestrainReport:
    """What ``restrain_checkpoint`` or ``restrain_model_`` did; one :class:`TensorReport` per differing tensor."""

    fn: str
    n_tensors: int
    tensors: list[TensorReport]
    elapsed_s: float
    base: str | None = None
    edited: str | None = None
    out: str | None = None
    dry_run: bool = False

    @property
    def restrained(self) -> list[TensorReport]:
        return [t for t in self.tensors if t.action == "restrained"]

    @property
    def n_differing(self) -> int:
        return len(self.tensors)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["n_differing"] = self.n_differing
        d["n_restrained_tensors"] = len(self.restrained)
        return d

    def save_json(self, path: "str | os.PathLike[str]") -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2) + "\n")

    def format_table(self) -> str:
        """One row per 2-D float tensor examined (name, shape, σ*, top σ(Δ) before → after, n, seconds)."""
        head = ("tensor", "shape", "dtype", "σ*", "top σ(Δ)", "→ after", "n", "seconds")
        rows = []
        for t in self.tensors:
            if t.sigma_star is None:
                continue
            rows.append((t.name, "×".join(map(str, t.shape)), t.dtype, f"{t.sigma_star:.4g}",
                         f"{t.sigma_delta_before:.4g}", f"{t.sigma_delta_after:.4g}", str(t.n_restrained),
                         f"{t.seconds:.3f}"))
        widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(head)]
        lines = ["  ".join(h.ljust(w) for h, w in zip(head, widths))]
        lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths)) for r in rows]
        others = [t for t in self.tensors if t.sigma_star is None]
        for t in others:
            lines.append(f"{t.name}  {'×'.join(map(str, t.shape))}  {t.dtype}  differs, copied unchanged ({t.action})")
        where = "dry run, nothing written" if self.dry_run else (f"written to {self.out}" if self.out else "in memory")
        lines.append(f"{len(self.restrained)} of {self.n_differing} differing tensors restrained "
                     f"({self.n_tensors} tensors, fn={self.fn}) in {self.elapsed_s:.2f} s; {where}")
        return "\n".join(lines)


# ------------------------------------------------------------------------------- the tensor math
def restrain_pair(name: str, w0: torch.Tensor, w_edited: torch.Tensor, *, fn: FnLike = "log",
                  alpha: float = math.e, backend: str = "auto", work: torch.Tensor | None = None,
                  check_finite: bool = True) -> tuple[torch.Tensor | None, TensorReport]:
    """PRUNE on one (W0, W_N) pair; returns ``(Ŵ in W_N's dtype or None if unchanged, report)``.

    ``w0``, ``w_edited``: 2-D floating, same shape (any layout: Linear out×in or Conv1D in×out).
    The work runs on ``w_edited``'s device in fp32 (fp64 for fp64): σ* = σ_max(W0),
    Δ = W_N − W0, Ŵ = W0 + F(Δ). Neither input is modified.

    ``work``: optional contiguous buffer of W_N's shape in that compute dtype, on its device. It
    holds Δ and then Ŵ, so no weight-sized tensor is allocated; when W_N is in the compute dtype
    the returned Ŵ *is* ``work`` (``restrain_checkpoint`` writes it out before reusing the buffer).

    ``check_finite=False``: the caller has already checked both inputs for NaN/Inf (with errors
    that name the file or parameter), so the same reductions are not run twice.

    Example::

        new, rep = restrain_pair("mlp.c_proj.weight", w0, w_n, fn="log1.2")
    """
    start = time.perf_counter()
    f = resolve_fn(fn, alpha)
    w = _validate.check_matrix(f"{name} (edited)", w_edited, finite=check_finite).detach()
    w0 = _validate.check_matrix(f"{name} (base)", w0, finite=check_finite).detach().to(device=w.device)
    _validate.check_same_placement(f"{name} (base)", w0, f"{name} (edited)", w)
    used = resolve_backend(_validate.check_backend(backend), w.device)
    acc = compute_dtype(w_edited)
    if work is None:
        work = torch.empty(w.shape, dtype=acc, device=w.device)
    elif work.shape != w.shape or work.dtype != acc or work.device != w.device or not work.is_contiguous():
        raise InvalidInputError(f"{name}: work must be a contiguous {acc} tensor of shape {tuple(w.shape)} on {w.device}")
    elif _validate.shares_memory(work, w) or _validate.shares_memory(work, w0):
        raise InvalidInputError(f"{name}: work shares memory with an input; it is overwritten, pass a separate buffer")
    rep = TensorReport(name, tuple(w.shape), _dtype_name(w.dtype), "below_sigma_star")
    # W0 in the compute dtype: the input itself when it already is (a zero-copy view of BASE's
    # file in restrain_checkpoint), else converted into the buffer, which then becomes Δ in place.
    w0_acc = w0 if w0.dtype == acc else work.copy_(w0)
    sigma_star, _ = sigma_max(w0_acc)
    if sigma_star == 0.0:
        raise InvalidInputError(f"{name}: the base weight W0 is zero, so σ* = σ_max(W0) = 0 and PRUNE is undefined; "
                                "leave it out with modules= (CLI --modules)")
    rep.sigma_star = sigma_star
    if w0_acc is work:
        delta = _subtract_from_(w, work)
    else:
        delta = torch.sub(w, w0_acc, out=work) if w.dtype == acc else work.copy_(w).sub_(w0_acc)
    del w0_acc
    _validate.check_finite(f"{name}: Δ = edited − base (overflow?)", delta)  # both finite, the difference may not be
    trip = triplets_at_or_above(delta, sigma_star, used)
    if trip is None:  # Δ = 0
        rep.sigma_delta_before = rep.sigma_delta_after = 0.0
        rep.seconds = time.perf_counter() - start
        return None, rep
    if not trip.s.numel():
        top, _ = sigma_max(delta)
        rep.sigma_delta_before = rep.sigma_delta_after = top
        rep.seconds = time.perf_counter() - start
        return None, rep
    weight = work.copy_(w)  # Δ is no longer needed: build Ŵ = W_N − U diag(σ − F(σ)) Vᵀ in its place
    res = apply_triplets_(weight, trip, f, sigma_star, used, start)
    rep.action, rep.n_restrained, rep.residual = "restrained", res.n_restrained, res.residual
    rep.sigma_before, rep.sigma_after = res.sigma_before, res.sigma_after
    rep.sigma_delta_before, rep.sigma_delta_after = res.sigma_before[0], res.sigma_after[0]
    raised = sum(a > b for a, b in zip(res.sigma_after, res.sigma_before))
    if raised:  # F(σ) = σ* + log_α(σ/σ*) exceeds σ just above σ* whenever σ* < 1/ln α
        log.warning("%s: F raised %d of %d restrained singular values (σ* = %.4g is small for fn=%s); "
                    "the restraint grows this update", name, raised, res.n_restrained, sigma_star, res.fn)
    rep.seconds = time.perf_counter() - start
    return weight.to(w_edited.dtype), rep


_SUBTRACT_BLOCK = 4 << 20  # elements per converted block of rows (16 MB in fp32)


def _subtract_from_(w: torch.Tensor, work: torch.Tensor) -> torch.Tensor:
    """``work ← w − work`` in ``work``'s dtype, for a ``w`` of another (half) dtype.

    A mixed-dtype ``sub`` converts element by element (49 ms at 4096×11008 fp16 → fp32 here);
    converting blocks of rows into a small buffer first takes ~20 ms. Rounds exactly as
    ``w.to(work.dtype) − work``.
    """
    if w.dtype == work.dtype:
        return torch.sub(w, work, out=work)
    rows = max(1, _SUBTRACT_BLOCK // max(1, w.shape[1]))
    block = torch.empty((min(rows, w.shape[0]), w.shape[1]), dtype=work.dtype, device=work.device)
    for i in range(0, w.shape[0], rows):
        part = work[i:i + rows]
        torch.sub(block[:part.shape[0]].copy_(w[i:i + rows]), part, out=part)
    return work


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).replace("torch.", "")


# ------------------------------------------------------------------------------------- checks
def _check_pair(base: _Source, edited: _Source) -> None:
    missing = [n for n in edited.entries if n not in base.entries]
    extra = [n for n in base.entries if n not in edited.entries]
    if missing or extra:
        parts = []
        if missing:
            parts.append(f"in EDITED but not BASE: {', '.join(map(repr, missing[:5]))}{' …' if len(missing) > 5 else ''}")
        if extra:
            parts.append(f"in BASE but not EDITED: {', '.join(map(repr, extra[:5]))}{' …' if len(extra) > 5 else ''}")
        raise InvalidInputError(f"BASE {base.path} and EDITED {edited.path} hold different tensors; " + "; ".join(parts))
    for name, e in edited.entries.items():
        b = base.entries[name]
        if e.shape != b.shape:
            raise InvalidInputError(f"{e.where()} has shape {e.shape} but {b.where()} has shape {b.shape}")
        if e.dtype != b.dtype:
            raise InvalidInputError(f"{e.where()} has dtype {e.dtype} but {b.where()} has dtype {b.dtype}")


def _check_out(out: Path, base: Path, edited: Path, overwrite: bool) -> None:
    o = _resolve("OUT", out)
    for role, given in (("BASE", base), ("EDITED", edited)):
        p = _resolve(role, given)
        if o == p:
            raise InvalidInputError(f"OUT {out} is the {role} checkpoint itself; choose another output path")
        if o in p.parents:
            raise InvalidInputError(f"OUT {out} contains the {role} checkpoint {p}; choose another output path")
        if p.is_dir() and p in o.parents:
            raise InvalidInputError(f"OUT {out} lies inside the {role} folder {given}; choose a path outside it")
    if out.exists() and not overwrite:
        raise InvalidInputError(f"OUT {out} already exists; pass overwrite=True (CLI --overwrite) to replace it")
    if not o.parent.is_dir():
        raise InvalidInputError(f"the folder {o.parent} that should hold OUT does not exist")


def _compile_modules(modules: Sequence[str] | str | None) -> list[re.Pattern[str]] | None:
    if modules is None:
        return None
    if isinstance(modules, str):
        modules = [modules]
    pats = []
    for m in modules:
        try:
            pats.append(re.compile(m))
        except re.error as e:
            raise InvalidInputError(f"modules: {m!r} is not a valid regular expression: {e}") from None
    return pats


def _selected(name: str, pats: list[re.Pattern[str]] | None) -> bool:
    return pats is None or any(p.search(name) for p in pats)


def _check_options(fn: FnLike, alpha: float, backend: str) -> str:
    _validate.check_backend(backend)
    return resolve_fn(fn, alpha).describe()


# ------------------------------------------------------------------------------------- main
def restrain_checkpoint(
    base: "str | os.PathLike[str]",
    edited: "str | os.PathLike[str]",
    out: "str | os.PathLike[str] | None",
    *,
    fn: FnLike = "log",
    alpha: float = math.e,
    modules: Sequence[str] | str | None = None,
    dry_run: bool = False,
    overwrite: bool = False,
    allow_pickle: bool = False,
    backend: str = "auto",
    progress: bool = True,
    allow_extra_files: bool = False,
) -> RestrainReport:
    """Restrain every edited 2-D weight of EDITED against BASE and write the model to ``out``.

    Args:
        base: the original model: a Hugging Face folder (single or sharded safetensors) or one
            ``.safetensors`` file. Provides W0 and σ* = σ_max(W0) of each tensor.
        edited: the edited model, same tensor names, shapes and dtypes. Its non-weight files
            (config, tokenizer, generation config, …) and its sharding are kept in ``out``.
        out: where to write (a folder, or a ``.safetensors`` file when ``edited`` is one); must not
            exist unless ``overwrite``; may be ``None`` only with ``dry_run``.
        fn, alpha: the restraint function (see :mod:`prune_fast.spectral.restraint_fn`).
        modules: regular expression(s); only differing tensors whose name matches one (``re.search``)
            are restrained, the others are copied unchanged. ``None``: all.
        dry_run: compute and report everything, write nothing.
        allow_pickle: read ``.bin``/``.pt`` checkpoints with ``torch.load(weights_only=True)``
            (output is written as safetensors). Off by default: pickle files are refused.
        backend: ``"auto"``, ``"torch"`` or ``"triton"`` for :func:`prune_fast.restrain_`.
        progress: show a tqdm bar over tensors.
        allow_extra_files: a folder holding ``model.safetensors`` and other ``.safetensors`` files but
            no index is ambiguous and refused; with this, ``model.safetensors`` is the model and the
            other files are neither read nor copied.

    Returns:
        :class:`RestrainReport`, one :class:`TensorReport` per tensor that differs.

    Raises:
        InvalidInputError: before anything is written, for mismatched names/shapes/dtypes,
            pickle files, a bad OUT or option; during the pass (then nothing is left at OUT) for
            non-finite values in a differing float tensor.

    Example::

        rep = restrain_checkpoint("llama-base", "llama-memit", "llama-memit-prune", modules=r"mlp\\.down_proj")
        print(rep.format_table())
    """
    start = time.perf_counter()
    fn_name = _check_options(fn, alpha, backend)
    pats = _compile_modules(modules)
    base_p, edited_p = Path(base), Path(edited)
    if out is None and not dry_run:
        raise InvalidInputError("out is required unless dry_run=True")
    out_p = None if out is None else Path(out)
    if out_p is not None and not dry_run:
        _check_out(out_p, base_p, edited_p, overwrite)
    with contextlib.ExitStack() as stack:
        src_b = _Source("BASE", base_p, allow_pickle, allow_extra_files)
        stack.callback(src_b.close)
        src_e = _Source("EDITED", edited_p, allow_pickle, allow_extra_files)
        stack.callback(src_e.close)
        _check_pair(src_b, src_e)
        if out_p is not None and not dry_run and edited_p.is_file() and (out_p.suffix != ".safetensors" or out_p.is_dir()):
            raise InvalidInputError(f"EDITED {edited_p} is a single file, so OUT {out_p} must be a .safetensors file path")
        stack.callback(_scratch.release)  # do not hold a weight-sized buffer after the call
        tensors = _run(src_b, src_e, None if dry_run else out_p, fn=fn, alpha=alpha, pats=pats,
                       backend=backend, progress=progress)
    report = RestrainReport(fn=fn_name, n_tensors=len(src_e.entries), tensors=tensors,
                            elapsed_s=time.perf_counter() - start, base=str(base_p), edited=str(edited_p),
                            out=None if out_p is None else str(out_p), dry_run=dry_run)
    log.info("%d of %d differing tensors restrained in %.2f s", len(report.restrained), report.n_differing,
             report.elapsed_s)
    return report


def _run(base: _Source, edited: _Source, out: Path | None, *, fn: FnLike, alpha: float,
         pats: list[re.Pattern[str]] | None, backend: str, progress: bool) -> list[TensorReport]:
    reports: list[TensorReport] = []
    staging = _Staging(out, edited) if out is not None else None
    try:
        bar = tqdm(total=len(edited.entries), desc="restrain", unit="tensor", disable=not progress)
        with bar:
            for shard, entries in edited.file_entries.items():
                writer = staging.open_shard(shard, entries) if staging else None
                try:
                    for e in entries:
                        bar.set_postfix_str(e.name, refresh=False)
                        with contextlib.ExitStack() as held:  # a borrowed buffer lives until written
                            new, rep = _process(base, edited, e, fn=fn, alpha=alpha, pats=pats, backend=backend,
                                                held=held)
                            if rep is not None:
                                reports.append(rep)
                            if writer is not None:
                                writer.write(e.name, new if new is not None else edited.raw(e))
                            del new  # the buffer goes back to _scratch: no second one alive at the next borrow
                        base.forget(base.entries[e.name])
                        edited.forget(e)
                        bar.update(1)
                finally:
                    if writer is not None:
                        writer.close()
        if staging is not None:
            staging.commit()
    except BaseException:
        if staging is not None:
            staging.abort()
        raise
    return reports


def _process(base: _Source, edited: _Source, e: _Entry, *, fn: FnLike, alpha: float,
             pats: list[re.Pattern[str]] | None, backend: str,
             held: contextlib.ExitStack) -> tuple[torch.Tensor | None, TensorReport | None]:
    """``(new tensor or None to copy EDITED's bytes, report or None when identical)``.

    The new tensor may be a reused buffer entered on ``held``: valid until ``held`` closes.
    """
    b = base.entries[e.name]
    if _same_bytes(base.raw(b), edited.raw(e)):
        return None, None
    dtype = _dtype_name(_ST_TO_TORCH[e.dtype]) if e.dtype in _ST_TO_TORCH else e.dtype
    rep = TensorReport(e.name, e.shape, dtype, "not_float", file=e.file.name)
    if e.dtype not in _FLOAT_CODES:
        log.info("%s differs but is not floating (%s): copied unchanged", e.name, e.dtype)
        return None, rep
    w_b, w_e = base.load(b), edited.load(e)
    _validate.check_finite(f"BASE {b.where()}", w_b)
    _validate.check_finite(f"EDITED {e.where()}", w_e)
    if len(e.shape) != 2:
        rep.action = "not_2d"
        log.info("%s differs but is %d-D: copied unchanged", e.name, len(e.shape))
        return None, rep
    if not _selected(e.name, pats):
        rep.action = "not_selected"
        return None, rep
    # Δ and then Ŵ go into this thread's reused buffer (no 41 MB first-touch cost per matrix).
    work = held.enter_context(_scratch.borrow(e.shape, compute_dtype(w_e)))
    new, rep = restrain_pair(e.name, w_b, w_e, fn=fn, alpha=alpha, backend=backend, work=work, check_finite=False)
    rep.file = e.file.name
    log.debug("%s: %s", e.name, rep)
    return new, rep
