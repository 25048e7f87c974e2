"""One input guard for every public entry point.

Each function raises :class:`~prune_fast.errors.InvalidInputError` naming the argument and the
problem. They only read their inputs, so calling them before any write keeps the promise that bad
input leaves every weight bit-identical.
"""
from __future__ import annotations

import math
import numbers
from pathlib import Path

import numpy as np
import torch

from .errors import InvalidInputError, InvalidTypeError

_FLOATING = (torch.float64, torch.float32, torch.float16, torch.bfloat16)


def check_matrix(name: str, t: object, *, dtypes: tuple[torch.dtype, ...] = _FLOATING,
                 finite: bool = True) -> torch.Tensor:
    """A real floating 2-D tensor, with only finite values unless ``finite=False``."""
    if not isinstance(t, torch.Tensor):
        raise InvalidInputError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.dim() != 2:
        raise InvalidInputError(f"{name} must be 2-D, got {t.dim()}-D with shape {tuple(t.shape)}")
    if t.dtype not in dtypes:
        allowed = ", ".join(str(d).replace("torch.", "") for d in dtypes)
        raise InvalidInputError(f"{name} has dtype {t.dtype}; expected one of {allowed}")
    check_not_meta(name, t)
    if finite:
        check_finite(name, t)
    return t


def check_not_meta(name: str, t: torch.Tensor) -> None:
    """A tensor on the meta device has a shape but no values (an offloaded or not yet loaded
    parameter): nothing can be read from or written to it."""
    if t.device.type == "meta":
        raise InvalidInputError(f"{name} is on the meta device (no data: offloaded or not loaded?)")


def check_finite(name: str, t: torch.Tensor) -> None:
    check_not_meta(name, t)
    if not t.numel():
        return
    # A NaN or Inf anywhere makes the sum NaN or Inf, so a finite sum proves every value finite, from
    # one reduction (0.5 ms at 1600×6400 fp32, against 21 ms for isfinite(), which writes a bool
    # tensor). A non-finite sum may also be an fp32 overflow: then the exact check decides. Half
    # types would overflow a sum in their own dtype and convert slowly in a wider one (51 ms at
    # 4096×11008 fp16), but min and max propagate NaN and are ±Inf exactly when an Inf is present:
    # one aminmax (2 ms there, against 97 ms for isfinite()) proves them finite.
    if t.dtype in (torch.float32, torch.float64) and math.isfinite(float(t.detach().sum())):
        return
    if t.dtype in (torch.float16, torch.bfloat16):
        lo, hi = torch.aminmax(t.detach())
        if math.isfinite(float(lo)) and math.isfinite(float(hi)):
            return
    if not bool(torch.isfinite(t).all()):
        bad = int((~torch.isfinite(t)).sum())
        raise InvalidInputError(f"{name} contains {bad} non-finite value(s) (NaN or Inf)")


def check_same_placement(name: str, t: torch.Tensor, ref_name: str, ref: torch.Tensor,
                         *, shape: tuple[int, ...] | None = None) -> None:
    want = tuple(ref.shape) if shape is None else shape
    if tuple(t.shape) != want:
        raise InvalidInputError(f"{name} has shape {tuple(t.shape)} but {ref_name} needs {want}")
    if t.device != ref.device:
        raise InvalidInputError(f"{name} is on {t.device} but {ref_name} is on {ref.device}")


