"""Kernels for the hot steps of restraint, each module holding one operation.

Every operation has a plain-torch version (the fallback and the test oracle's neighbour) and, where
it pays, a Triton version beside it. :func:`resolve_backend` decides which one runs:

- ``"torch"``: always the torch version;
- ``"triton"``: the Triton version, on CUDA tensors or on CPU tensors under ``TRITON_INTERPRET=1``;
  refused with a clear error when Triton cannot run here (no silent fallback);
- ``"auto"``: Triton on CUDA tensors when it is importable, torch otherwise.
"""
from __future__ import annotations

from .dispatch import resolve_backend

__all__ = ["resolve_backend"]
