"""The optional CUDA C++ library (``csrc/``, built by ``CMakeLists.txt``), loaded only when present.

It holds ``prune_fast_jacobi_eigh_f32``, the CUDA twin of the Triton Jacobi eigensolver in
``small_eigh.py``. Nothing requires it: :func:`available` is False when the shared library is
missing, cannot be loaded, or torch has no CUDA, and every caller then uses Triton or torch.

Search order: ``$PRUNE_FAST_CUDA_LIB`` (a file path), then ``libprune_fast_cuda.so`` next to this
module (where CMake and setup.py put it).

Example::

    if cuda_library.available():
        w, v = cuda_library.jacobi_eigh(gram)      # unsorted eigenvalues, fp32, on gram's device
"""
from __future__ import annotations

import ctypes
import functools
import logging
import os
from pathlib import Path

import torch

from .settings import JACOBI_MAX_SWEEPS

__all__ = ["available", "library_path", "jacobi_eigh"]

log = logging.getLogger(__name__)

_NAMES = ("libprune_fast_cuda.so", "libprune_fast_cuda.dylib", "prune_fast_cuda.dll")


def library_path() -> Path | None:
    """Where the built library is, or None."""
    env = os.environ.get("PRUNE_FAST_CUDA_LIB")
    if env:
        return Path(env) if Path(env).is_file() else None
    here = Path(__file__).resolve().parent
    for name in _NAMES:
        if (here / name).is_file():
            return here / name
    return None


@functools.lru_cache(maxsize=1)
def _load() -> ctypes.CDLL | None:
    path = library_path()
    if path is None or not torch.cuda.is_available():
        return None
    try:
        lib = ctypes.CDLL(str(path))
    except OSError as exc:  # wrong CUDA runtime, wrong architecture, ...
        log.warning("prune_fast CUDA library at %s could not be loaded (%s); using Triton/torch", path, exc)
        return None
    fn = lib.prune_fast_jacobi_eigh_f32
    fn.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int, ctypes.c_int,
                   ctypes.c_int, ctypes.c_float, ctypes.c_void_p]
    fn.restype = ctypes.c_int
    lib.prune_fast_jacobi_max_k.restype = ctypes.c_int
    log.debug("loaded prune_fast CUDA library from %s", path)
    return lib


def available() -> bool:
    """Whether the CUDA library is built and loadable here."""
    return _load() is not None


def jacobi_eigh(a: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(w, v)``, unsorted, of symmetric CUDA a (..., k, k) by the CUDA Jacobi kernel (fp32)."""
    lib = _load()
    if lib is None:
        raise RuntimeError("the prune_fast CUDA library is not available (build it with CMakeLists.txt)")
    k = a.shape[-1]
    if k > lib.prune_fast_jacobi_max_k() or a.device.type != "cuda":
        raise ValueError(f"CUDA jacobi_eigh takes CUDA matrices up to {lib.prune_fast_jacobi_max_k()}, "
                         f"got {tuple(a.shape)} on {a.device}")
    batch = a.reshape(-1, k, k).to(torch.float32).contiguous()
    nb = batch.shape[0]
    w = torch.empty(nb, k, dtype=torch.float32, device=a.device)
    v = torch.empty(nb, k, k, dtype=torch.float32, device=a.device)
    tol = 4.0 * torch.finfo(torch.float32).eps * max(k, 16)
    stream = torch.cuda.current_stream(a.device).cuda_stream
    err = lib.prune_fast_jacobi_eigh_f32(batch.data_ptr(), w.data_ptr(), v.data_ptr(), nb, k,
                                         JACOBI_MAX_SWEEPS, tol, stream)
    if err != 0:
        raise RuntimeError(f"prune_fast_jacobi_eigh_f32 failed with cudaError {err}")
    return w.reshape(a.shape[:-1]), v.reshape(a.shape)
