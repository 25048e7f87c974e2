"""prune_fast: PRUNE restraint of sequential knowledge edits, in milliseconds.

Public API::

    restrain_(weight, delta, *, alpha=math.e, fn="log", sigma_star=None, backend="auto")
    SpectralTracker(weight, *, alpha=math.e, fn="log", sigma_star=None, restrain_every=1)

Heavy dependencies (transformers, matplotlib) are imported only by the modules that use them.
"""
from __future__ import annotations

from .errors import InvalidInputError, PruneFastError
from .restrain import restrain_
from .results import RestrainResult, SpectrumReport
from .tracker import SpectralTracker

__version__ = "0.1.0"

__all__ = [
    "InvalidInputError",
    "PruneFastError",
    "RestrainResult",
    "SpectralTracker",
    "SpectrumReport",
    "restrain_",
]
