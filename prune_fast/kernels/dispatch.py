"""Choosing between the torch and Triton versions of an operation, and launching Triton kernels.

``resolve_backend`` turns the user's ``backend=`` into ``"torch"`` or ``"triton"`` once per call;
the operation front-ends (``apply_correction_``, ``skinny_matmul``, ``orthonormalize``,
``small_eigh``) take that resolved name and run the matching version.

Triton kernels are plain functions wrapped by :func:`triton_kernel`, which applies ``triton.jit``
on first launch. So ``TRITON_INTERPRET`` is read when a kernel first runs, not when prune_fast is
imported, and a machine without Triton imports prune_fast and runs every torch version.
"""
from __future__ import annotations

import functools
import importlib.util
import os
from typing import Any, Callable

import torch

from ..errors import InvalidInputError

__all__ = ["resolve_backend", "triton_available", "triton_interpreting", "triton_kernel"]


@functools.lru_cache(maxsize=1)
def triton_available() -> bool:
    """Whether ``import triton`` can succeed (checked lazily, never at install time)."""
    return importlib.util.find_spec("triton") is not None


def triton_interpreting() -> bool:
    """Whether Triton's CPU interpreter is switched on (``TRITON_INTERPRET=1``)."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def resolve_backend(backend: str, device: torch.device) -> str:
    """Return ``"torch"`` or ``"triton"`` for tensors on ``device``, or raise if impossible.

    - ``"torch"``: always torch.
    - ``"auto"``: Triton on CUDA tensors when Triton is importable, torch otherwise (CPU included,
      even under the interpreter, which is for tests).
    - ``"triton"``: Triton, on CUDA tensors or on CPU tensors under ``TRITON_INTERPRET=1``;
      :class:`InvalidInputError` otherwise (no silent fallback).

    Float64 weights run the torch versions whatever the backend (Triton's fp64 ``tl.dot`` is not
    portable); the front-ends make that choice per call.
    """
    if backend == "torch":
        return "torch"
    if backend == "auto":
        return "triton" if device.type == "cuda" and triton_available() else "torch"
    if backend == "triton":
        if not triton_available():
            raise InvalidInputError("backend='triton' needs the triton package; pip install triton")
        if device.type != "cuda" and not triton_interpreting():
            raise InvalidInputError(
                f"backend='triton' on {device.type} tensors needs TRITON_INTERPRET=1 "
                "(Triton's interpreter); use backend='torch' or 'auto' on the CPU"
            )
        return "triton"
    raise InvalidInputError(f"backend must be 'auto', 'torch' or 'triton', got {backend!r}")


class _LazyKernel:
    """A Triton kernel compiled (or interpreted) on first launch: ``kernel[grid](*args, **meta)``."""

    def __init__(self, fn: Callable[..., Any]):
        self.fn = fn
        self._jitted: dict[bool, Any] = {}
        functools.update_wrapper(self, fn)

    def __getitem__(self, grid: tuple[int, ...]) -> Callable[..., Any]:
        interpreting = triton_interpreting()
        jitted = self._jitted.get(interpreting)
        if jitted is None:
            import triton  # noqa: PLC0415 - deferred so prune_fast imports without Triton

            jitted = self._jitted[interpreting] = triton.jit(self.fn)
        return jitted[grid]


def triton_kernel(fn: Callable[..., Any]) -> _LazyKernel:
    """Decorator for a module-level Triton kernel; ``triton.jit`` is applied on first launch.

    The kernel's module must bind ``tl`` (``triton.language``) at import when Triton is present,
    and use ``from __future__ import annotations`` so ``tl.constexpr`` annotations stay strings.
    """
    return _LazyKernel(fn)


def check_triton_device(*tensors: torch.Tensor) -> None:
    """Raise a clear error before launching on tensors Triton cannot reach here."""
    for t in tensors:
        resolve_backend("triton", t.device)
