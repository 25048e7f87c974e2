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
import mmap
import os
import re
import shutil
import struct
import tempfile
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Sequence

import torch

from .. import _scratch, _validate
from ..errors import InvalidInputError
from ..kernels import resolve_backend
from ..restrain import apply_triplets_, sigma_max, triplets_at_or_above
from .._dtype import compute_dtype
from ..spectral.restraint_fn import FnLike, resolve_fn

__all__ = ["restrain_checkpoint", "RestrainReport", "TensorReport", "restrain_pair"]

log = logging.getLogger(__name__)

_PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")
# safetensors dtype codes <-> torch dtypes (only what torch can represent; raw copies need none).
_ST_TO_TORCH = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
    "BOOL": torch.bool, "F8_E4M3": torch.float8_e4m3fn, "F8_E5M2": torch.float8_e5m2,
    "U16": torch.uint16, "U32": torch.uint32, "U64": torch.uint64,
}
_TORCH_TO_ST = {v: k for k, v in _ST_TO_TORCH.items()}
_FLOAT_CODES = {"F64", "F32", "F16", "BF16"}


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


# ------------------------------------------------------------------------------------- reading
@dataclass(frozen=True)
class _Entry:
    """Where one tensor lives: ``dtype`` is the safetensors code (``"F32"``), ``start``/``end``
    absolute byte offsets in ``file`` (-1 for pickle files)."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    file: Path
    start: int
    end: int

    @property
    def nbytes(self) -> int:
        return self.end - self.start

    def where(self) -> str:
        return f"tensor {self.name!r} in {self.file}"


def _read_header(path: Path) -> tuple[list[_Entry], dict[str, str]]:
    """Entries of a safetensors file in data order, and its ``__metadata__``."""
    with open(path, "rb") as f:
        raw = f.read(8)
        if len(raw) != 8:
            raise InvalidInputError(f"{path} is not a safetensors file (shorter than 8 bytes)")
        (n,) = struct.unpack("<Q", raw)
        size = path.stat().st_size
        if n > size - 8:
            raise InvalidInputError(f"{path} is not a safetensors file (header length {n} > file size {size})")
        try:
            header = json.loads(f.read(n))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise InvalidInputError(f"{path} is not a safetensors file (bad header: {e})") from None
    meta = header.pop("__metadata__", None) or {}
    try:
        entries = [_Entry(k, v["dtype"], tuple(v["shape"]), path, 8 + n + v["data_offsets"][0],
                          8 + n + v["data_offsets"][1]) for k, v in header.items()]
    except (KeyError, TypeError, IndexError) as e:
        raise InvalidInputError(f"{path} is not a safetensors file (bad header entry: {e})") from None
    for e in entries:
        if not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in e.shape) or \
                not all(isinstance(o, int) for o in (e.start, e.end)):
            raise InvalidInputError(f"{path} is corrupt: tensor {e.name!r} has shape {list(e.shape)} and offsets "
                                    f"{e.start - 8 - n}..{e.end - 8 - n}")
        if not 8 + n <= e.start <= e.end <= size:
            raise InvalidInputError(f"{path} is truncated or corrupt: tensor {e.name!r} lies at bytes "
                                    f"{e.start}..{e.end} of a {size}-byte file")
        if e.dtype in _ST_TO_TORCH:
            want = math.prod(e.shape) * _ST_TO_TORCH[e.dtype].itemsize
            if e.nbytes != want:
                raise InvalidInputError(f"{path} is corrupt: tensor {e.name!r} ({e.dtype}, shape {list(e.shape)}) "
                                        f"needs {want} bytes but its data_offsets span {e.nbytes}")
    entries.sort(key=lambda e: (e.start, e.end))
    for prev, e in zip(entries, entries[1:]):  # the safetensors library refuses such files too
        if e.start < prev.end:
            raise InvalidInputError(f"{path} is corrupt: the byte ranges of tensors {prev.name!r} "
                                    f"({prev.start - 8 - n}..{prev.end - 8 - n}) and {e.name!r} "
                                    f"({e.start - 8 - n}..{e.end - 8 - n}) overlap")
    return entries, meta


class _Source:
    """A checkpoint on disk: a model folder (single or sharded, with its index JSON) or one file.

    ``shards``: weight files in order; ``entries``: name → :class:`_Entry`; ``index``: the index
    JSON file if sharded; ``kind``: ``"safetensors"`` or ``"pickle"``.
    """

    def __init__(self, role: str, path: Path, allow_pickle: bool, allow_extra_files: bool = False):
        self.role, self.path = role, path
        self._maps: dict[Path, mmap.mmap] = {}
        self._pickled: dict[Path, dict[str, torch.Tensor]] = {}
        _resolve(role, path)
        if not path.exists():
            raise InvalidInputError(f"{role} {path} does not exist")
        self.kind, self.shards, self.index = _find_weights(role, path, allow_pickle, allow_extra_files)
        self.metadata: dict[Path, dict[str, str]] = {}
        self.file_entries: dict[Path, list[_Entry]] = {}
        for shard in self.shards:
            if not shard.is_file():
                raise InvalidInputError(f"{role}: shard {shard} named in {self.index} is missing")
            if self.kind == "safetensors":
                self.file_entries[shard], self.metadata[shard] = _read_header(shard)
            else:
                self.file_entries[shard] = [
                    _Entry(k, _st_code(t.dtype, f"tensor {k!r} in {shard}"), tuple(t.shape), shard, -1, -1)
                    for k, t in self._load_pickle(shard).items()]
        self.entries: dict[str, _Entry] = {}
        for shard, ents in self.file_entries.items():
            for e in ents:
                if e.name in self.entries:
                    raise InvalidInputError(f"{role}: tensor {e.name!r} appears in both {self.entries[e.name].file} and {shard}")
                self.entries[e.name] = e
        if self.index is not None:
            mapped = json.loads(self.index.read_text()).get("weight_map", {})
            for name, e in self.entries.items():
                if mapped.get(name) not in (None, e.file.name):
                    raise InvalidInputError(f"{role}: index {self.index} puts {name!r} in {mapped[name]} "
                                            f"but it is stored in {e.file.name}")

    def _load_pickle(self, shard: Path) -> dict[str, torch.Tensor]:
        if shard not in self._pickled:
            log.info("loading pickle checkpoint %s with torch.load(weights_only=True)", shard)
            try:
                obj = torch.load(shard, map_location="cpu", weights_only=True, mmap=True)
            except Exception as e:  # noqa: BLE001 - torch raises many types here; report the file
                raise InvalidInputError(f"{self.role}: torch.load(weights_only=True) refused {shard}: {e}") from None
            if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
                raise InvalidInputError(f"{self.role}: {shard} is not a state dict of tensors")
            self._pickled[shard] = obj
        return self._pickled[shard]

    def nbytes(self, e: _Entry) -> int:
        if self.kind == "safetensors":
            return e.nbytes
        t = self._pickled[e.file][e.name]
        return t.numel() * t.element_size()

    def raw(self, e: _Entry) -> torch.Tensor:
        """The tensor's stored bytes as a 1-D uint8 tensor; for safetensors a zero-copy view of the
        memory-mapped file, which is read-only: nothing may write to it."""
        if self.kind == "pickle":
            return _bytes_of(self._pickled[e.file][e.name])
        if not e.nbytes:
            return torch.empty(0, dtype=torch.uint8)
        with warnings.catch_warnings():  # torch warns that the mapping is read-only; it is never written
            warnings.filterwarnings("ignore", message=".*not writable.*")
            return torch.frombuffer(self._map(e.file), dtype=torch.uint8, count=e.nbytes, offset=e.start)

    def load(self, e: _Entry) -> torch.Tensor:
        """The tensor on CPU in its stored dtype: a read-only view of the file when its offset is
        aligned for the dtype (safetensors files are), else a copy."""
        if self.kind == "pickle":
            return self._pickled[e.file][e.name]
        dtype = _ST_TO_TORCH.get(e.dtype)
        if dtype is None:
            raise InvalidInputError(f"{e.where()} has dtype {e.dtype}, which torch cannot represent")
        raw = self.raw(e)
        if e.start % raw.new_empty(0, dtype=dtype).element_size():
            raw = raw.clone()
        return raw.view(dtype).reshape(e.shape)

    def forget(self, e: _Entry) -> None:
        """Unmap the pages of ``e`` from this process (they stay in the page cache), so that the
        resident memory of a pass over a whole model stays about one tensor pair."""
        mm = self._maps.get(e.file)
        advice = getattr(mmap, "MADV_DONTNEED", None)
        if mm is None or not e.nbytes or advice is None or not hasattr(mm, "madvise"):
            return
        start = e.start - e.start % mmap.PAGESIZE
        mm.madvise(advice, start, e.end - start)

    def _map(self, file: Path) -> mmap.mmap:
        if file not in self._maps:
            with open(file, "rb") as f:
                self._maps[file] = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        return self._maps[file]

    def close(self) -> None:
        for mm in self._maps.values():
            with contextlib.suppress(BufferError):  # a view still alive: unmapped when it dies
                mm.close()
        self._maps.clear()
        self._pickled.clear()


def _st_code(dtype: torch.dtype, where: str) -> str:
    if dtype not in _TORCH_TO_ST:
        raise InvalidInputError(f"{where} has dtype {dtype}, which safetensors cannot store")
    return _TORCH_TO_ST[dtype]


def _find_weights(role: str, path: Path, allow_pickle: bool,
                  allow_extra_files: bool = False) -> tuple[str, list[Path], Path | None]:
    """``(kind, shard files, index file)`` of a model folder or a single weight file.

    Several ``.safetensors`` files without an index are ambiguous (a stale or foreign file beside
    ``model.safetensors``, or shards whose index was lost) and refused, unless ``allow_extra_files``
    says that ``model.safetensors`` is the model and the others are to be left behind.
    """
    if path.is_file():
        if path.suffix == ".safetensors":
            return "safetensors", [path], None
        if path.suffix in _PICKLE_SUFFIXES:
            _refuse_pickle(role, [path], allow_pickle)
            return "pickle", [path], None
        raise InvalidInputError(f"{role} {path} is neither a model folder nor a .safetensors file")
    indexes = sorted(path.glob("*.safetensors.index.json"))
    if len(indexes) > 1:
        raise InvalidInputError(f"{role} {path} has several safetensors indexes: {', '.join(p.name for p in indexes)}")
    if indexes:
        return "safetensors", _shards_of(indexes[0]), indexes[0]
    singles = sorted(path.glob("*.safetensors"))
    if (path / "model.safetensors").is_file() and (len(singles) == 1 or allow_extra_files):
        return "safetensors", [path / "model.safetensors"], None
    if len(singles) == 1:
        return "safetensors", singles, None
    if len(singles) > 1:
        hint = ("; if model.safetensors is the model, pass allow_extra_files=True (CLI --allow-extra-files) "
                "and the others are neither read nor copied") if (path / "model.safetensors").is_file() else ""
        raise InvalidInputError(f"{role} {path} has several .safetensors files and no index JSON: "
                                f"{', '.join(p.name for p in singles)}{hint}")
    pickles = sorted(p for p in path.iterdir() if p.suffix in _PICKLE_SUFFIXES and p.is_file())
    if not pickles:
        raise InvalidInputError(f"{role} {path} holds no .safetensors weights")
    _refuse_pickle(role, pickles, allow_pickle)
    pindex = sorted(path.glob("*.bin.index.json"))
    if pindex:
        return "pickle", _shards_of(pindex[0]), pindex[0]
    if len(pickles) > 1:
        raise InvalidInputError(f"{role} {path} has several pickle files and no index JSON: "
                                f"{', '.join(p.name for p in pickles)}")
    return "pickle", pickles, None


def _refuse_pickle(role: str, files: list[Path], allow_pickle: bool) -> None:
    if not allow_pickle:
        names = ", ".join(str(p) for p in files)
        raise InvalidInputError(
            f"{role}: {names} is a pickle checkpoint; prune_fast reads safetensors only. Convert it to "
            f"safetensors, or allow torch.load(weights_only=True) explicitly (allow_pickle=True, "
            f"CLI --allow-pickle)")


def _shards_of(index: Path) -> list[Path]:
    try:
        weight_map = json.loads(index.read_text())["weight_map"]
    except (json.JSONDecodeError, KeyError, TypeError) as e:
        raise InvalidInputError(f"{index} is not a valid index JSON (needs a weight_map): {e}") from None
    return [index.parent / f for f in dict.fromkeys(weight_map.values())]


# ------------------------------------------------------------------------------------- writing
class _ShardWriter:
    """Writes one safetensors file tensor by tensor; the header is written first from ``entries``."""

    def __init__(self, path: Path, entries: list[tuple[str, str, tuple[int, ...], int]], metadata: dict[str, str]):
        header: dict[str, object] = {}
        if metadata:
            header["__metadata__"] = metadata
        offset = 0
        self._sizes: dict[str, int] = {}
        for name, code, shape, nbytes in entries:
            header[name] = {"dtype": code, "shape": list(shape), "data_offsets": [offset, offset + nbytes]}
            self._sizes[name] = nbytes
            offset += nbytes
        raw = json.dumps(header, separators=(",", ":")).encode()
        raw += b" " * (-len(raw) % 8)
        self._f = open(path, "wb")
        self._f.write(struct.pack("<Q", len(raw)))
        self._f.write(raw)
        self.path = path

    def write(self, name: str, t: torch.Tensor) -> None:
        """Append ``t``'s bytes (a contiguous CPU tensor, or the uint8 view from :meth:`_Source.raw`)."""
        raw = _bytes_of(t)
        if raw.numel() != self._sizes[name]:
            raise RuntimeError(f"{name!r} has {raw.numel()} bytes for {self.path}, expected {self._sizes[name]}")
        if raw.numel():
            self._f.write(memoryview(raw.numpy()))

    def close(self) -> None:
        self._f.close()


