"""Choosing between the torch and Triton versions of an operation."""
from __future__ import annotations

import functools
import importlib.util
import os

import torch

from ..errors import InvalidInputError


@functools.lru_cache(maxsize=1)
def triton_available() -> bool:
    """Whether ``import triton`` can succeed (checked lazily, never at install time)."""
    return importlib.util.find_spec("triton") is not None


def triton_interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def resolve_backend(backend: str, device: torch.device) -> str:
    """Return ``"torch"`` or ``"triton"`` for tensors on ``device``, or raise if impossible."""
    if backend == "torch":
        return "torch"
    if backend == "auto":
        return "torch"  # becomes Triton on CUDA tensors once the Triton kernels exist
    if backend == "triton":
        if not triton_available():
            raise InvalidInputError("backend='triton' needs the triton package; pip install triton")
        if device.type != "cuda" and not triton_interpreting():
            raise InvalidInputError(
                f"backend='triton' on {device.type} tensors needs TRITON_INTERPRET=1 "
                "(Triton's interpreter); use backend='torch' or 'auto' on the CPU"
            )
        raise NotImplementedError(
            "backend='triton' is not available yet: the Triton kernels land with the kernels issue; "
            "use backend='torch' or 'auto'"
        )
    raise InvalidInputError(f"backend must be 'auto', 'torch' or 'triton', got {backend!r}")
