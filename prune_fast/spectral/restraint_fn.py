"""The restraint function F of PRUNE (Ma et al., ICLR 2025, arXiv 2405.16821).

For a singular value σ of the accumulated update Δ and σ* = σ_max(W0)::

    F(σ) = σ                                   if σ < σ*
         = σ* + log_α(σ) − log_α(σ*)           if σ ≥ σ*      ("log", base α; "ln" is α = e)
         = σ/2 + σ*/2                          if σ ≥ σ*      ("linear")

Named variants follow the paper's reference code: ``ln``/``log`` (α = e), ``log2``, ``log1.5``
(also ``log1_5``), ``log1.2`` (also ``log1_2``) and ``linear``. A callable
``(sigma: Tensor, sigma_star: float) -> Tensor`` is applied to the values σ ≥ σ* only.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Union

import torch

from ..errors import InvalidInputError

__all__ = ["RestraintFn", "resolve_fn", "FN_NAMES", "FN_CHOICES", "DEFAULT_FN", "named_base"]

FnLike = Union[str, Callable[[torch.Tensor, float], torch.Tensor]]

# name -> log base (None means the linear variant).
_NAMED_BASES: dict[str, float | None] = {
    "ln": math.e,
    "log2": 2.0,
    "log1.5": 1.5,
    "log1_5": 1.5,
    "log1.2": 1.2,
    "log1_2": 1.2,
    "linear": None,
}
FN_NAMES = ("log", "ln", "log2", "log1.5", "log1.2", "linear")
# every name resolve_fn accepts: the canonical ones and the reference code's spellings (CLI choices)
FN_CHOICES = ("log", *_NAMED_BASES)
# The one default of every entry point (restrain_, SpectralTracker, the runner, edit, restrain, demo):
# the paper's natural log. ("log" with alpha = e, the signature default of restrain_ and
# SpectralTracker, is the same function; they keep "log" so that alpha= alone picks another base.)
DEFAULT_FN = "ln"


@dataclass(frozen=True)
class RestraintFn:
    """A resolved restraint function: ``name`` for reports, ``alpha`` for the log variants."""

    name: str
    alpha: float | None
    custom: Callable[[torch.Tensor, float], torch.Tensor] | None = None

    def __call__(self, sigma: torch.Tensor, sigma_star: float) -> torch.Tensor:
        """Return F(σ) for ``sigma`` (any shape; only values ≥ σ* change)."""
        above = sigma >= sigma_star
        if self.custom is not None:
            out = sigma.clone()
            if bool(above.any()):
                raw = self.custom(sigma[above], sigma_star)
                try:  # None, a string, a list of strings...: the user's function broke its contract
                    mapped = torch.as_tensor(raw, dtype=sigma.dtype)
                except (TypeError, ValueError, RuntimeError):
                    raise InvalidInputError(f"custom fn {self.name!r} must return a tensor of F(σ) values, "
                                            f"got {type(raw).__name__}") from None
                if mapped.shape != sigma[above].shape or not bool(torch.isfinite(mapped).all()):
                    raise InvalidInputError(
                        f"custom fn {self.name!r} must return finite values of shape "
                        f"{tuple(sigma[above].shape)}, got shape {tuple(mapped.shape)}"
                    )
                out[above] = mapped
            return out
        if self.alpha is None:
            restrained = 0.5 * sigma + 0.5 * sigma_star
        else:
            # log_α(σ) − log_α(σ*) = ln(σ/σ*)/ln α; σ ≥ σ* > 0 where this is used.
            ratio = torch.where(above, sigma / sigma_star, torch.ones_like(sigma))
            restrained = sigma_star + torch.log(ratio) / math.log(self.alpha)
        return torch.where(above, restrained, sigma)

    def describe(self) -> str:
        if self.custom is not None or self.alpha is None:
            return self.name
        return self.name if self.name != "log" else f"log(base={self.alpha:.6g})"


def named_base(name: str) -> float | None:
    """The log base of a named F (``"ln"`` → e, ``"log1_5"`` → 1.5); ``None`` for ``linear`` or an unknown name."""
    return _NAMED_BASES.get(name)


def resolve_fn(fn: FnLike, alpha: float = math.e) -> RestraintFn:
    """Turn the user's ``fn``/``alpha`` pair into a :class:`RestraintFn`, or raise.

    ``alpha`` is only read by ``fn="log"``; a named base (``"log2"``) combined with a different
    explicit ``alpha`` is refused rather than silently ignoring one of them.
    """
    if not isinstance(alpha, (int, float)) or isinstance(alpha, bool) or not math.isfinite(alpha):
        raise InvalidInputError(f"alpha must be a finite number > 1, got {alpha!r}")
    if alpha <= 1:
        raise InvalidInputError(f"alpha must be > 1 (the log base), got {alpha!r}")
    if callable(fn):
        return RestraintFn(name=getattr(fn, "__name__", "custom"), alpha=None, custom=fn)
    if not isinstance(fn, str):
        raise InvalidInputError(f"fn must be a name or a callable, got {type(fn).__name__}")
    if fn == "log":
        return RestraintFn(name="log" if alpha != math.e else "ln", alpha=float(alpha))
    if fn not in _NAMED_BASES:
        raise InvalidInputError(f"unknown fn {fn!r}; choose one of {', '.join(FN_NAMES)} or pass a callable")
    base = _NAMED_BASES[fn]
    if alpha != math.e and base != alpha:
        raise InvalidInputError(f"fn={fn!r} fixes its own base; it cannot be combined with alpha={alpha!r}")
    canonical = fn.replace("_", ".")
    return RestraintFn(name=canonical, alpha=base)