def shares_memory(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Whether the memory spans of ``a`` and ``b`` overlap (conservative: from each one's first to
    its last element, so two disjoint slices of one buffer do not count, interleaved ones do)."""
    if a.device != b.device or not a.numel() or not b.numel() or a.device.type == "meta":
        return False
    (a0, a1), (b0, b1) = _span(a), _span(b)
    return a0 < b1 and b0 < a1


def _span(t: torch.Tensor) -> tuple[int, int]:
    """[first byte, one past the last byte] of a non-empty tensor's elements."""
    lo = hi = t.data_ptr()
    for size, stride in zip(t.shape, t.stride()):
        reach = (size - 1) * stride * t.element_size()
        lo, hi = (lo + reach, hi) if reach < 0 else (lo, hi + reach)
    return lo, hi + t.element_size()


def check_update_finite(u: torch.Tensor, v: torch.Tensor, dtype: torch.dtype) -> None:
    """Refuse factors whose product u vᵀ would overflow ``dtype``, from the bound
    |(u vᵀ)_jk| ≤ Σ_i ‖u_i‖·‖v_i‖ (column norms in float64: two skinny passes, no m×n product)."""
    if not u.numel() or not v.numel():
        return
    bound = float((torch.linalg.vector_norm(u.detach().to(torch.float64), dim=0)
                   * torch.linalg.vector_norm(v.detach().to(torch.float64), dim=0)).sum())
    if not math.isfinite(bound) or bound > torch.finfo(dtype).max:
        name = str(dtype).replace("torch.", "")
        raise InvalidInputError(f"u vᵀ may overflow {name}: Σ‖u_i‖·‖v_i‖ = {bound:.3g} "
                                f"exceeds its largest value {torch.finfo(dtype).max:.3g}")


def check_flag(name: str, value: object) -> bool:
    """A bool (not 1, "yes" or None)."""
    if not isinstance(value, bool):
        raise InvalidTypeError(f"{name} must be True or False, got {value!r}")
    return value


def check_count(name: str, value: object, *, minimum: int = 0) -> int:
    """An int (not a bool) ≥ ``minimum``."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise InvalidInputError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return value


def check_sigma_star(sigma_star: object, dtype: torch.dtype = torch.float32) -> float | None:
    """σ* as a Python float: any real scalar (int, float, a NumPy integer or floating scalar or 0-d
    array, a one-element real tensor) whose value is a positive, finite, *normal* number of ``dtype``,
    the compute dtype (fp32 for fp32/fp16/bf16 weights, fp64 for fp64 ones). Subnormal values (5e-324,
    1e-45 in fp32), zero, negatives, NaN and ±Inf are refused: the restraint divides by σ* and takes
    its logarithm, and a subnormal σ* would fill the weight with Inf/NaN."""
    if sigma_star is None:
        return None
    if isinstance(sigma_star, torch.Tensor) and sigma_star.numel() != 1:
        raise InvalidInputError(f"sigma_star must be a scalar, got a tensor of shape {tuple(sigma_star.shape)}")
    value = _real_scalar(sigma_star)
    if value is None:
        raise InvalidInputError(f"sigma_star must be a real number, got {type(sigma_star).__name__}")
    info = torch.finfo(dtype)
    name = str(dtype).replace("torch.", "")
    if not math.isfinite(value) or value <= 0:
        raise InvalidInputError(f"sigma_star must be finite and > 0, got {value!r}")
    if value < info.tiny or value > info.max:
        raise InvalidInputError(f"sigma_star must be a normal {name} number (between {info.tiny:.3g} and "
                                f"{info.max:.3g}), got {value!r}")
    return value


def _real_scalar(x: object) -> float | None:
    """``float(x)`` for a real scalar (never bool or complex), else None."""
    if isinstance(x, torch.Tensor):
        if x.numel() != 1 or x.dtype == torch.bool or x.is_complex():
            return None
        return float(x.detach().reshape(()).item())
    if isinstance(x, np.ndarray):
        if x.ndim != 0 or x.dtype.kind not in "fiu":
            return None
        return float(x)
    if isinstance(x, (bool, np.bool_)) or not isinstance(x, numbers.Real):
        return None
    try:
        return float(x)
    except (OverflowError, TypeError, ValueError):  # e.g. an int too large for a float
        return math.inf


def check_factors(u: object, v: object, weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``u: (m, r)`` and ``v: (n, r)`` (1-D vectors count as r = 1) for a weight of shape (m, n)."""
    m, n = weight.shape
    out = []
    for name, t, rows in (("u", u, m), ("v", v, n)):
        if isinstance(t, torch.Tensor) and t.dim() == 1:
            t = t.unsqueeze(1)
        check_matrix(name, t)
        if t.shape[0] != rows:
            raise InvalidInputError(
                f"{name} has {t.shape[0]} rows but the weight of shape {tuple(weight.shape)} needs {rows}"
            )
        if t.device != weight.device:
            raise InvalidInputError(f"{name} is on {t.device} but the weight is on {weight.device}")
        out.append(t)
    if out[0].shape[1] != out[1].shape[1]:
        raise InvalidInputError(f"u has {out[0].shape[1]} columns but v has {out[1].shape[1]}; they must match")
    return out[0], out[1]


def check_backend(backend: object) -> str:
    if backend not in ("auto", "torch", "triton"):
        raise InvalidInputError(f"backend must be 'auto', 'torch' or 'triton', got {backend!r}")
    return backend  # type: ignore[return-value]


def check_input_file(option: str, path: object) -> None:
    """``path`` (given as ``option`` on a command line) names an existing file, not a folder."""
    p = Path(str(path)).expanduser()
    if not p.is_file():
        why = "is a folder" if p.is_dir() else "does not exist"
        raise InvalidInputError(f"{option} {path} {why}; a file is needed")
