"""Kernels for the hot steps of restraint, one module per operation.

Each module holds its Triton kernel(s) (``@triton_kernel``, docstring with the formula, modes as
``tl.constexpr``), the launcher (allocation, grid, settings from ``settings.launch_config``), the
plain-torch version of the same operation (the fallback and the test oracle's neighbour), and a
front-end taking a resolved ``backend``:

- ``apply_correction``: W ← W + L Rᵀ in place, and W ← W0 + D + L Rᵀ (the no-drift write);
- ``skinny_matmul``: (W − W0) Ω and (W − W0)ᵀ Q without forming W − W0; A X with fp32 accumulation;
- ``orthonormalize``: CGS2 + CholeskyQR2 (Triton products) with the Householder version as fallback;
- ``cpu_matmul``: the exact CPU route for skinny products (torch only, no Triton kernel);
- ``aot/``: compiles every kernel the launchers reach for sm_80/sm_90 without a GPU, writes the
  cubins and checks the per-block limits (``python -m prune_fast.kernels.aot``; the top-level
  ``CMakeLists.txt`` runs it as its build).

:func:`resolve_backend` decides which version runs:

- ``"torch"``: always the torch version;
- ``"triton"``: the Triton version, on CUDA tensors or on CPU tensors under ``TRITON_INTERPRET=1``;
  refused with a clear error when Triton cannot run here (no silent fallback);
- ``"auto"``: Triton on CUDA tensors when it is importable, torch otherwise.

Float64 inputs always take the torch versions.
"""
from __future__ import annotations

from .dispatch import resolve_backend

__all__ = ["resolve_backend"]
