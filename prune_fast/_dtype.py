"""The compute-dtype rule, in one place.

Products, accumulations and tracker state run in float32, or in float64 when any operand is
float64; half-precision weights (fp16, bf16) are read and written in their own dtype but never
accumulated in it (the no-drift promise).  Every kernel, operator and front-end asks here.
"""
from __future__ import annotations

import torch

__all__ = ["compute_dtype"]


def compute_dtype(*tensors: torch.Tensor | None) -> torch.dtype:
    """``torch.float64`` if any of ``tensors`` is float64, else ``torch.float32`` (``None`` entries are skipped).

    Example::

        compute_dtype(w_bf16)            # torch.float32
        compute_dtype(w_fp32, x_fp64)    # torch.float64
    """
    return torch.float64 if any(t is not None and t.dtype == torch.float64 for t in tensors) else torch.float32