def _bytes_of(t: torch.Tensor) -> torch.Tensor:
    """A CPU tensor's bytes in row-major order, as a 1-D uint8 tensor (no copy when contiguous)."""
    flat = t.detach().to("cpu").contiguous().reshape(-1)
    return flat.view(torch.uint8) if flat.numel() else torch.empty(0, dtype=torch.uint8)


def _same_bytes(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Whether two uint8 byte views are equal; compared as int64 words when length and alignment
    allow (1.8 ms for 41 MB, against 13 ms byte by byte)."""
    if a.numel() != b.numel():
        return False
    if a.numel() % 8 == 0 and all(t.storage_offset() % 8 == 0 and t.data_ptr() % 8 == 0 for t in (a, b)):
        return torch.equal(a.view(torch.int64), b.view(torch.int64))
    return torch.equal(a, b)


def _out_name(shard: Path, kind: str) -> str:
    """Output file name of a shard: unchanged for safetensors; ``pytorch_model*.bin`` → ``model*.safetensors``."""
    if kind == "safetensors":
        return shard.name
    stem = shard.stem.replace("pytorch_model", "model")
    return stem + ".safetensors"


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


def _resolve(role: str, path: Path) -> Path:
    """``path`` with every symlink resolved, or a clear error for a link loop or a path that cannot be
    resolved (``Path.resolve`` raises a bare ``RuntimeError`` or ``OSError`` there)."""
    if path.is_symlink() and not path.exists():  # os.stat fails: the link's target is missing or a loop
        raise InvalidInputError(f"{role} {path} is a dangling symlink or a symlink loop (to {os.readlink(path)}); "
                                "remove it or pass another path")
    try:
        return path.resolve()
    except (RuntimeError, OSError) as e:
        raise InvalidInputError(f"{role} {path} cannot be resolved (a symlink loop?): {e}") from None


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
    from tqdm.auto import tqdm

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


def _folder_mode() -> int:
    """The mode a new folder gets from the process umask (``mkdir``'s 0777 & ~umask)."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o777 & ~mask


def _other_files(edited: _Source) -> list[tuple[Path, Path]]:
    """``(file, path relative to EDITED)`` of every non-weight file to copy into OUT.

    Symlinked files and folders are followed (OUT gets real files); a dangling link or a folder
    link that leads back into its own ancestors (a loop) is refused here, before anything is
    written. Weight files that are not part of the model are left out, with a warning.
    """
    src = edited.path
    weight_files = {_resolve("EDITED", p) for p in edited.shards}
    if edited.index is not None:
        weight_files.add(_resolve("EDITED", edited.index))
    found: list[tuple[Path, Path]] = []
    for folder, dirs, files in os.walk(src, followlinks=True, onerror=_walk_error):
        here = Path(folder)
        ancestors = {_resolve("EDITED", a) for a in [here, *here.parents] if a == src or src in a.parents}
        for d in list(dirs):
            target = _resolve("EDITED", here / d)
            if target in ancestors:
                raise InvalidInputError(f"EDITED {src}: the folder link {here / d} leads back to {target} (a loop); "
                                        "remove it or replace it with a real folder")
        for name in sorted(files):
            p = here / name
            if not p.exists():
                raise InvalidInputError(f"EDITED {src}: {p} is a dangling or looping symlink; remove it")
            if _resolve("EDITED", p) in weight_files:
                continue
            stale_pickle = p.suffix in _PICKLE_SUFFIXES and p.name.startswith(("pytorch_model", "model"))
            if stale_pickle or p.name.endswith((".bin.index.json", ".safetensors", ".safetensors.index.json")):
                log.warning("not copying %s: unrestrained weights must not sit beside the restrained ones", p)
                continue
            found.append((p, p.relative_to(src)))
    return sorted(found, key=lambda f: str(f[1]))


def _walk_error(e: OSError) -> None:
    raise InvalidInputError(f"EDITED: cannot read {e.filename}: {e.strerror}")


class _Staging:
    """A temporary folder (or file) beside OUT, renamed onto OUT only by :meth:`commit`."""

    def __init__(self, out: Path, edited: _Source):
        self.out, self.edited = out, edited
        self.single = edited.path.is_file()
        self.others = [] if self.single else _other_files(edited)  # links checked before anything is written
        parent = out.resolve().parent
        self.tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=parent))
        os.chmod(self.tmp, _folder_mode())  # mkdtemp's 0700 would become OUT's mode

    def open_shard(self, shard: Path, entries: list[_Entry]) -> _ShardWriter:
        name = self.out.name if self.single else _out_name(shard, self.edited.kind)
        metadata = self.edited.metadata[shard] if self.edited.kind == "safetensors" else {"format": "pt"}
        spec = [(e.name, e.dtype, e.shape, self.edited.nbytes(e)) for e in entries]
        return _ShardWriter(self.tmp / name, spec, metadata)

    def _copy_other_files(self) -> None:
        for p, rel in self.others:
            dest = self.tmp / rel
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(p, dest)  # follows links: OUT gets the files themselves
        if self.edited.index is not None:
            if self.edited.kind == "safetensors":
                shutil.copy2(self.edited.index, self.tmp / self.edited.index.name)
            else:
                self._write_index()

    def _write_index(self) -> None:
        weight_map = {e.name: _out_name(e.file, "pickle") for e in self.edited.entries.values()}
        total = sum(self.edited.nbytes(e) for e in self.edited.entries.values())
        index = {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}
        (self.tmp / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")

    def commit(self) -> None:
        if self.single:
            final = self.tmp / self.out.name
            os.replace(final, self.out)
            shutil.rmtree(self.tmp)
            return
        self._copy_other_files()
        old = None
        if self.out.exists():  # overwrite was allowed: move the old OUT aside, then swap
            old = Path(tempfile.mkdtemp(prefix=f".{self.out.name}.old-", dir=self.tmp.parent))
            os.replace(self.out, old / "x")
        os.replace(self.tmp, self.out)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
        log.info("wrote %s", self.out)

    def abort(self) -> None:
        shutil.rmtree(self.tmp, ignore_errors=True)
