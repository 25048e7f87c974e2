"""Choosing between the torch and Triton versions of an operation, and launching Triton kernels.

``resolve_backend`` turns the user's ``backend=`` into ``"torch"`` or ``"triton"`` once per call;
the operation front-ends (``apply_correction_``, ``skinny_matmul``, ``orthonormalize``) take that
resolved name and run the matching version.

Triton kernels are plain functions wrapped by :func:`triton_kernel`, which applies ``triton.jit``
on first launch. So ``TRITON_INTERPRET`` is read when a kernel first runs, not when prune_fast is
imported, and a machine without Triton imports prune_fast and runs every torch version.

:func:`recording_launches` makes launchers record their kernel calls instead of running them (on
``meta`` tensors too): ``prune_fast.kernels.aot`` learns from the launchers themselves what they
pass, and compiles exactly that ahead of time.
"""
from __future__ import annotations

import contextlib
import contextvars
import functools
import importlib.util
import os
from dataclasses import dataclass
from typing import Any, Callable, Iterator

import torch

from ..errors import InvalidInputError

__all__ = ["resolve_backend", "triton_available", "triton_interpreting", "triton_kernel", "recording_launches",
           "RecordedLaunch"]


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


@dataclass(frozen=True)
class RecordedLaunch:
    """One kernel call a launcher made while :func:`recording_launches` was active (nothing ran)."""

    kernel: "_LazyKernel"
    grid: tuple[int, ...]
    args: tuple[Any, ...]
    kwargs: dict[str, Any]


_recorder: contextvars.ContextVar[list[RecordedLaunch] | None] = contextvars.ContextVar(
    "prune_fast_launch_recorder", default=None)


@contextlib.contextmanager
def recording_launches() -> Iterator[list[RecordedLaunch]]:
    """Inside the block, Triton launches are appended to the yielded list instead of running.

    Device checks are skipped, so launchers can be driven with ``meta`` tensors (no memory, no GPU).
    """
    launches: list[RecordedLaunch] = []
    token = _recorder.set(launches)
    try:
        yield launches
    finally:
        _recorder.reset(token)


class _LazyKernel:
    """A Triton kernel compiled (or interpreted) on first launch: ``kernel[grid](*args, **meta)``."""

    def __init__(self, fn: Callable[..., Any], jit_options: dict[str, Any]):
        self.fn = fn
        self.jit_options = jit_options
        self._jitted: dict[bool, Any] = {}
        functools.update_wrapper(self, fn)

    def jit(self) -> Any:
        """The ``triton.jit`` function of this kernel (for this interpreter setting)."""
        interpreting = triton_interpreting()
        jitted = self._jitted.get(interpreting)
        if jitted is None:
            import triton  # noqa: PLC0415 - deferred so prune_fast imports without Triton

            jitted = self._jitted[interpreting] = triton.jit(self.fn, **self.jit_options)
        return jitted

    def __getitem__(self, grid: tuple[int, ...]) -> Callable[..., Any]:
        launches = _recorder.get()
        if launches is not None:
            return lambda *args, **kwargs: launches.append(RecordedLaunch(self, tuple(grid), args, kwargs))
        return self.jit()[grid]


def triton_kernel(fn: Callable[..., Any] | None = None, **jit_options: Any) -> Any:
    """Decorator for a module-level Triton kernel; ``triton.jit`` is applied on first launch.

    ``@triton_kernel`` or ``@triton_kernel(do_not_specialize=[...])`` (options go to ``triton.jit``).
    The kernel's module must bind ``tl`` (``triton.language``) at import when Triton is present,
    and use ``from __future__ import annotations`` so ``tl.constexpr`` annotations stay strings.
    """
    if fn is None:
        return lambda f: _LazyKernel(f, jit_options)
    return _LazyKernel(fn, jit_options)


def check_triton_device(*tensors: torch.Tensor) -> None:
    """Raise a clear error before launching on tensors Triton cannot reach here."""
    if _recorder.get() is not None:
        return
    for t in tensors:
        resolve_backend("triton", t.device)
