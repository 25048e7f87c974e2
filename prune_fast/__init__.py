"""prune_fast: PRUNE restraint of sequential knowledge edits, in milliseconds.

Public API::

    restrain_(weight, delta, *, alpha=math.e, fn="log", sigma_star=None, backend="auto")
    SpectralTracker(weight, *, alpha=math.e, fn="log", sigma_star=None, restrain_every=1)
    restrain_checkpoint(base, edited, out, *, fn="log", modules=None, dry_run=False) -> RestrainReport
    restrain_model_(model, original_weights, *, fn="log") -> RestrainReport
    SequentialEditor(model, tokenizer, *, hparams, covariance, config=RunConfig(...)).run(requests) -> ArmResult

Heavy dependencies (transformers, matplotlib) are imported only by the modules that use them.
"""
from __future__ import annotations

from .errors import InvalidInputError, PruneFastError
from .restrain import restrain_
from .spectral.results import RestrainResult, SpectrumReport
from .tracker import SpectralTracker

__version__ = "0.1.0"

__all__ = [
    "InvalidInputError",
    "PruneFastError",
    "RestrainReport",
    "RestrainResult",
    "SequentialEditor",
    "SpectralTracker",
    "SpectrumReport",
    "restrain_",
    "restrain_checkpoint",
    "restrain_model_",
]

# Imported on first use, so that ``import prune_fast`` stays light.
_LAZY = {
    "restrain_checkpoint": ".checkpoint",
    "RestrainReport": ".checkpoint",
    "restrain_model_": ".checkpoint",
    "SequentialEditor": ".runs.runner",
}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        value = getattr(importlib.import_module(_LAZY[name], __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
